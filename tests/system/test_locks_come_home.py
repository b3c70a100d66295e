#!/usr/bin/env python3
"""A guest moved home keeps its locks. A job of a throwaway user on node2 holds a POSIX lock
(lockf) on one file of node1 and a flock on another (the home's file service holds them for
it, through homefs); a job on node3 and a plain process at home wait for each (seen waiting
in the home's /proc/locks). The holder is moved home (mosmigrate): its files there are the
real files, and the service hands it the descriptions it held them through, so no waiter
gets a lock while it holds them (before, they got them as soon as its old copy on node2 was
killed). Once it logs that it lets go and unlocks both, every waiter gets its lock after
that line, while it still runs; a holder moved home that ends without unlocking frees them
as it ends."""

import os
import unittest

import harness
import lock_jobs
from lock_jobs import WAITER
from test_home_lock_moves import HOLDER, blocked_on

read = harness.read_text


class LocksComeHomeTest(lock_jobs.LockJobsTest):
    user_prefix = "hwlch"
    local_waiters = (("counted", "lockf"), ("flocked", "flock"))

    def setUp(self):
        super().setUp()
        self.wait_for_home_mounts()

    def move_holder_home_with_waiters(self, how):
        c = self.c
        self.start("holder", ["-r", "node2"], "python3", "holder.py", how,
                   str(2 + len(self.local_waiters)))
        c.wait_for(lambda: read(os.path.join(self.work, "held")), 60, "the holder's locks")
        holder = next(j for j in harness.jobs(c) if "holder.py" in j["cmd"])
        self.assertEqual(holder["where"], "node2")
        # A job on node3 and a plain process at home wait for each lock.
        tags = []
        for file, kind in (("counted", "lockf"), ("flocked", "flock")):
            self.start(f"node3-{kind}", ["-r", "node3"], "python3", "waiter.py", file, kind,
                       f"node3-{kind}")
            tags.append(f"node3-{kind}")
        for file, kind in self.local_waiters:
            local = f"cd {self.dir} && (runuser -u {self.user} -- python3 waiter.py {file} " \
                    f"{kind} home-{kind} >/dev/null 2>&1 &)"
            c.run("node1", "sh", "-c", local)
            tags.append(f"home-{kind}")
        for tag in tags:
            c.wait_for(lambda: os.path.exists(os.path.join(self.work, f"waiting-{tag}")), 60,
                       f"the {tag} waiter to start")
        counted, flocked = (os.path.join(self.work, n) for n in ("counted", "flocked"))
        want = {"counted": 1, "flocked": 1}
        for file, _ in self.local_waiters:
            want[file] += 1
        c.wait_for(lambda: blocked_on(counted) == want["counted"] and
                   blocked_on(flocked) == want["flocked"], 60,
                   "every waiter to wait in the home's kernel")
        self.assertEqual(self.log(), [])

        moved = c.run("node1", "mosmigrate", str(holder["pid"]), "home", check=False)
        self.assertEqual(moved.returncode, 0, moved.stdout + moved.stderr)
        self.assertEqual(next(j for j in harness.jobs(c) if j["pid"] == holder["pid"])["where"],
                         "node1")
        self.assertIn("of a job that comes home held for it", c.log("node1"))
        # Its old copy on node2 is gone; at home it holds both locks still: no waiter gets
        # one, and they all still wait at home.
        c.holds_for(4, lambda: self.log() == [], "the waiters wait while the holder, moved "
                                                  "home, holds their locks")
        self.assertEqual((blocked_on(counted), blocked_on(flocked)),
                         (want["counted"], want["flocked"]))
        with open(os.path.join(self.work, "go"), "w"):
            pass
        status, err = self.ended("holder")
        self.assertEqual(status, "0", f"holder: {err}")
        for tag in ("node3-lockf", "node3-flock"):
            status, err = self.ended(tag)
            self.assertEqual(status, "0", f"{tag}: {err}")
        c.wait_for(lambda: len(self.log()) == 1 + len(tags), 60, "every waiter's lock")
        log = self.log()
        self.assertEqual(log[0], "holder lets go", log)
        self.assertEqual(sorted(log[1:]), sorted(f"{tag} got it" for tag in tags), log)
        return tags

    def test_a_holder_moved_home_unlocks_there(self):
        self.workdir("lch1", (("holder.py", HOLDER), ("waiter.py", WAITER),
                              ("counted", "0\n"), ("flocked", "x\n")))
        tags = self.move_holder_home_with_waiters("unlock")
        # The holder saw every waiter get its lock while it still ran, after its unlocks.
        self.assertEqual(read(os.path.join(self.work, "after")).splitlines(),
                         sorted(f"{tag} got it" for tag in tags))

    def test_a_holder_moved_home_frees_its_locks_as_it_ends(self):
        self.workdir("lch2", (("holder.py", HOLDER), ("waiter.py", WAITER),
                              ("counted", "0\n"), ("flocked", "x\n")))
        self.move_holder_home_with_waiters("end")


if __name__ == "__main__":
    unittest.main()
