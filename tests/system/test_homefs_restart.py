#!/usr/bin/python3
"""homefs survives its home's daemon being SIGKILLed and started again. A job away from home
(mosrun -L -r node2, as an ordinary user) works on its home's files through homefs the whole
time -- creates (exclusive too), reads, appends, renames, unlinks, directories, files held
open across the restart (one appended to, one read line by line), and programs run from it
(`sleep`, `cat`, `wc`) -- while node1's daemon is killed and restarted under it. Calls in
flight and calls made meanwhile wait and are sent again on the new connection, files held
open are opened again, and no non-idempotent call is applied twice: no EIO, and stdout,
stderr and every file are byte for byte those of a run that was never faulted.
While the home's daemon is stopped, root is answered from homefs's cache and a user
waits for the home."""

import os
import pwd
import shlex

import harness

STEPS = 120
# Each step touches the home's files in every way a program does; the last steps wait for
# the gate (running `sleep`), so that the job cannot end before its fault.
JOB = r"""
set -e
exec 3>>held.log 4<input
i=0
while [ $i -lt %(steps)d ]; do
  i=$((i+1))
  cat input > copy.$i
  read -r line <&4
  echo "step $i $line" >> log
  echo "held $i" >&3
  mkdir d.$i
  mv copy.$i d.$i/copy
  ( set -C; echo "exclusive $i" > d.$i/excl )
  wc -c < d.$i/copy
  cat d.$i/excl
  rm d.$i/copy d.$i/excl
  rmdir d.$i
  ln -s target link.$i && rm link.$i
  sleep 0.05
  echo "step $i done"
  echo "err $i" >&2
  if [ $i = %(gate)d ]; then until [ -e gate ]; do sleep 0.05; done; fi
done
exec 3>&- 4<&-
cat log | wc -l
ls
exit 7
"""

WAITING = "mosrun: waiting for the node daemon to return\n"
read = harness.read_text
jobs = harness.jobs


