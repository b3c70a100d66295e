#!/usr/bin/python3
"""A daemon restart loses nothing. The node daemon of a running job is SIGKILLed and started
again: the job runs on, the new daemon takes it back from its journal (mosps lists it as
before), mosrun says once on stderr that it waits for its daemon, reconnects, and every
byte of output arrives once, in order, and the exit status with it: the output is compared
byte for byte with a run that was never faulted. The jobs run as an ordinary user
(created here, removed afterwards), locked (mosrun -L) so that only the test moves them.

The jobs wait at gates (files in /data/restart) that the test makes once its faults are
done, so that no job can end before the fault it is there to undergo."""

import json
import os
import pwd
import shlex
import subprocess
import unittest

import harness

# Echoes its input lines to stdout, every 100th to stderr too; after line 3000 it waits for
# the gate, and it ends with status 3.
ECHO_JOB = r"""
n=0
while read l; do
  echo "out $l"
  n=$((n+1))
  case $n in *00) echo "err $l" >&2;; esac
  if [ $n = 3000 ]; then until [ -e gate ]; do :; done; fi
done
echo "end of input after $n lines"
exit 3
"""

# Writes a lot, fast: with the reader of mosrun's stdout stalled, the daemon dies while
# output is in every buffer on the way (the job's pipe, the daemon's spool and relay queue,
# mosrun's socket and mosrun itself, blocked on its stdout).
FLOOD_JOB = r"""
seq 1 400000
until [ -e gate ]; do sleep 0.05; done
seq 400001 800000 >&2
seq 800001 1200000
"""

# The same, waiting at its gate by running programs (`sleep`, `cat`) from its home's files:
# away from home, while its home's daemon is down, each is loaded through homefs, whose
# calls wait for the home and are sent again when it is back.
AWAY_JOB = ECHO_JOB.replace(
    "until [ -e gate ]; do :; done",
    "until [ -e gate ]; do sleep 0.05; cat job.sh > /dev/null; done")

WAITING = "mosrun: waiting for the node daemon to return\n"


read = harness.read_text


jobs = harness.jobs


