#!/usr/bin/python3
"""Lazy moves ([migration] lazy_pages): the job runs on the target once all but its memory
is there and pulls its memory from the source, which keeps it until the target has every
page.

A job of an ordinary user (made here, removed afterwards) holds 256 MiB and hashes all of
it twice a second, printing whether the hash is still the one it started with. It is moved
lazily to node2, on to node3 and back home: its memory arrives whole (no "CHANGED" line, ever), and
every move reports a frozen time below its total. Then, with the target holding the
source's first answer once the job is restored (fault point lazy-hold), the target's daemon
is SIGKILLed while the moved copy runs without all its memory: the move fails with the
cause, criu lazy-pages kills the copy on the target (it cannot be completed), and the job
continues at its source, its memory whole.

migrate_criu (tests/migrate) cuts the page connection while criu still restores."""

import os
import pwd
import re
import subprocess
import unittest

import harness

MEMORY_MB = 256
# A job whose every pass touches all of its memory: any page missing or wrong changes the
# hash. It stops when the file "stop" appears in its work directory.
HOG = (
    "import hashlib, os, sys, time\n"
    "b = bytearray(int(sys.argv[1]) << 20)\n"
    "for i in range(0, len(b), 4096): b[i] = (i >> 12) % 255 + 1\n"
    "h = hashlib.sha256(b).hexdigest()\n"
    "print('ready', flush=True)\n"
    "while not os.path.exists('stop'):\n"
    "    print('same' if hashlib.sha256(b).hexdigest() == h else 'CHANGED', flush=True)\n"
    "    time.sleep(0.5)\n"
    "print('done', flush=True)\n")
SCRIPT = f"cat > hog.py <<'EOF'\n{HOG}EOF\nexec python3 hog.py {MEMORY_MB}\n"
MOVED = re.compile(r"now runs on (\S+) \(frozen (\d+) ms, (\d+) ms in all")


def start_hog(test, c, user, name):
    return harness.start_fed_job(test, c, user, name, SCRIPT, "-L",
                                 known=[j["pid"] for j in harness.jobs(c)])


def lines(work):
    return harness.read_text(os.path.join(work, "out")).split()


def where(c, pid):
    job = next((j for j in harness.jobs(c) if j["pid"] == pid), None)
    return job and job["where"]


def hog_processes(user):
    """The pids of `user`'s python processes (from /proc/PID/status: a moved copy whose
    memory is held must not be read through its own memory, as its cmdline is)."""
    uid = pwd.getpwnam(user).pw_uid
    found = []
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/status") as f:
                fields = dict(line.split(":", 1) for line in f if ":" in line)
        except (OSError, ValueError):
            continue
        if fields.get("Name", "").strip().startswith("python") and \
                int(fields["Uid"].split()[0]) == uid:
            found.append(int(entry))
    return found


def wait_for_more_lines(test, c, work, what):
    """Waits until the job has printed two more "same" lines than now."""
    seen = lines(work).count("same")
    c.wait_for(lambda: lines(work).count("same") >= seen + 2, 120, what)


class LazyMoveTest(harness.UserClusterTest):
    user_prefix = "hwlz"
    cluster_nodes = 3
    cluster_settings = ("migration.lazy_pages=true",)

    def test_memory_arrives_whole_across_lazy_moves(self):
        c = self.c
        work, _, pid = start_hog(self, c, self.user, "lazy")
        c.wait_for(lambda: "same" in lines(work), 120, "the job's first pass")
        # Away from home, from one guest node to another (whose home hears of it from the
        # target), and home again.
        for target in ("node2", "node3", "node1"):
            moved = c.run("node1", "mosmigrate", str(pid), target, timeout=300).stdout
            match = MOVED.search(moved)
            self.assertIsNotNone(match, moved)
            self.assertEqual(match.group(1), target)
            # The job ran on the target while its memory came: frozen for part of the move.
            self.assertLess(int(match.group(2)), int(match.group(3)), moved)
            self.assertEqual(where(c, pid), target)
            wait_for_more_lines(self, c, work, f"the job to hash its memory on {target}")
        self.assertNotIn("CHANGED", lines(work))
        open(os.path.join(work, "stop"), "w").close()
        c.wait_for(lambda: harness.read_text(os.path.join(work, "status")).strip() == "0", 120,
                   "the job to end")
        self.assertEqual(lines(work)[-1], "done")
        self.assertNotIn("CHANGED", lines(work))
        self.assertIn(f"job {pid} moved to node2", c.log("node1"))


class LazyMoveFailureTest(unittest.TestCase):
    def setUp(self):
        self.user = f"hwlf{os.urandom(4).hex()}"
        harness.add_user(self.user)
        self.addCleanup(harness.remove_user, self.user)

    def test_target_dying_mid_lazy_move_leaves_the_job_at_its_source(self):
        with harness.LoopCluster(2, settings=["migration.lazy_pages=true"],
                                 faults="lazy-hold") as c:
            harness.wait_until_meshed(c)
            work, _, pid = start_hog(self, c, self.user, "lazyfail")
            c.wait_for(lambda: "same" in lines(work), 120, "the job's first pass")
            self.assertEqual(len(hog_processes(self.user)), 1)
            move = subprocess.Popen(
                [harness.LOOPCLUSTER, "exec", c.dir, "node1", "--", "mosmigrate", str(pid),
                 "node2"], env=c.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                text=True)
            try:
                c.wait_for(lambda: "fault point lazy-hold" in c.log("node2"), 120,
                           "the target to hold the job's memory")
                c.kill("node2")
                out, err = move.communicate(timeout=120)
            finally:
                if move.poll() is None:
                    move.kill()
                    move.wait()
            self.assertNotEqual(move.returncode, 0, out)
            self.assertIn("stays on node1", err)
            # The job ran on node2 (restored) when node2 died, without all its memory.
            self.assertIn("give node2 the job's memory failed", err)
            self.assertIn("left before it had every page", err)
            # The copy on node2 was killed by criu lazy-pages (it could not be completed);
            # the job runs on at node1 with its memory whole.
            c.wait_for(lambda: len(hog_processes(self.user)) == 1, 60,
                       "the copy on node2 to end")
            self.assertEqual(where(c, pid), "node1")
            wait_for_more_lines(self, c, work, "the job to go on at node1")
            self.assertNotIn("CHANGED", lines(work))
            open(os.path.join(work, "stop"), "w").close()
            c.wait_for(lambda: harness.read_text(os.path.join(work, "status")).strip() == "0",
                       120, "the job to end")
            self.assertNotIn("CHANGED", lines(work))


if __name__ == "__main__":
    harness.main()