class HomefsRestartTest(harness.UserClusterTest):
    maxDiff = 4000
    user_prefix = "hwhr"
    cluster_settings = ["gossip.interval_ms=200"]

    def workdir(self, label):
        top = os.path.join(self.c.node("node1")["data"], "homefs-restart")
        os.makedirs(top, exist_ok=True)
        os.chmod(top, 0o755)
        work = os.path.join(top, label)
        os.makedirs(work)
        user = pwd.getpwnam(self.user)
        os.chown(work, user.pw_uid, user.pw_gid)
        with open(os.path.join(work, "job.sh"), "w") as f:
            f.write(JOB % {"steps": STEPS, "gate": STEPS - 5})
        with open(os.path.join(work, "input"), "w") as f:
            f.write("".join(f"input line {i} " + "x" * (i % 50) + "\n" for i in range(1, 400)))
        return work, f"/data/homefs-restart/{label}"

    def start(self, work, inside):
        command = (f"cd {inside} && (mosrun -L -r node2 sh job.sh > out 2> err; echo $? > status)"
                   " >/dev/null 2>&1 & echo ok")
        self.c.run("node1", "runuser", "-u", self.user, "--", "sh", "-c", command)

    def wait_end(self, work):
        self.c.wait_for(lambda: read(os.path.join(work, "status")), 240, "the job to end")
        self.c.wait_for(lambda: not jobs(self.c), 30, "the job to leave mosps")
        return read(os.path.join(work, "status"))

    def files(self, work):
        """The job's files, by name, as it left them."""
        found = {}
        for name in sorted(os.listdir(work)):
            if name in ("status", "out", "err", "gate"):
                continue
            found[name] = read(os.path.join(work, name))
        return found

    def steps_done(self, work):
        return read(os.path.join(work, "out")).count(" done\n")

    def test_a_silent_home_answers_root_from_the_cache_and_makes_a_user_wait(self):
        """While node1's daemon is stopped (silent, its connections up), root's stat on
        node2 is answered from homefs's cache after 2 s (the node's CRIU must see a guest's
        files during a cut); an ordinary user's waits for the home and gets the size the
        file has now: a stale size after a lock or an open would cut off what another
        node wrote."""
        self.c.wait_for(lambda: self.c.run("node2", "test", "-d", "/mosix/home/node1/data",
                                           check=False).returncode == 0,
                        30, "node2 to mount node1's files")
        work, inside = self.workdir("silent")
        grows = os.path.join(work, "grows")
        with open(grows, "w") as f:
            f.write("x" * 10)
        user = pwd.getpwnam(self.user)
        os.chown(grows, user.pw_uid, user.pw_gid)
        remote = f"/mosix/home/node1{inside}/grows"
        stat = ["stat", "--cached=never", "-c", "%s", remote]  # always asks homefs
        as_user = ["runuser", "-u", self.user, "--", *stat]
        self.assertEqual(self.c.run("node2", *as_user).stdout, "10\n")
        # Root has walked the path too (its permission checks read the directories' ACLs,
        # which no cache answers).
        self.assertEqual(self.c.run("node2", *stat).stdout, "10\n")
        with open(grows, "a") as f:
            f.write("y" * 10)
        answer = os.path.join(work, "user.size")
        with harness.stopped(self.c.node("node1")["pid"]):
            self.c.run("node2", "sh", "-c", f"({shlex.join(as_user)} > {answer}.part; "
                                            f"mv {answer}.part {answer}) >/dev/null 2>&1 &")
            self.assertEqual(self.c.run("node2", *stat).stdout, "10\n",
                             "root's stat answered from the cache")
        self.c.wait_for(lambda: os.path.exists(answer), 60, "the user's stat to end")
        self.assertEqual(read(answer), "20\n", "the user's stat, after the home answered")

    def test_a_job_away_works_on_its_files_through_a_home_daemon_restart(self):
        self.c.wait_for(lambda: self.c.run("node2", "test", "-d", "/mosix/home/node1/data",
                                           check=False).returncode == 0,
                        30, "node2 to mount node1's files")
        plain, plain_inside = self.workdir("plain")
        open(os.path.join(plain, "gate"), "w").close()
        self.start(plain, plain_inside)
        self.assertEqual(self.wait_end(plain), "7\n", read(os.path.join(plain, "err")))

        work, inside = self.workdir("faulted")
        self.start(work, inside)
        pid = self.c.wait_for(lambda: next((j["pid"] for j in jobs(self.c)), None), 30,
                              "the job to start")
        self.c.wait_for(lambda: self.steps_done(work) >= 20, 120, "20 steps of the job")
        journal = os.path.join(self.c.node("node1")["state"], "jobs", str(pid))
        self.c.wait_for(lambda: "away " in read(journal), 30, "the home to journal the job away")
        self.assertEqual([j["where"] for j in jobs(self.c)], ["node2"])
        # Killed mid-step: the job is busy on its files at home.
        self.c.kill("node1")
        self.c.wait_for(lambda: WAITING in read(os.path.join(work, "err")), 30,
                        "mosrun to say it waits for its daemon")
        self.c.start("node1")
        self.c.wait_for(lambda: f"job {pid} taken back by node node2" in self.c.log("node1"), 60,
                        "node2 to attach the job again")
        self.c.wait_for(lambda: self.steps_done(work) >= STEPS - 5, 120,
                        "the job to go on to its gate")
        open(os.path.join(work, "gate"), "w").close()
        err = read(os.path.join(work, "err"))
        self.assertEqual(self.wait_end(work), "7\n", err)
        self.assertNotIn("Input/output error", read(os.path.join(work, "err")))
        self.assertEqual(read(os.path.join(work, "out")), read(os.path.join(plain, "out")))
        err = read(os.path.join(work, "err"))
        self.assertEqual(err.count(WAITING), 1, err)
        self.assertEqual(err.replace(WAITING, ""), read(os.path.join(plain, "err")))
        self.assertEqual(self.files(work), self.files(plain))
        # The restart really cut homefs's connection under the job.
        log2 = self.c.log("node2")
        self.assertIn("connection to", log2)
        self.c.wait_for(lambda: not jobs(self.c, "node2"), 30, "the guest to leave node2")


if __name__ == "__main__":
    harness.main()
