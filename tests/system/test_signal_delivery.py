#!/usr/bin/python3
"""A signal sent to mosrun reaches the job exactly once, whatever happens between.

mosrun numbers each signal and keeps it until the job's node says it was delivered, and
the job's init takes each number once (see "Signals that are not lost" in
docs/ARCHITECTURE.md). Each case runs a throwaway ordinary user's job that counts the
SIGUSR1s it gets, sends one at a time (the next once the job has counted the last, so that
no two merge as two pending signals of a kind do anywhere), and checks the exact count:

- one sent while the job is being moved (the copy it leaves dumped, the target's criu
  holding the restore: the fault point restore-hold), from home to node2 and from node2 to
  node3: it reaches the job on the target, after the move;
- one read by the home's daemon, which dies before delivering it (kill-before-signal): the
  next daemon delivers it when mosrun sends it again;
- one delivered by the home's daemon, which dies before acknowledging it
  (kill-after-signal): mosrun sends it again to the next daemon, and the job does not
  count it twice;
- one the node sends as the job's init starts, before it is set up (signal-at-start): the
  job ends by it, with a terminal or without."""

import os
import signal
import subprocess
import unittest

import harness

read = harness.read_text
jobs = harness.jobs

COUNTER = r"""
n=0
trap 'n=$((n+1)); echo got $n' USR1
echo ready
until [ -e go ]; do sleep 0.05; done
echo done $n
"""

WAITING = "mosrun: waiting for the node daemon to return\n"


def got(n):
    return "ready\n" + "".join(f"got {i}\n" for i in range(1, n + 1))


