#!/usr/bin/python3
"""Locks carried across a move. A job of a throwaway user on node2 holds a POSIX lock
(lockf) on one file of node1 and a flock on another; a job on node2 waits for the first,
a process at home (node1) for the second. The holder is moved to node3 (mosmigrate): it
holds both locks there before it runs, and neither waiter gets one while it does. Once the
holder lets go (it unlocks the first, and the second goes as it exits), each waiter gets its
lock. It is moved on again (back to node2) before it lets go. Without carrying, the holder's old copy is killed after the restore and its locks go
with it: the waiters get them while the moved holder still believes it holds them."""

import os
import unittest

import harness
import lock_jobs
from lock_jobs import WAITER

read = harness.read_text

# Locks `counted` (lockf) and `flocked` (flock), says so in `held`, waits for `go`, then
# logs that it lets go, unlocks `counted` and exits (the flock goes with its file).
HOLDER = r"""
import fcntl, os, time
a = open("counted", "r+")
fcntl.lockf(a, fcntl.LOCK_EX)
b = open("flocked", "r+")
fcntl.flock(b, fcntl.LOCK_EX)
with open("held", "w") as out:
    out.write(f"{os.getpid()}\n")
while not os.path.exists("go"):
    time.sleep(0.05)
with open("log", "a") as log:
    log.write("holder lets go\n")
fcntl.lockf(a, fcntl.LOCK_UN)
"""

# Locks a memfd (lockf: the kernel's own POSIX lock), says so in `held`, waits for `go`.
PINNED = r"""
import fcntl, os, time
fd = os.memfd_create("pinned")
os.write(fd, b"x")
fcntl.lockf(fd, fcntl.LOCK_EX)
with open("held", "w") as out:
    out.write(f"{os.getpid()}\n")
while not os.path.exists("go"):
    time.sleep(0.05)
"""


class LockMigrationTest(lock_jobs.LockJobsTest):
    user_prefix = "hwcarry"

    def test_a_moved_holder_keeps_its_locks(self):
        c = self.c
        self.wait_for_home_mounts()
        self.workdir("carry", (("holder.py", HOLDER), ("waiter.py", WAITER), ("counted", "0\n"),
                               ("flocked", "x\n")))

        self.start("holder", ["-r", "node2"], "python3", "holder.py")
        c.wait_for(lambda: read(os.path.join(self.work, "held")), 60, "the holder's locks")
        self.start("lockf", ["-r", "node2"], "python3", "waiter.py", "counted", "lockf", "lockf")
        self.start("flock", ["-h"], "python3", "waiter.py", "flocked", "flock", "flock")
        for tag in ("lockf", "flock"):
            c.wait_for(lambda: os.path.exists(os.path.join(self.work, f"waiting-{tag}")), 60,
                       f"the {tag} waiter to wait")
        c.holds_for(1, lambda: self.log() == [], "the waiters wait")

        holder = next(j for j in harness.jobs(c) if j["cmd"].endswith("holder.py"))
        self.assertEqual(holder["where"], "node2")
        moved = c.run("node1", "mosmigrate", str(holder["pid"]), "node3", check=False)
        self.assertEqual(moved.returncode, 0, moved.stdout + moved.stderr)
        self.assertEqual(next(j for j in harness.jobs(c) if j["pid"] == holder["pid"])["where"],
                         "node3")
        # The old copy is gone (its closes reached the home); the holder, on node3, still
        # holds both locks: neither waiter gets one.
        c.holds_for(4, lambda: self.log() == [], "the waiters wait while the moved holder "
                                                  "holds their locks")
        self.assertIn("kept for it", c.log("node1"))
        # And on again, back to node2: what it carried to node3 goes along.
        moved = c.run("node1", "mosmigrate", str(holder["pid"]), "node2", check=False)
        self.assertEqual(moved.returncode, 0, moved.stdout + moved.stderr)
        c.holds_for(3, lambda: self.log() == [], "the waiters wait while the holder, moved "
                                                  "again, holds their locks")

        with open(os.path.join(self.work, "go"), "w"):
            pass
        for tag in ("holder", "lockf", "flock"):
            status, err = self.ended(tag)
            self.assertEqual(status, "0", f"{tag}: {err}")
        log = self.log()
        self.assertEqual(log[0], "holder lets go", log)
        self.assertEqual(sorted(log[1:]), ["flock got it", "lockf got it"], log)

    def test_a_holder_at_home_says_it_cannot_leave(self):
        # A POSIX lock a job at home holds through the kernel itself (the shim takes those
        # on files with a name as OFD locks, which move: test_home_lock_moves.py; not on a
        # memfd) is owned by its process, and criu would take it again on the target while
        # the frozen copy still holds it: the move is refused up front.
        c = self.c
        self.workdir("carryhome", (("holder.py", PINNED),))
        self.start("holder", [], "python3", "holder.py")
        c.wait_for(lambda: read(os.path.join(self.work, "held")), 60, "the holder's locks")
        holder = next(j for j in harness.jobs(c) if j["cmd"].endswith("holder.py") and
                      j["where"] == "node1")
        self.assertIn("holds a file lock", holder["pinned"])
        # The reason says why such a lock is not carried (the home kernel's own).
        self.assertIn("cannot change hands without a moment when it is free", holder["pinned"])
        refused = c.run("node1", "mosmigrate", str(holder["pid"]), "node2", check=False)
        self.assertNotEqual(refused.returncode, 0)
        self.assertIn("cannot leave home: it holds a file lock", refused.stderr)
        with open(os.path.join(self.work, "go"), "w"):
            pass
        status, err = self.ended("holder")
        self.assertEqual(status, "0", err)


if __name__ == "__main__":
    unittest.main()
