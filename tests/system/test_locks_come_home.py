#!/usr/bin/python3
"""A guest moved home keeps its locks. A job of a throwaway user on node2 holds a POSIX lock
(lockf) on one file of node1 and a flock on another (the home's file service holds them for
it, through homefs); a job on node3 and a plain process at home wait for each (seen waiting
in the home's /proc/locks). The holder is moved home (mosmigrate): its files there are the
real files, and the service hands it the descriptions it held them through, so no waiter
gets a lock while it holds them (before, they got them as soon as its old copy on node2 was
killed). Once it logs that it lets go and unlocks both, every waiter gets its lock after
that line, while it still runs; a holder moved home that ends without unlocking frees them
as it ends. While the home holds them for it, another user's process, and a process of the
job's user that is not of the job, ask the home for them as the shim does and are refused."""

import os
import unittest

import harness
import lock_jobs
from lock_jobs import WAITER, blocked_on
from test_home_lock_moves import HOLDER

read = harness.read_text

# Asks the home's file service, as a shim that came home does, for the locks held on FILE
# (passed open for reading) of each kind (1 POSIX, 2 flock, 3 either; lock_handover.h),
# and prints one line per kind: the answer's kind and how many descriptors came with it.
TAKE = r"""
import array, os, socket, struct, sys
path = sys.argv[1]
for kind in (1, 2, 3):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    s.settimeout(10)
    s.connect("/mosix/lock-holders")
    fd = os.open(path, os.O_RDONLY)
    s.sendmsg([struct.pack("<Ii", 0x4c480001, kind)],
              [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]))])
    os.close(fd)
    answer, fds, _, _ = socket.recv_fds(s, 16, 4)
    for got in fds:
        os.close(got)
    print(struct.unpack("<ii", answer)[0] if len(answer) == 8 else "none", len(fds))
    s.close()
"""


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
        self.others_are_refused_its_locks(counted, flocked)
        # Its old copy on node2 is gone; at home it holds both locks still.
        self.holder_keeps_its_locks_then_lets_go(
            tags, (counted, flocked), (want["counted"], want["flocked"]),
            "the waiters wait while the holder, moved home, holds their locks")
        return tags

    def others_are_refused_its_locks(self, *files):
        """While the home holds the job's locks for it, another user's process and a
        process of the job's user outside the job ask for them as the shim does, passing
        the file open: each is refused (-1, no descriptor), and the refusal is logged."""
        c = self.c
        other = harness.user_for(self, "hwlcx").pw_name
        with open(os.path.join(self.work, "take.py"), "w") as f:
            f.write(TAKE)
        for path in files:
            os.chmod(path, 0o644)  # anyone may open it: the file is not what refuses them
        for user in (other, self.user):
            for path in files:
                asked = c.run("node1", "runuser", "-u", user, "--", "python3",
                              os.path.join(self.dir, "take.py"),
                              os.path.join(self.dir, os.path.basename(path))).stdout
                self.assertEqual(asked.split("\n")[:3], ["-1 0"] * 3,
                                 f"{user} asking for the locks on {path}")
        self.assertIn("is not a process of a job that came home", c.log("node1"))

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
