#!/usr/bin/python3
"""A daemon killed in one of the small windows of a job's life loses nothing.

- Between spawning a job's init and journaling it (the fault point kill-after-spawn), with
  a job that ends before the next daemon looks: nothing holds its status pipe's write end
  any more, but the pipe (held by the job's keeper) still has the init's last line. The
  next daemon takes the job back as one that ended: its mosrun gets its output and its
  exit status.
- An O_APPEND write through homefs whose home daemon dies between the write's system call
  and its `done` record in the replay log (the fault point kill-after-append): the client
  sends it again to the next daemon, which finds its bytes where the file ended when it
  began (noted in its `started` record) and answers it done: the line is in the file once.

Every job runs as a throwaway ordinary user (made here, removed afterwards)."""

import os
import subprocess

import harness
import test_fencing

read = harness.read_text

WAITING = test_fencing.WAITING


# Its setUp (a throwaway user) and helpers; the class itself is not bound here, so that
# its own cases are not run again.
class SmallWindowsTest(test_fencing.FencingTest):
    def test_a_job_spawned_not_journaled_and_ended_before_the_next_daemon(self):
        with harness.LoopCluster(1, faults="kill-after-spawn") as c:
            work, inside = self.workdir(c, "ended")
            # The daemon dies once the job's init runs, before journaling it; the job
            # writes, ends and its init with it, while no daemon runs.
            self.start(c, inside, "mosrun -L sh -c 'echo one; echo two >&2; touch ended; "
                                  "exit 3' > out 2> err")
            c.wait_for(lambda: "down" in self.status(c), 60,
                       "the daemon to die at the fault point")
            c.wait_for(lambda: os.path.exists(os.path.join(work, "ended")), 60,
                       "the job to run to its end")
            job = ["pgrep", "-u", self.user, "-f", "^sh -c echo one"]
            c.wait_for(lambda: subprocess.run(job, capture_output=True).returncode == 1, 30,
                       "the job's processes to be gone")
            c.wait_for(lambda: WAITING in read(os.path.join(work, "err")), 30,
                       "mosrun to wait for its daemon")
            c.start("node1")
            status = c.wait_for(lambda: read(os.path.join(work, "status")), 60,
                                "the job's exit status")
            self.assertIn("has ended since; its output and exit status are kept",
                          c.log("node1"))
            self.assertEqual(status, "3\n")
            self.assertEqual(read(os.path.join(work, "out")), "one\n")
            self.assertEqual(read(os.path.join(work, "err")), WAITING + "two\n")
            self.assert_nothing_left(c, ("node1",))


    def test_an_append_the_home_died_in_is_not_written_twice(self):
        mnt = "/mnt/homefs-windows"
        with harness.LoopCluster(2, faults="kill-after-append") as c:
            home = c.node("node1")["address"]
            with open(os.path.join(c.node("node1")["data"], "appended"), "w") as f:
                f.write("before\n")
            c.run("node2", "sh", "-c", f"mkdir -p {mnt} && mosmount {home} {mnt}")
            try:
                # Waits (a hard mount) while the home is down, and is sent again.
                writer = subprocess.Popen(
                    [harness.LOOPCLUSTER, "exec", c.dir, "node2", "--", "sh", "-c",
                     f"echo line >> {mnt}/data/appended && echo ok"],
                    env=c.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                try:
                    c.wait_for(lambda: "node1\tdown" in self.status(c).replace(
                                   f"\t{home}\t", "\t"), 60,
                               "the home to die at the fault point")
                    self.assertIn("fault point kill-after-append", c.log("node1"))
                    c.start("node1")
                    out, err = writer.communicate(timeout=120)
                finally:
                    if writer.poll() is None:
                        writer.kill()
                        writer.wait()
                self.assertEqual((writer.returncode, out, err), (0, "ok\n", ""))
                self.assertIn("was done before the restart", c.log("node1"))
                self.assertEqual(read(os.path.join(c.node("node1")["data"], "appended")),
                                 "before\nline\n")
            finally:
                c.run("node2", "fusermount3", "-u", mnt, check=False, timeout=60)


for name in [n for n in dir(test_fencing.FencingTest) if n.startswith("test_")]:
    setattr(SmallWindowsTest, name, None)

if __name__ == "__main__":
    harness.main()