class RestartTest(harness.UserClusterTest):
    maxDiff = 2000
    user_prefix = "hwrs"
    cluster_settings = ["gossip.interval_ms=200"]

    def setUp(self):
        super().setUp()
        self.name = self.id().rsplit(".", 1)[-1]
        top = os.path.join(self.c.node("node1")["data"], "restart")
        os.makedirs(top, exist_ok=True)
        os.chmod(top, 0o755)
        self.top = top
        self.inside_top = "/data/restart"

    def workdir(self, label):
        work = os.path.join(self.top, f"{self.name}-{label}")
        os.makedirs(work)
        user = pwd.getpwnam(self.user)
        os.chown(work, user.pw_uid, user.pw_gid)
        return work, f"{self.inside_top}/{self.name}-{label}"

    def start(self, work, inside, script, shell, gate_open):
        """Runs `shell` at node1 as the test's user in `work`, in the background; its status
        goes to the file "status". Returns the job's home pid."""
        with open(os.path.join(work, "job.sh"), "w") as f:
            f.write(script)
        if gate_open:
            open(os.path.join(work, "gate"), "w").close()
        command = f"cd {inside} && ({shell}; echo $? > status) >/dev/null 2>&1 & echo ok"
        self.c.run("node1", "runuser", "-u", self.user, "--", "sh", "-c", command)
        if gate_open:
            return None  # it may be over before mosps could list it
        return self.c.wait_for(
            lambda: next((j["pid"] for j in jobs(self.c) if j["user"] == self.user), None), 30,
            "the job to start")

    def wait_end(self, work):
        self.c.wait_for(lambda: read(os.path.join(work, "status")), 180, "the job to end")
        self.c.wait_for(lambda: not jobs(self.c), 30, "the job to leave mosps")
        return read(os.path.join(work, "status"))

    def restart_home(self, work, pid, mosrun_blocked=False):
        """SIGKILLs node1's daemon while the job runs, waits for mosrun to say it waits (unless
        it is blocked on its stdout), starts the daemon again and waits until the job is
        listed again, by the same pid."""
        before = [j for j in jobs(self.c) if j["pid"] == pid]
        self.assertEqual(len(before), 1, jobs(self.c))
        self.c.kill("node1")
        if not mosrun_blocked:
            self.c.wait_for(lambda: WAITING in read(os.path.join(work, "err")), 30,
                            "mosrun to say it waits for its daemon")
        self.c.start("node1")
        after = self.c.wait_for(lambda: [j for j in jobs(self.c) if j["pid"] == pid], 30,
                                "the restarted daemon to list the job")
        self.assertEqual(len(after), 1, after)
        for key in ("pid", "cmd", "user", "where", "home"):
            self.assertEqual(after[0][key], before[0][key], (before, after))
        self.assertIn(f"job {pid} taken back after a restart", self.c.log("node1"))

    def wait_reattached(self, pid):
        self.c.wait_for(lambda: f"job {pid}: its mosrun is back" in self.c.log("node1"), 60,
                        "mosrun to take its job back")

    def assert_nothing_left(self, nodes=("node1",)):
        # No keeper of pipe ends and no journal entry outlives the job.
        for node in nodes:
            jobs_dir = os.path.join(self.c.node(node)["state"], "jobs")
            self.assertEqual(os.listdir(jobs_dir) if os.path.isdir(jobs_dir) else [], [], node)
        # A keeper is killed when its job ends; one a daemon before took over is reaped by
        # whoever adopted it, a moment later.
        self.c.wait_for(lambda: not self.keepers(), 10, "the jobs' keepers to be gone")

    def keepers(self):
        """The keepers (mosfdkeeper) in this cluster's cgroups: other tests' clusters have
        their own."""
        roots = []
        for name in self.c.nodes:
            node = self.c.node(name)
            for path in node.get("cgroups") or [node.get("cgroup")]:
                if path:
                    roots.append("/" + os.path.relpath(path, "/sys/fs/cgroup"))
        found = subprocess.run(["pgrep", "-x", "mosfdkeeper"], capture_output=True, text=True)
        mine = []
        for pid in found.stdout.split():
            cgroups = read(f"/proc/{pid}/cgroup")
            if not roots or any(f":{root}" in cgroups for root in roots):
                mine.append(pid)
        return mine

    def echo_job_survives(self, fault, nodes=("node1",)):
        """Runs the echo job at node1 unfaulted, then again with `fault(work, pid)` done
        once it has echoed 3000 lines; then opens its gate. The faulted run's output is the
        unfaulted run's byte for byte, with mosrun's one line that it waited."""
        shell = "seq 1 6000 | mosrun -L sh job.sh > out 2> err"
        plain, plain_inside = self.workdir("plain")
        self.start(plain, plain_inside, ECHO_JOB, shell, gate_open=True)
        self.assertEqual(self.wait_end(plain), "3\n")

        work, inside = self.workdir("faulted")
        pid = self.start(work, inside, ECHO_JOB, shell, gate_open=False)
        self.c.wait_for(lambda: read(os.path.join(work, "out")).count("\n") >= 3000, 60,
                        "3000 lines of output")
        fault(work, pid)
        open(os.path.join(work, "gate"), "w").close()
        self.assertEqual(self.wait_end(work), "3\n", read(os.path.join(work, "err")))
        self.assertEqual(read(os.path.join(work, "out")), read(os.path.join(plain, "out")))
        err = read(os.path.join(work, "err"))
        self.assertEqual(err.count(WAITING), 1, err)
        self.assertEqual(err.replace(WAITING, ""), read(os.path.join(plain, "err")))
        self.assert_nothing_left(nodes)

    def test_home_daemon_killed_while_the_job_echoes_its_input(self):
        self.echo_job_survives(lambda work, pid: self.restart_home(work, pid))

    def test_home_daemon_killed_after_the_job_came_home(self):
        # Moved away and back by CRIU first: its output here starts where mosrun stood then.
        self.c.wait_for(lambda: self.c.run("node2", "test", "-d", "/mosix/home/node1/data",
                                           check=False).returncode == 0,
                        30, "node2 to mount node1's files")

        def move_and_restart(work, pid):
            for target in ("node2", "home"):
                result = self.c.run("node1", "mosmigrate", str(pid), target, check=False)
                self.assertEqual(result.returncode, 0, result.stderr)
            self.restart_home(work, pid)

        self.echo_job_survives(move_and_restart, ("node1", "node2"))

    def test_home_daemon_killed_while_the_job_is_frozen(self):
        # Frozen to disk at home (with input it has not read yet): the restarted daemon
        # keeps it frozen, mosrun takes it back, and it continues from where it stopped.
        def freeze_restart_and_continue(work, pid):
            frozen = self.c.run("node1", "mosmigrate", str(pid), "freeze")
            self.assertIn(f"job {pid} is frozen to disk at home", frozen.stdout)
            self.restart_home(work, pid)
            self.wait_reattached(pid)
            self.assertEqual([j["state"] for j in jobs(self.c) if j["pid"] == pid], ["frozen"])
            resumed = self.c.run("node1", "mosmigrate", str(pid), "continue")
            self.assertIn("now runs on node1", resumed.stdout)

        self.echo_job_survives(freeze_restart_and_continue)
        frozen_dir = os.path.join(self.c.node("node1")["state"], "frozen")
        self.assertEqual(os.listdir(frozen_dir), [])

    def test_a_checkpoint_the_job_asked_for_is_not_asked_again_after_a_restart(self):
        # The status the job wrote (its ask, mosrun -S) is read again by the new daemon,
        # which must not take it for a new ask: the next checkpoint is the second.
        script = ("kill -USR1 $$\nuntil [ -e ck/ckpt-1 ]; do :; done\necho asked\n"
                  "until [ -e gate ]; do :; done\necho done\n")
        work, inside = self.workdir("faulted")
        pid = self.start(work, inside, script,
                         f"mosrun -L -C {inside}/ck -S USR1 sh job.sh > out 2> err",
                         gate_open=False)
        self.c.wait_for(lambda: read(os.path.join(work, "out")) == "asked\n", 60,
                        "the checkpoint the job asked for")
        self.restart_home(work, pid)
        self.wait_reattached(pid)
        demand = self.c.run("node1", "mosmigrate", str(pid), "checkpoint")
        self.assertIn(f"its checkpoint is in {inside}/ck/ckpt-2", demand.stdout)
        open(os.path.join(work, "gate"), "w").close()
        self.assertEqual(self.wait_end(work), "0\n", read(os.path.join(work, "err")))
        self.assertEqual(sorted(os.listdir(os.path.join(work, "ck"))), ["ckpt-1", "ckpt-2"])
        self.assert_nothing_left()

    def test_home_daemon_killed_while_the_job_floods_its_output(self):
        shell = ("mosrun -L sh job.sh < /dev/null 2> err | "
                 "(until [ -e reader-gate ]; do sleep 0.05; done; cat > out)")
        work, inside = self.workdir("faulted")
        pid = self.start(work, inside, FLOOD_JOB, shell, gate_open=False)
        # The reader is stalled: mosrun blocks on its stdout, the relay's queue fills and the
        # daemon stops reading the job's pipe, which fills too.
        self.c.wait_for(lambda: f"job {pid}: its output waits" in self.c.log("node1"), 60,
                        "the job's output to back up")
        self.restart_home(work, pid, mosrun_blocked=True)
        open(os.path.join(work, "reader-gate"), "w").close()
        self.wait_reattached(pid)
        open(os.path.join(work, "gate"), "w").close()
        self.assertEqual(self.wait_end(work), "0\n", read(os.path.join(work, "err"))[-500:])
        expected_out = "".join(f"{i}\n" for i in range(1, 400001))
        expected_out += "".join(f"{i}\n" for i in range(800001, 1200001))
        out = read(os.path.join(work, "out"))
        self.assertTrue(out == expected_out, f"{len(out)} bytes of stdout, not {len(expected_out)}")
        err = read(os.path.join(work, "err"))
        expected_err = WAITING + "".join(f"{i}\n" for i in range(400001, 800001))
        self.assertTrue(err == expected_err, f"{len(err)} bytes of stderr, not {len(expected_err)}")
        self.assert_nothing_left()

    def guest_daemon_killed(self, moved):
        self.c.wait_for(lambda: self.c.run("node2", "test", "-d", "/mosix/home/node1/data",
                                           check=False).returncode == 0,
                        30, "node2 to mount node1's files")
        # Started there, or moved there by CRIU from home.
        where = "" if moved else "-r node2 "
        shell = f"seq 1 6000 | mosrun -L {where}sh job.sh > out 2> err"
        plain, plain_inside = self.workdir("plain")
        self.start(plain, plain_inside, ECHO_JOB, shell.replace("-L sh", "-L -r node2 sh"),
                   gate_open=True)
        self.assertEqual(self.wait_end(plain), "3\n", read(os.path.join(plain, "err")))

        work, inside = self.workdir("faulted")
        pid = self.start(work, inside, ECHO_JOB, shell, gate_open=False)
        self.c.wait_for(lambda: read(os.path.join(work, "out")).count("\n") >= 3000, 60,
                        "3000 lines of output")
        if moved:
            result = self.c.run("node1", "mosmigrate", str(pid), "node2", check=False)
            self.assertEqual(result.returncode, 0, result.stderr)
        before = [j for j in jobs(self.c) if j["pid"] == pid]
        self.assertEqual([j["where"] for j in before], ["node2"])
        self.c.kill("node2")
        self.c.start("node2")
        self.c.wait_for(lambda: f"job {pid} taken back by node node2" in self.c.log("node1"), 60,
                        "node2 to take the job back")
        after = [j for j in jobs(self.c) if j["pid"] == pid]
        self.assertEqual(len(after), 1, after)
        for key in ("pid", "cmd", "user", "where", "home", "migrations"):
            self.assertEqual(after[0][key], before[0][key], (before, after))
        guests = [j for j in jobs(self.c, "node2") if j["pid"] == pid]
        self.assertEqual(len(guests), 1, guests)
        open(os.path.join(work, "gate"), "w").close()
        self.assertEqual(self.wait_end(work), "3\n", read(os.path.join(work, "err")))
        self.assertEqual(read(os.path.join(work, "out")), read(os.path.join(plain, "out")))
        self.assertEqual(read(os.path.join(work, "err")), read(os.path.join(plain, "err")))
        self.c.wait_for(lambda: not jobs(self.c, "node2"), 30, "the guest to leave node2")
        self.assert_nothing_left(("node1", "node2"))


    def test_guest_daemon_killed_while_the_job_runs_there(self):
        self.guest_daemon_killed(moved=False)

    def test_guest_daemon_killed_while_a_job_moved_there_runs(self):
        self.guest_daemon_killed(moved=True)
    def test_home_daemon_killed_while_its_job_runs_away(self):
        self.c.wait_for(lambda: self.c.run("node2", "test", "-d", "/mosix/home/node1/data",
                                           check=False).returncode == 0,
                        30, "node2 to mount node1's files")
        shell = "seq 1 6000 | mosrun -L -r node2 sh job.sh > out 2> err"
        plain, plain_inside = self.workdir("plain")
        self.start(plain, plain_inside, AWAY_JOB, shell, gate_open=True)
        self.assertEqual(self.wait_end(plain), "3\n", read(os.path.join(plain, "err")))

        work, inside = self.workdir("faulted")
        pid = self.start(work, inside, AWAY_JOB, shell, gate_open=False)
        self.c.wait_for(lambda: read(os.path.join(work, "out")).count("\n") >= 3000, 60,
                        "3000 lines of output")
        journal = os.path.join(self.c.node("node1")["state"], "jobs", str(pid))
        self.c.wait_for(lambda: "away " in read(journal), 30, "the home to journal the job away")
        before = [j for j in jobs(self.c) if j["pid"] == pid]
        self.assertEqual([j["where"] for j in before], ["node2"])
        self.c.kill("node1")
        self.c.wait_for(lambda: WAITING in read(os.path.join(work, "err")), 30,
                        "mosrun to say it waits for its daemon")
        self.c.start("node1")
        self.c.wait_for(lambda: f"job {pid}: its mosrun is back" in self.c.log("node1"), 60,
                        "mosrun to take its job back")
        self.c.wait_for(lambda: f"job {pid} taken back by node node2" in self.c.log("node1"), 60,
                        "node2 to attach the job again")
        after = [j for j in jobs(self.c) if j["pid"] == pid]
        self.assertEqual(len(after), 1, after)
        for key in ("pid", "cmd", "user", "where", "home", "migrations"):
            self.assertEqual(after[0][key], before[0][key], (before, after))
        open(os.path.join(work, "gate"), "w").close()
        self.assertEqual(self.wait_end(work), "3\n", read(os.path.join(work, "err")))
        self.assertEqual(read(os.path.join(work, "out")), read(os.path.join(plain, "out")))
        err = read(os.path.join(work, "err"))
        self.assertEqual(err.count(WAITING), 1, err)
        self.assertEqual(err.replace(WAITING, ""), read(os.path.join(plain, "err")))
        self.c.wait_for(lambda: not jobs(self.c, "node2"), 30, "the guest to leave node2")
        self.assert_nothing_left(("node1", "node2"))


