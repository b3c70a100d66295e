#!/usr/bin/python3
"""A job never runs twice, and a daemon killed at an awkward moment loses no job.

- A guest node lost and coming back with its copy still running: node2's daemon is killed
  while the job runs there (the job runs on, kept by its keeper), the home gives up waiting
  for node2 and restarts the job from its checkpoint; node2's daemon then comes back with
  the old copy still running. Exactly one copy survives: node2's attach is refused (an
  older generation), the old copy is killed and node2 cleans up after it; the output that
  reaches mosrun is byte for byte an unfaulted run's.
- A daemon killed between spawning a job's init and journaling it (the fault point
  kill-after-spawn): the next daemon finds the init by its status pipe and takes the job
  back.
- Signals sent to mosrun while its daemon is down reach the job once mosrun is back, in
  order: one the dead daemon's socket refused, one sent while mosrun waits.
- A daemon killed while criu holds a move's restore (the fault point restore-hold), on the
  target and on the source: the job goes on at home, in one copy.
- The home killed as soon as a move between two guests returns: the new node attaches the
  job again.
- The same while the old guest still holds its last word (the fault point movedon-hold):
  the home journaled the job on its new node at its arrival, its base pending, and the
  restarted home takes it back from there, settling where its output goes on by mosrun's
  offsets; the job ends there with its exit status and all its output.

Every job runs as a throwaway ordinary user (made here, removed afterwards)."""

import json
import os
import signal
import subprocess
import unittest

import harness

read = harness.read_text
jobs = harness.jobs

COUNTER = harness.COUNTER_JOB

# The same, waiting with shell builtins only: away from home, a program it ran while its
# home's daemon is down could fail to load (see test_restart.py).
BUILTIN_COUNTER = COUNTER.replace("while [ ! -e go ]; do sleep 0.05; done",
                                  "until [ -e go ]; do :; done")

WAITING = "mosrun: waiting for the node daemon to return\n"


count = harness.count


def alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def journal_init(path):
    """The init pid a journal entry names (0 when none)."""
    for line in read(path).splitlines():
        if line.startswith("init "):
            return int(line.split()[1])
    return 0