class SignalDeliveryTest(unittest.TestCase):
    maxDiff = 4000

    def setUp(self):
        entry = harness.user_for(self, "hwsig")
        self.user = entry.pw_name
        self.uid = entry.pw_uid

    def start_job(self, c, name, options="-L"):
        """Starts the counting job at node1 as the user; returns its directory and mosrun's
        pid (the job's home pid) once the job has set its trap."""
        work = os.path.join(c.node("node1")["data"], name)
        os.makedirs(work)
        os.chown(work, self.uid, self.uid)
        with open(os.path.join(work, "job.sh"), "w") as f:
            f.write(COUNTER)
        shell = f"mosrun {options} sh job.sh > out 2> err"
        command = f"cd /data/{name} && ({shell}; echo $? > status) >/dev/null 2>&1 & echo ok"
        c.run("node1", "runuser", "-u", self.user, "--", "sh", "-c", command)
        pid = c.wait_for(lambda: next((j["pid"] for j in jobs(c) if j["user"] == self.user),
                                      None), 60, "the job to be listed")
        c.wait_for(lambda: read(os.path.join(work, "out")) == got(0), 60,
                   "the job to set its trap")
        return work, pid

    def init_of(self, pid):
        """The node's pid of the init of the user's job (the parent of its program)."""
        for entry in filter(str.isdigit, os.listdir("/proc")):
            try:
                with open(f"/proc/{entry}/status") as f:
                    status = dict(line.split(":\t", 1) for line in f.read().splitlines())
                if int(status["Uid"].split()[0]) != self.uid:
                    continue
                parent = int(status["PPid"])
                with open(f"/proc/{parent}/comm") as f:
                    if f.read() == "mosjob-init\n":
                        return parent
            except (FileNotFoundError, ProcessLookupError, ValueError, KeyError):
                continue
        self.fail(f"no init found for the job {pid}")

    def signal_and_count(self, c, work, pid, n, timeout=60):
        """Sends SIGUSR1 to mosrun and waits for the job to count it as the n-th."""
        os.kill(pid, signal.SIGUSR1)
        self.wait_count(c, work, n, timeout)

    def wait_count(self, c, work, n, timeout=60):
        c.wait_for(lambda: read(os.path.join(work, "out")) == got(n), timeout,
                   f"the job to count {n} signals")

    def finish(self, c, work, n):
        """Opens the job's gate; checks that it ends well having counted exactly n signals;
        returns its stderr."""
        open(os.path.join(work, "go"), "w").close()
        status = c.wait_for(lambda: read(os.path.join(work, "status")), 120, "the job to end")
        err = read(os.path.join(work, "err"))
        self.assertEqual(status, "0\n", err)
        self.assertEqual(read(os.path.join(work, "out")), got(n) + f"done {n}\n")
        return err

    def assert_nothing_left(self, c, nodes):
        for node in nodes:
            jobs_dir = os.path.join(c.node(node)["state"], "jobs")
            c.wait_for(lambda: not (os.path.isdir(jobs_dir) and os.listdir(jobs_dir)), 30,
                       f"{node}'s journal to be empty")
            self.assertEqual(c.zombies(node), [], node)
        self.assertEqual([j for j in jobs(c) if j["user"] == self.user], [])

    def status(self, c):
        return subprocess.run([harness.LOOPCLUSTER, "status", c.dir], env=c.env(),
                              capture_output=True, text=True, check=True).stdout

    def moved_while_signalled(self, c, name, source, target):
        """Moves the job (running on `source`) to `target`, whose criu holds the restore,
        and sends SIGUSR1 meanwhile: the job counts it once, on `target`."""
        for node in ("node2", "node3")[:len(c.nodes) - 1]:
            c.wait_for(lambda: c.run(node, "test", "-d", "/mosix/home/node1/data",
                                     check=False).returncode == 0,
                       30, f"{node} to mount node1's files")
        options = "-L" if source == "node1" else f"-L -r {source}"
        work, pid = self.start_job(c, name, options)
        self.signal_and_count(c, work, pid, 1)
        c.run("node1", "sh", "-c", f"mosmigrate {pid} {target} > /data/{name}/moved 2>&1 &")
        # The copy on `source` is dumped and stopped; `target` holds its restore for 6 s.
        c.wait_for(lambda: "fault point restore-hold" in c.log(target), 60,
                   f"{target}'s criu to hold the restore")
        os.kill(pid, signal.SIGUSR1)
        c.wait_for(lambda: [j["where"] for j in jobs(c) if j["user"] == self.user] ==
                   [target], 60, f"the job to run on {target}")
        # mosmigrate says so once it hears, which may be after mosps shows it.
        moved = os.path.join(work, "moved")
        c.wait_for(lambda: "now runs on" in read(moved), 60,
                   "mosmigrate to say where the job runs")
        self.assertIn(f"now runs on {target}", read(moved))
        self.wait_count(c, work, 2, 30)
        # And one sent to the job where it runs now.
        self.signal_and_count(c, work, pid, 3)
        self.assertEqual(self.finish(c, work, 3), "")
        self.assert_nothing_left(c, c.nodes)

    def test_a_signal_sent_while_the_job_moves_away_from_home(self):
        with harness.LoopCluster(2, settings=["gossip.interval_ms=200"],
                                 faults="restore-hold") as c:
            self.moved_while_signalled(c, "away", "node1", "node2")

    def test_a_signal_sent_while_the_job_moves_between_guests(self):
        # The home forwards the signal to the node the job leaves, which holds the dumped
        # copy: it must not take it.
        with harness.LoopCluster(3, settings=["gossip.interval_ms=200"],
                                 faults="restore-hold") as c:
            self.moved_while_signalled(c, "between", "node2", "node3")

    def test_a_signal_read_by_a_daemon_that_dies_before_delivering_it(self):
        with harness.LoopCluster(1, faults="kill-before-signal") as c:
            work, pid = self.start_job(c, "before")
            os.kill(pid, signal.SIGUSR1)
            c.wait_for(lambda: "down" in self.status(c), 60,
                       "the daemon to die at the fault point")
            self.assertIn("fault point kill-before-signal", c.log("node1"))
            self.assertEqual(read(os.path.join(work, "out")), got(0))
            c.faults = None
            c.start("node1")
            self.wait_count(c, work, 1)
            self.signal_and_count(c, work, pid, 2)
            self.assertEqual(self.finish(c, work, 2), WAITING)
            self.assert_nothing_left(c, ("node1",))

    def test_a_signal_delivered_by_a_daemon_that_dies_before_saying_so(self):
        with harness.LoopCluster(1, faults="kill-after-signal") as c:
            work, pid = self.start_job(c, "after")
            os.kill(pid, signal.SIGUSR1)
            c.wait_for(lambda: "down" in self.status(c), 60,
                       "the daemon to die at the fault point")
            self.assertIn("fault point kill-after-signal", c.log("node1"))
            c.faults = None
            # The job's init is held stopped while the next daemon takes the job back: the
            # signal 1 that mosrun sends again, and then signal 2 (sent once 1 is answered),
            # are both pending at the init when it runs again, as on a loaded machine. The
            # resent one must not swallow the next of its kind.
            restarted = len(c.log("node1"))
            with harness.stopped(self.init_of(pid)):
                c.start("node1")
                since = lambda: c.log("node1")[restarted:]
                c.wait_for(lambda: f"job {pid}: its mosrun is back" in since(), 60,
                           "mosrun to take its job back")
                c.wait_for(lambda: f"job {pid}: signal 10 (number 1) queued" in since(), 60,
                           "the next daemon to queue signal 1 again")
                os.kill(pid, signal.SIGUSR1)
                c.wait_for(lambda: f"job {pid}: signal 10 (number 2) queued" in since(), 60,
                           "the next daemon to queue signal 2")
            # The job had signal 1 once (its output comes once the daemon is back), and
            # counts signal 2 as the second.
            self.wait_count(c, work, 2)
            self.assertEqual(self.finish(c, work, 2), WAITING)
            self.assert_nothing_left(c, ("node1",))

    def test_a_signal_in_the_jobs_first_instant(self):
        # The node signals each job it starts the moment its init runs (signal-at-start),
        # before the init has set itself up, as a user's kill right after mosrun started
        # can: the job ends by that signal, not after its 600 s. With a terminal too, whose
        # program starts only once mosrun's terminal modes have come.
        with harness.LoopCluster(1, faults="signal-at-start") as c:
            for name, command in (("plain", "mosrun sleep 600"),
                                  ("terminal", "script -qec 'mosrun sleep 600' /dev/null")):
                work = os.path.join(c.node("node1")["data"], name)
                os.makedirs(work)
                os.chown(work, self.uid, self.uid)
                done = c.run("node1", "runuser", "-u", self.user, "--", "sh", "-c",
                             f"cd /data/{name} && {command} > out 2> err; echo $?",
                             timeout=60, check=False)
                self.assertEqual(done.stdout.strip(), "143",
                                 f"{name}: {done.stderr} {read(os.path.join(work, 'err'))}")
                self.assertIn(f"fault point signal-at-start", c.log("node1"))
            self.assert_nothing_left(c, ("node1",))

if __name__ == "__main__":
    harness.main()
