#!/usr/bin/python3
"""Standard input and output survive moves. A job fed on its stdin is moved while bytes sit
unread in its stdin pipe, in its daemon's queue and in mosrun's window: every byte must
reach it once, in order, and its end of input once, after the last byte, wherever it runs
(node1 -> node2 -> node3 -> home, with the job reading or not, expelled and brought home,
frozen and continued at home while its input ends, and a move that fails after its input
was reclaimed). The other way, a job writing 50 MB to stdout while it is
moved gives the same bytes as a run that never moved. One job runs as an ordinary user
(created here, removed afterwards), the others as root.

The jobs wait at gates (files in /data/stdin) that the test makes once its moves are done,
so that a fast machine cannot let a job finish before the moves it is there to undergo."""

import json
import os
import pwd
import secrets
import shlex
import shutil
import subprocess
import unittest

import harness

# Reads lines one by one (dash reads its stdin byte by byte) and echoes them; after lines
# 10000, 20000 and 30000 it waits for the gate file named after the line.
SLOW_READER = r"""
n=0
while read l; do
  echo "$l"
  n=$((n+1))
  case $n in 10000|20000|30000) until [ -e gate$n ]; do sleep 0.05; done;; esac
done
echo "end of input after $n lines"
"""


read = harness.read_text


jobs = harness.jobs


def wait_for_home_mounts(c, nodes):
    c.wait_for(lambda: all(c.run(n, "test", "-d", "/mosix/home/node1/data",
                                 check=False).returncode == 0 for n in nodes),
               30, "the nodes to mount node1's files")