class FencingTest(unittest.TestCase):
    maxDiff = 4000

    def setUp(self):
        entry = harness.user_for(self, "hwfence")
        self.user = entry.pw_name
        self.uid = entry.pw_uid

    def workdir(self, c, name):
        work = os.path.join(c.node("node1")["data"], name)
        os.makedirs(work)
        os.chown(work, self.uid, self.uid)
        return work, f"/data/{name}"

    def start(self, c, inside, shell):
        command = f"cd {inside} && ({shell}; echo $? > status) >/dev/null 2>&1 & echo ok"
        c.run("node1", "runuser", "-u", self.user, "--", "sh", "-c", command)

    def job_pid(self, c):
        return c.wait_for(lambda: next((j["pid"] for j in jobs(c) if j["user"] == self.user),
                                       None), 60, "the job to be listed")

    def job_at_its_gate(self, c, name, script=COUNTER, options=""):
        """Once node2 mounts node1's files, starts `script` (a counter) as `mosrun -L
        OPTIONS` at node1 in /data/NAME and waits until it has counted to 99 and waits at
        its gate. Returns its work directory, that directory as the job sees it, and its
        pid."""
        c.wait_for(lambda: c.run("node2", "test", "-d", "/mosix/home/node1/data",
                                 check=False).returncode == 0,
                   30, "node2 to mount node1's files")
        work, inside = self.workdir(c, name)
        with open(os.path.join(work, "counter.sh"), "w") as f:
            f.write(script)
        self.start(c, inside, f"mosrun -L {options} sh counter.sh > out 2> err")
        pid = self.job_pid(c)
        c.wait_for(lambda: read(os.path.join(work, "out")) == count(0, 99), 60,
                   "the job to wait at its gate")
        return work, inside, pid

    def finish(self, c, work, timeout=120):
        """Opens the job's gate and waits for it to end well; returns its stderr."""
        open(os.path.join(work, "go"), "w").close()
        status = c.wait_for(lambda: read(os.path.join(work, "status")), timeout, "the job to end")
        err = read(os.path.join(work, "err"))
        self.assertEqual(status, "0\n", err)
        return err

    def assert_nothing_left(self, c, nodes):
        for node in nodes:
            state = c.node(node)["state"]
            jobs_dir = os.path.join(state, "jobs")
            listing = lambda: os.listdir(jobs_dir) if os.path.isdir(jobs_dir) else []
            try:
                c.wait_for(lambda: not listing(), 30, f"{node}'s journal to be empty")
            except AssertionError:
                self.fail(f"{node}'s journal keeps {listing()}: " +
                          " | ".join(read(os.path.join(jobs_dir, n)) for n in listing()))
            for sub in ("restart", "frozen", "images", "criu-work"):
                path = os.path.join(state, sub)
                left = os.listdir(path) if os.path.isdir(path) else []
                self.assertEqual(left, [], f"{node}: {path}")
            self.assertEqual(c.zombies(node), [], node)
        self.assertEqual(len([j for j in jobs(c) if j["user"] == self.user]), 0)

    def test_a_lost_node_comes_back_with_its_copy_running(self):
        settings = ["gossip.interval_ms=200", "gossip.suspect_ms=600", "gossip.dead_ms=1500"]
        with harness.LoopCluster(2, settings=settings) as c:
            c.wait_for(lambda: c.run("node2", "test", "-d", "/mosix/home/node1/data",
                                     check=False).returncode == 0,
                       30, "node2 to mount node1's files")
            plain, plain_inside = self.workdir(c, "plain")
            with open(os.path.join(plain, "counter.sh"), "w") as f:
                f.write(COUNTER)
            open(os.path.join(plain, "go"), "w").close()
            self.start(c, plain_inside, "mosrun -L sh counter.sh > out 2> err")
            c.wait_for(lambda: read(os.path.join(plain, "status")), 60, "the plain run")
            self.assertEqual(read(os.path.join(plain, "out")), count(0, 199) + "done\n")

            work, inside, pid = self.job_at_its_gate(c, "lost", options="-C ck -A 0.05")
            result = c.wait_for(lambda: c.run("node1", "mosmigrate", str(pid), "node2",
                                              check=False).returncode == 0, 60, "the move")
            # A checkpoint node2 takes holds the job at its gate.
            ck = os.path.join(work, "ck")
            c.wait_for(lambda: f"written by node node2" in c.log("node1"), 120,
                       "a checkpoint taken on node2")
            self.assertTrue(any(n.startswith("ckpt-") for n in os.listdir(ck)))
            journal = os.path.join(c.node("node2")["state"], "jobs", f"guest-node1-{pid}")
            old_init = journal_init(journal)
            self.assertGreater(old_init, 0, read(journal))
            self.assertTrue(alive(old_init))

            # node2's daemon dies; the old copy runs on there, waiting at its gate.
            c.kill("node2")
            c.wait_for(lambda: "job restarted from checkpoint" in read(os.path.join(work, "err")),
                       120, "the home to restart the job from its checkpoint")
            self.assertTrue(alive(old_init), "the old copy should still run on node2")
            here = [j for j in jobs(c) if j["user"] == self.user]
            self.assertEqual([j["where"] for j in here], ["node1"], here)

            # node2's daemon comes back with the old copy: the home refuses it, node2 kills it.
            c.start("node2")
            c.wait_for(lambda: not alive(old_init), 60, "the old copy on node2 to be killed")
            self.assertIn(f"job {pid}: its home node1 does not take it back", c.log("node2"))
            c.wait_for(lambda: not [j for j in jobs(c, "node2") if j["user"] == self.user], 30,
                       "node2 to list no copy of the job")
            here = [j for j in jobs(c) if j["user"] == self.user]
            self.assertEqual([j["where"] for j in here], ["node1"], here)

            err = self.finish(c, work)
            self.assertRegex(err, r"^mosrun: job restarted from checkpoint \d+ of "
                                  r"/data/lost/ck, taken .* UTC, at home \(lost contact with "
                                  r"node node2[^\n]*\n$")
            self.assertEqual(read(os.path.join(work, "out")), read(os.path.join(plain, "out")))
            self.assert_nothing_left(c, ("node1", "node2"))


    def status(self, c):
        return subprocess.run([harness.LOOPCLUSTER, "status", c.dir], env=c.env(),
                              capture_output=True, text=True, check=True).stdout

    def test_daemon_killed_between_spawning_a_job_and_journaling_it(self):
        with harness.LoopCluster(1, faults="kill-after-spawn") as c:
            plain, plain_inside = self.workdir(c, "plain")
            with open(os.path.join(plain, "counter.sh"), "w") as f:
                f.write(COUNTER)
            open(os.path.join(plain, "go"), "w").close()
            work, inside = self.workdir(c, "spawned")
            with open(os.path.join(work, "counter.sh"), "w") as f:
                f.write(COUNTER)
            # The daemon dies once the job's init runs, before journaling it.
            self.start(c, inside, "mosrun -L sh counter.sh > out 2> err")
            c.wait_for(lambda: "down" in self.status(c), 60,
                       "the daemon to die at the fault point")
            self.assertIn("fault point kill-after-spawn", c.log("node1"))
            c.wait_for(lambda: WAITING in read(os.path.join(work, "err")), 30,
                       "mosrun to wait for its daemon")
            c.start("node1")
            self.assertRegex(c.log("node1"), r"found its init \(pid \d+\) by its status pipe")
            c.wait_for(lambda: f"its mosrun is back" in c.log("node1"), 60,
                       "mosrun to take its job back")
            here = [j for j in jobs(c) if j["user"] == self.user]
            self.assertEqual(len(here), 1, here)
            c.wait_for(lambda: read(os.path.join(work, "out")) == count(0, 99), 60,
                       "the job to wait at its gate")
            err = self.finish(c, work)
            self.assertEqual(err, WAITING)
            self.assertEqual(read(os.path.join(work, "out")), count(0, 199) + "done\n")
            self.assert_nothing_left(c, ("node1",))

    def test_signals_to_mosrun_while_its_daemon_is_down(self):
        trapper = (r"""
trap 'echo got USR1' USR1
trap 'echo got USR2' USR2
echo ready
while [ ! -e go ]; do sleep 0.05; done
echo done
""")
        with harness.LoopCluster(1) as c:
            work, inside = self.workdir(c, "signals")
            with open(os.path.join(work, "trapper.sh"), "w") as f:
                f.write(trapper)
            self.start(c, inside, "mosrun -L sh trapper.sh > out 2> err")
            pid = self.job_pid(c)
            c.wait_for(lambda: read(os.path.join(work, "out")) == "ready\n", 60,
                       "the job to set its traps")
            # mosrun's pid is the job's home pid. SIGUSR1 comes while mosrun is stopped
            # and its daemon dead: once continued, mosrun reads the signal before it sees
            # its daemon gone, and the dead daemon's socket refuses it (EPIPE).
            with harness.stopped(pid):
                c.kill("node1")
                os.kill(pid, signal.SIGUSR1)
            c.wait_for(lambda: WAITING in read(os.path.join(work, "err")), 30,
                       "mosrun to wait for its daemon")
            # SIGUSR2 comes while mosrun waits for its daemon.
            os.kill(pid, signal.SIGUSR2)
            c.start("node1")
            c.wait_for(lambda: "got USR2" in read(os.path.join(work, "out")), 60,
                       "the job's traps to see the signals")
            self.finish(c, work, 60)
            self.assertEqual(read(os.path.join(work, "out")),
                             "ready\ngot USR1\ngot USR2\ndone\n")
            self.assertEqual(read(os.path.join(work, "err")), WAITING)
            self.assert_nothing_left(c, ("node1",))


    def killed_during_restore(self, victim):
        """Moves a job from node1 to node2 while node2's criu holds its restore (the fault
        point restore-hold), and SIGKILLs `victim`'s daemon then, starting it again at once:
        the job goes on at home, in one copy, with all its output."""
        with harness.LoopCluster(2, settings=["gossip.interval_ms=200"],
                                 faults="restore-hold") as c:
            work, inside, pid = self.job_at_its_gate(c, "restore")
            c.run("node1", "sh", "-c", f"mosmigrate {pid} node2 > {inside}/move 2>&1 &")
            c.wait_for(lambda: "fault point restore-hold" in c.log("node2"), 60,
                       "node2's criu to hold the restore")
            c.kill(victim)
            c.start(victim)
            if victim == "node1":
                c.wait_for(lambda: f"job {pid}: its mosrun is back" in c.log("node1"), 60,
                           "mosrun to take its job back")
                self.assertIn(f"job {pid}: its move was cut by the restart", c.log("node1"))
            else:
                # The new daemon killed criu and what it had restored, by the intent.
                self.assertIn("holds the pipe of a restore cut by a restart", c.log("node2"))
            # Exactly one copy, at home; nothing of it runs or is left on node2.
            c.wait_for(lambda: not [j for j in jobs(c, "node2") if j["user"] == self.user], 60,
                       "node2 to have no copy of the job")
            here = [j for j in jobs(c) if j["user"] == self.user]
            self.assertEqual([j["where"] for j in here], ["node1"], here)
            # The restored copy on node2 is gone: no process of the user is left there.
            c.wait_for(lambda: not self.user_processes(c, "node2"), 30,
                       "the copy node2 restored to be killed")
            err = self.finish(c, work)
            self.assertEqual(err, WAITING if victim == "node1" else "")
            self.assertEqual(read(os.path.join(work, "out")), count(0, 199) + "done\n")
            self.assertEqual(self.user_processes(c, "node2"), [])
            self.assert_nothing_left(c, ("node1", "node2"))

    def user_processes(self, c, node):
        """Processes of the test's user in `node`'s cgroups."""
        found = []
        for cgroup in c.node(node).get("cgroups") or [c.node(node).get("cgroup")]:
            if not cgroup:
                continue
            for root, _, files in os.walk(cgroup):
                if "cgroup.procs" not in files:
                    continue
                for p in read(os.path.join(root, "cgroup.procs")).split():
                    try:
                        if os.stat(f"/proc/{p}").st_uid == self.uid:
                            found.append(int(p))
                    except OSError:
                        pass
        return found

    def test_target_daemon_killed_during_the_restore(self):
        self.killed_during_restore("node2")

    def test_source_daemon_killed_during_the_restore(self):
        self.killed_during_restore("node1")


    def test_home_killed_right_after_a_move_between_guests(self):
        with harness.LoopCluster(3, settings=["gossip.interval_ms=200"]) as c:
            for node in ("node2", "node3"):
                c.wait_for(lambda: c.run(node, "test", "-d", "/mosix/home/node1/data",
                                         check=False).returncode == 0,
                           30, f"{node} to mount node1's files")
            work, inside = self.workdir(c, "moveon")
            with open(os.path.join(work, "counter.sh"), "w") as f:
                f.write(BUILTIN_COUNTER)
            self.start(c, inside, "mosrun -L -r node2 sh counter.sh > out 2> err")
            pid = self.job_pid(c)
            c.wait_for(lambda: read(os.path.join(work, "out")) == count(0, 99), 60,
                       "the job to wait at its gate on node2")
            # node2 moves it on to node3; the home is killed as soon as the move is done.
            result = c.run("node1", "mosmigrate", str(pid), "node3", check=False)
            self.assertEqual(result.returncode, 0, result.stderr)
            c.kill("node1")
            c.start("node1")
            c.wait_for(lambda: f"job {pid} taken back by node node3" in c.log("node1"), 60,
                       "node3 to attach the job again")
            here = [j for j in jobs(c) if j["user"] == self.user]
            self.assertEqual([j["where"] for j in here], ["node3"], here)
            err = self.finish(c, work)
            self.assertEqual(err, WAITING)
            self.assertEqual(read(os.path.join(work, "out")), count(0, 199) + "done\n")
            for node in ("node2", "node3"):
                c.wait_for(lambda: not [j for j in jobs(c, node) if j["user"] == self.user], 30,
                           f"{node} to list no copy of the job")
            self.assert_nothing_left(c, ("node1", "node2", "node3"))

    def test_home_killed_before_the_old_guests_last_word(self):
        with harness.LoopCluster(3, settings=["gossip.interval_ms=200"],
                                 faults="movedon-hold") as c:
            for node in ("node2", "node3"):
                c.wait_for(lambda: c.run(node, "test", "-d", "/mosix/home/node1/data",
                                         check=False).returncode == 0,
                           30, f"{node} to mount node1's files")
            work, inside = self.workdir(c, "owed")
            with open(os.path.join(work, "counter.sh"), "w") as f:
                f.write(BUILTIN_COUNTER + "exit 7\n")
            self.start(c, inside, "mosrun -L -r node2 sh counter.sh > out 2> err")
            pid = self.job_pid(c)
            c.wait_for(lambda: read(os.path.join(work, "out")) == count(0, 99), 60,
                       "the job to wait at its gate on node2")
            # node2 moves it on to node3 and holds its last word (movedOn) to the home.
            result = c.run("node1", "mosmigrate", str(pid), "node3", check=False)
            self.assertEqual(result.returncode, 0, result.stderr)
            c.wait_for(lambda: "fault point movedon-hold" in c.log("node2"), 30,
                       "node2 to hold its last word")
            # Answered at the arrival, the home has journaled the job on node3 already.
            entry = read(os.path.join(c.node("node1")["state"], "jobs", str(pid)))
            self.assertIn("where=node3", entry)
            self.assertIn("owed=node2", entry)
            self.assertIn("base pending\n", entry)
            self.assertNotIn("its old node has sent the last of its output", c.log("node1"))
            c.kill("node1")
            c.start("node1")
            pending = (f"job {pid} taken back after a restart: runs on node3, arrived from "
                       "node2 before the last of its output there")
            c.wait_for(lambda: pending in c.log("node1"), 30, "the home to take the job back")
            c.wait_for(lambda: f"job {pid} taken back by node node3" in c.log("node1"), 60,
                       "node3 to attach the job again")
            here = [j for j in jobs(c) if j["user"] == self.user]
            self.assertEqual([j["where"] for j in here], ["node3"], here)
            # node2 owed nothing (the job waited at its gate, all 0..99 at mosrun): nothing
            # is lost, and node3's output follows from mosrun's offsets.
            open(os.path.join(work, "go"), "w").close()
            status = c.wait_for(lambda: read(os.path.join(work, "status")), 120, "the job to end")
            self.assertEqual(status, "7\n", read(os.path.join(work, "err")))
            self.assertEqual(read(os.path.join(work, "err")), WAITING)
            self.assertEqual(read(os.path.join(work, "out")), count(0, 199) + "done\n")
            self.assertIn(f"job {pid}: the last of its output on node2 may be lost; its output "
                          "from node3 starts at mosrun's bytes 290 and 0", c.log("node1"))
            for node in ("node2", "node3"):
                c.wait_for(lambda: not [j for j in jobs(c, node) if j["user"] == self.user], 30,
                           f"{node} to list no copy of the job")
            self.assert_nothing_left(c, ("node1", "node2", "node3"))


if __name__ == "__main__":
    harness.main()