class RestartDuringMoveTest(unittest.TestCase):
    """A daemon killed during a migration: the job survives in exactly one place, with all of
    its output. The fault point stream-hold stops the images halfway (and says so in the
    log), so the kill lands while the move is certainly under way."""

    def test_home_daemon_killed_while_the_job_is_streamed_away(self):
        with harness.LoopCluster(2, settings=["gossip.interval_ms=200"],
                                 faults="stream-hold") as c:
            c.wait_for(lambda: c.run("node2", "test", "-d", "/mosix/home/node1/data",
                                     check=False).returncode == 0,
                       30, "node2 to mount node1's files")
            work = os.path.join(c.node("node1")["data"], "during-move")
            os.makedirs(work)
            with open(os.path.join(work, "job.sh"), "w") as f:
                f.write(ECHO_JOB)
            c.run("node1", "sh", "-c", "cd /data/during-move && (seq 1 6000 | mosrun -L sh job.sh "
                                       "> out 2> err; echo $? > status) >/dev/null 2>&1 & echo ok")
            pid = c.wait_for(lambda: next((j["pid"] for j in jobs(c)), None), 30,
                             "the job to start")
            c.wait_for(lambda: read(os.path.join(work, "out")).count("\n") >= 3000, 60,
                       "3000 lines of output")
            c.run("node1", "sh", "-c", f"mosmigrate {pid} node2 > /data/during-move/move 2>&1 &")
            c.wait_for(lambda: "fault point stream-hold: holding" in c.log("node1"), 60,
                       "the move to be halfway through its images")
            c.kill("node1")
            c.wait_for(lambda: WAITING in read(os.path.join(work, "err")), 30,
                       "mosrun to say it waits for its daemon")
            c.start("node1")
            c.wait_for(lambda: f"job {pid}: its mosrun is back" in c.log("node1"), 60,
                       "mosrun to take its job back")
            self.assertIn(f"job {pid}: its move was cut by the restart", c.log("node1"))
            self.assertEqual([j["where"] for j in jobs(c) if j["pid"] == pid], ["node1"])
            open(os.path.join(work, "gate"), "w").close()
            c.wait_for(lambda: read(os.path.join(work, "status")), 120, "the job to end")
            self.assertEqual(read(os.path.join(work, "status")), "3\n",
                             read(os.path.join(work, "err")))
            expected = "".join(f"out {i}\n" for i in range(1, 6001))
            expected += "end of input after 6000 lines\n"
            self.assertEqual(read(os.path.join(work, "out")), expected)
            err = read(os.path.join(work, "err"))
            self.assertEqual(err.count(WAITING), 1, err)
            self.assertEqual(err.replace(WAITING, ""),
                             "".join(f"err {i}\n" for i in range(100, 6001, 100)))
            # Exactly one copy: nothing of it runs or is left on node2.
            c.wait_for(lambda: not jobs(c, "node2"), 60, "node2 to have no copy of the job")
            c.wait_for(lambda: not jobs(c), 30, "the job to leave mosps")


if __name__ == "__main__":
    harness.main()