class StdinTest(unittest.TestCase):
    maxDiff = 2000

    @classmethod
    def setUpClass(cls):
        cls.cluster = harness.LoopCluster(3, settings=["gossip.interval_ms=200"])
        cls.cluster.__enter__()
        wait_for_home_mounts(cls.cluster, ("node2", "node3"))

    @classmethod
    def tearDownClass(cls):
        cls.cluster.__exit__(None, None, None)

    def setUp(self):
        self.c = self.cluster
        self.name = self.id().rsplit(".", 1)[-1]
        self.work = os.path.join(self.c.node("node1")["data"], "stdin", self.name)
        os.makedirs(self.work)
        os.chmod(os.path.dirname(self.work), 0o755)
        self.inside = f"/data/stdin/{self.name}"

    def path(self, name):
        return os.path.join(self.work, name)

    def touch(self, name):
        with open(self.path(name), "w"):
            pass

    def start(self, shell, user=None):
        """Runs `shell` at node1 in the test's directory, in the background; its status
        goes to the file "status". Returns the job's home pid."""
        command = f"cd {self.inside} && ({shell}; echo $? > status) >/dev/null 2>&1 & echo ok"
        if user:
            command = shlex.join(["runuser", "-u", user, "--", "sh", "-c", command])
        self.c.run("node1", "sh", "-c", command)
        return self.c.wait_for(lambda: next((j["pid"] for j in jobs(self.c)), None), 30,
                               "the job to start")

    def move(self, pid, target):
        where = target if target.startswith("node") else "node1"
        result = self.c.run("node1", "mosmigrate", str(pid), target, check=False)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn(f"now runs on {where}", result.stdout)

    def lines_out(self, count):
        """Waits until the file "out" has at least `count` lines."""
        self.c.wait_for(lambda: read(self.path("out")).count("\n") >= count, 60,
                        f"{count} lines of output")

    def wait_end(self, timeout=120):
        self.c.wait_for(lambda: read(self.path("status")), timeout, "the job to end")
        self.assertEqual(read(self.path("status")), "0\n", read(self.path("err")))
        self.c.wait_for(lambda: not jobs(self.c), 30, "the job to leave mosps")

    def slow_reader_moved(self, user=None):
        with open(self.path("reader.sh"), "w") as f:
            f.write(SLOW_READER)
        if user:
            os.chown(self.work, pwd.getpwnam(user).pw_uid, pwd.getpwnam(user).pw_gid)
        pid = self.start("seq 1 100000 | mosrun sh reader.sh > out 2> err", user)
        for gate, target in ((10000, "node2"), (20000, "node3"), (30000, "home")):
            self.lines_out(gate)
            self.move(pid, target)
            self.touch(f"gate{gate}")
        self.wait_end()
        expected = "".join(f"{i}\n" for i in range(1, 100001)) + "end of input after 100000 lines\n"
        self.assertEqual(read(self.path("out")), expected)

    def test_slow_reader_moved_three_times(self):
        # node1 -> node2 -> node3 -> home, each time with the job's stdin pipe full, its
        # daemon's queue and mosrun's window holding more.
        self.slow_reader_moved()

    def test_slow_reader_expelled_and_brought_home(self):
        # The administrative moves: node2 expels the job (a guest's move its node decides),
        # and node1 brings it home from node3 (a move its home asks the job's node for).
        with open(self.path("reader.sh"), "w") as f:
            f.write(SLOW_READER)
        pid = self.start("seq 1 100000 | mosrun sh reader.sh > out 2> err")
        self.lines_out(10000)
        self.move(pid, "node2")
        self.touch("gate10000")
        self.lines_out(20000)
        try:
            self.assertIn("1 moved, 0 stayed", self.c.run("node2", "mosctl", "expel").stdout)
        finally:
            self.c.run("node2", "mosctl", "unblock")
            self.c.wait_for(lambda: not next(
                n for n in json.loads(self.c.run("node1", "mosmon", "--json").stdout)["nodes"]
                if n["name"] == "node2")["blocked"], 30, "node1 to learn node2 is unblocked")
        self.assertEqual(jobs(self.c)[0]["where"], "node1")
        self.touch("gate20000")
        self.lines_out(30000)
        self.move(pid, "node3")
        self.assertIn("1 moved, 0 stayed", self.c.run("node1", "mosctl", "bring").stdout)
        self.assertEqual(jobs(self.c)[0]["where"], "node1")
        self.touch("gate30000")
        self.wait_end()
        expected = "".join(f"{i}\n" for i in range(1, 100001)) + "end of input after 100000 lines\n"
        self.assertEqual(read(self.path("out")), expected)

    def test_slow_reader_of_an_ordinary_user(self):
        if shutil.which("useradd") is None:
            self.skipTest("no useradd")
        user = f"hwin{secrets.token_hex(4)}"
        harness.add_user(user)
        try:
            self.slow_reader_moved(user)
        finally:
            self.c.run("node1", "sh", "-c", f"pkill -KILL -u {user} || true", check=False)
            harness.remove_user(user)

    def test_count_of_a_large_input_moved_mid_read(self):
        # 100 MB in two halves: the job (wc -c) reads the first half, and its input waits
        # for the gate while the job is moved away and home again, in the middle of it.
        half = 50 * 1000 * 1000
        with open(self.path("half"), "wb") as f:
            f.write(b"x" * half)
        pid = self.start("(cat half; touch fed; until [ -e gate ]; do sleep 0.05; done; "
                         "cat half) | mosrun wc -c > out 2> err")
        self.c.wait_for(lambda: os.path.exists(self.path("fed")), 120, "the first half to go")
        self.move(pid, "node2")
        self.move(pid, "home")
        self.touch("gate")
        self.wait_end(300)
        self.assertEqual(read(self.path("out")).strip(), str(2 * half))

    def test_count_of_a_large_file_on_stdin_moved_mid_read(self):
        # mosrun's stdin is a 100 MB file: the job reads exactly half of it (dd), is moved
        # to node2 and home again, and counts the rest.
        size = 100 * 1000 * 1000
        with open(self.path("big"), "wb") as f:
            f.write(b"y" * size)
        pid = self.start("mosrun sh -c 'dd bs=1000000 count=50 iflag=fullblock of=/dev/null "
                         "2>/dev/null; touch half; until [ -e gate ]; do sleep 0.05; done; "
                         "wc -c' < big > out 2> err")
        self.c.wait_for(lambda: os.path.exists(self.path("half")), 120, "half of it read")
        self.move(pid, "node2")
        self.move(pid, "home")
        self.touch("gate")
        self.wait_end(300)
        self.assertEqual(read(self.path("out")).strip(), str(size // 2))

    def test_job_that_has_not_read_its_input_when_moved(self):
        # Its stdin pipe is full and its daemon holds the rest; it moves twice before it
        # reads a byte (home -> node2 -> node3), then reads everything.
        pid = self.start("(seq 1 150000; touch fed) | mosrun sh -c 'until [ -e gate ]; do "
                         "sleep 0.05; done; cat' > out 2> err")
        # All of it is with the job's daemon: its stdin pipe is full and its queue holds
        # the rest, up to mosrun's window.
        self.c.wait_for(lambda: os.path.exists(self.path("fed")), 30, "the input to be sent")
        self.move(pid, "node2")
        self.move(pid, "node3")
        self.touch("gate")
        self.wait_end()
        self.assertEqual(read(self.path("out")), "".join(f"{i}\n" for i in range(1, 150001)))

    def test_large_output_while_moved(self):
        # 50 MB of stdout: the job writes the first half, and mosrun's reader holds back
        # until the gate, so the job's stdout pipe and its relay are full when it moves.
        job = ("mosrun sh -c 'seq 1 3600000; until [ -e gate2 ]; do sleep 0.05; done; "
               "seq 3600001 7200000' 2> err | "
               "(until [ -e gate ]; do sleep 0.05; done; cat > out)")
        plain = self.start(job)
        self.touch("gate")
        self.touch("gate2")
        self.wait_end()
        unmoved = read(self.path("out"))
        self.assertGreater(len(unmoved), 50 * 1000 * 1000)
        for name in ("gate", "gate2", "out", "status"):
            os.unlink(self.path(name))
        pid = self.start(job)
        self.assertNotEqual(pid, plain)
        # Moved away while its output is held back (its stdout pipe full), then on and
        # home while it flows. (A guest's move on is answered on its relay, behind its
        # output: it is asked once mosrun reads again.)
        self.move(pid, "node2")
        self.touch("gate")
        self.c.wait_for(lambda: os.path.getsize(self.path("out")) > 1000000
                        if os.path.exists(self.path("out")) else False, 60, "output to flow")
        self.move(pid, "node3")
        self.move(pid, "home")
        self.touch("gate2")
        self.wait_end()
        self.assertTrue(read(self.path("out")) == unmoved, "the moved job's output differs")

    def test_guest_moved_while_its_reader_waits(self):
        # A job away writes faster than mosrun's reader takes: its node holds megabytes
        # of its output, its relay paused (96 MB: well over what the buffers on the way
        # hold, some 25 MB here). Moved on to node3, then home, with the reader still
        # waiting each time: the move is answered at the arrival, while the old node
        # still owes most of the output; then the reader reads, and what the old node owed
        # comes first, whole, then the new place's. The job is an ordinary user's.
        if shutil.which("useradd") is None:
            self.skipTest("no useradd")
        user = f"hwout{secrets.token_hex(4)}"
        harness.add_user(user)
        self.addCleanup(harness.remove_user, user)
        self.addCleanup(self.c.run, "node1", "sh", "-c", f"pkill -KILL -u {user} || true",
                        check=False)
        entry = pwd.getpwnam(user)
        os.chown(self.work, entry.pw_uid, entry.pw_gid)
        with open(self.path("big"), "wb") as f:
            f.write(secrets.token_bytes(96 * 1000 * 1000))
        for step, target in enumerate(("node3", "home")):
            gate = f"gate{step}"
            # The job writes `big`, then again after the move: the new place's output
            # must follow all that the old node owed.
            pid = self.start(f"mosrun -r node2 sh -c 'cat big; until [ -e {gate} ]; do "
                             f"sleep 0.05; done; cat big' 2> err | "
                             f"(until [ -e {gate} ]; do sleep 0.05; done; cat > out{step})",
                             user)
            # node2 pauses the job's output: mosrun's socket and its queue at home are full.
            self.c.wait_for(lambda: f"job {pid}: its output waits: mosrun is behind"
                            in self.c.log("node2"), 60, "node2 to hold the output back")
            where = "node1" if target == "home" else target
            last_word = f"job {pid}: its old node has sent the last of its output"
            # Answered at the arrival, while the reader still waits: the old node still
            # holds most of the output, its last word not yet at the home.
            moved = self.c.run("node1", "mosmigrate", str(pid), target, timeout=240)
            self.assertIn(f"now runs on {where}", moved.stdout)
            self.assertEqual([j["where"] for j in jobs(self.c)], [where])
            self.assertNotIn(last_word, self.c.log("node1"))
            self.assertFalse(os.path.exists(self.path(f"out{step}")))  # nothing read yet
            self.touch(gate)
            self.wait_end()
            self.assertIn(last_word, self.c.log("node1"))
            with open(self.path("big"), "rb") as f, open(self.path(f"out{step}"), "rb") as g:
                want, got = f.read() * 2, g.read()
            if want != got:
                differs = next((i for i, (a, b) in enumerate(zip(want, got)) if a != b),
                               min(len(want), len(got)))
                # The job's lines, and every node's warnings (a cut peer connection names
                # no job).
                lines = [line for node in ("node1", "node2", "node3")
                         for line in self.c.log(node).splitlines()
                         if f"job {pid}" in line or " warning: " in line or " error: " in line]
                self.fail(f"output after the move to {target}: {len(got)} bytes, not "
                          f"{len(want)}; first difference at {differs} (the first copy ends "
                          f"at {len(want) // 2}); stderr: {harness.read_text(self.path('err'))!r}"
                          "\n" + "\n".join(lines[-80:]))
            os.unlink(self.path("status"))

    def test_end_of_input_while_frozen(self):
        # The job reads 10000 lines and waits; it is frozen to disk, its input ends while
        # it is frozen, then it continues and reads the rest, and its end of input.
        with open(self.path("reader.sh"), "w") as f:
            f.write(SLOW_READER)
        pid = self.start("(seq 1 25000; until [ -e close ]; do sleep 0.05; done; exec >&-; "
                         "touch closed) | mosrun sh reader.sh > out 2> err")
        self.lines_out(10000)
        frozen = self.c.run("node1", "mosmigrate", str(pid), "freeze")
        self.assertIn("frozen", frozen.stdout)
        self.touch("close")
        self.c.wait_for(lambda: os.path.exists(self.path("closed")), 30, "the input to end")
        self.move(pid, "continue")
        self.touch("gate10000")
        self.touch("gate20000")
        self.wait_end()
        expected = "".join(f"{i}\n" for i in range(1, 25001)) + "end of input after 25000 lines\n"
        self.assertEqual(read(self.path("out")), expected)


class FailedMoveTest(unittest.TestCase):
    def test_failed_restore_puts_the_input_back(self):
        # The source reclaims the job's unread input after the dump; the restore on node2
        # fails (a fault point in every daemon), so the job is thawed at home with its
        # input back in its stdin pipe, and reads all of it.
        with harness.LoopCluster(2, settings=["gossip.interval_ms=200"],
                                 faults="restore-criu") as c:
            wait_for_home_mounts(c, ("node2",))
            work = os.path.join(c.node("node1")["data"], "failed")
            os.makedirs(work)
            c.run("node1", "sh", "-c", "cd /data/failed && ((seq 1 100000; touch fed) | mosrun sh -c "
                                       "'until [ -e gate ]; do sleep 0.05; done; cat' > out "
                                       "2> err; echo $? > status) >/dev/null 2>&1 & echo ok")
            pid = c.wait_for(lambda: next((j["pid"] for j in jobs(c)), None), 30,
                             "the job to start")
            # All the input is written to mosrun: the job's stdin pipe is full.
            c.wait_for(lambda: os.path.exists(os.path.join(work, "fed")), 30, "the input")
            moved = c.run("node1", "mosmigrate", str(pid), "node2", check=False)
            self.assertEqual(moved.returncode, 1, moved.stdout)
            self.assertIn(f"job {pid} stays on node1", moved.stderr)
            with open(os.path.join(work, "gate"), "w"):
                pass
            c.wait_for(lambda: read(os.path.join(work, "status")), 60, "the job to end")
            self.assertEqual(read(os.path.join(work, "status")), "0\n")
            self.assertEqual(read(os.path.join(work, "out")),
                             "".join(f"{i}\n" for i in range(1, 100001)))


if __name__ == "__main__":
    harness.main()
