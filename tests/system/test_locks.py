#!/usr/bin/python3
"""Locks are the home's. Jobs of a throwaway user on node2, node3 and at home (node1)
share files of node1: a counter incremented 200 times by each under flock and under
fcntl (lockf) ends exact; F_GETLK from another node sees the holder; a waiter gets the
lock when its holder is killed, and when the holder's node is killed (once the home
declares that node dead), never before."""

import os
import re
import shlex
import signal
import time
import unittest

import harness

read = harness.read_text

# Takes the lock on the counter file itself, reads, writes the number one higher, unlocks:
# N times. The number only grows, so a write never leaves old digits behind.
COUNTER = r"""
import fcntl, os, sys
path, how, times = sys.argv[1], sys.argv[2], int(sys.argv[3])
for _ in range(times):
    fd = os.open(path, os.O_RDWR)
    if how == "flock":
        fcntl.flock(fd, fcntl.LOCK_EX)
    else:
        fcntl.lockf(fd, fcntl.LOCK_EX)
    value = int(os.pread(fd, 64, 0).decode() or "0")
    os.pwrite(fd, str(value + 1).encode(), 0)
    if how == "flock":
        fcntl.flock(fd, fcntl.LOCK_UN)
    else:
        fcntl.lockf(fd, fcntl.LOCK_UN)
    os.close(fd)
print("counted", times)
"""

# Takes a lock (flock or lockf) on a file, says so in `<name>.held` with its pid, and holds
# it until `<name>.go` appears.
HOLDER = r"""
import fcntl, os, sys, time
path, how, name = sys.argv[1], sys.argv[2], sys.argv[3]
f = open(path, "r+")
if how == "flock":
    fcntl.flock(f, fcntl.LOCK_EX)
else:
    fcntl.lockf(f, fcntl.LOCK_EX)
with open(name + ".held", "w") as out:
    out.write(f"{os.getpid()} {time.time()}\n")
while not os.path.exists(name + ".go"):
    time.sleep(0.05)
"""

# Reports what F_GETLK says of a write lock from byte START (argv[2], default 0) to the
# end: type, start, length, pid.
GETLK = r"""
import fcntl, os, struct, sys
fd = os.open(sys.argv[1], os.O_RDWR)
start = int(sys.argv[2]) if len(sys.argv) > 2 else 0
lock = struct.pack("hhqqi4x", fcntl.F_WRLCK, 0, start, 0, 0)
kind, _, start, length, pid = struct.unpack("hhqqi4x", fcntl.fcntl(fd, fcntl.F_GETLK, lock))
print(kind, start, length, pid)
"""


class LocksTest(unittest.TestCase):
    maxDiff = None

    def setUp(self):
        entry = harness.user_for(self, "hwlock")
        self.user = entry.pw_name
        self.uid, self.gid = entry.pw_uid, entry.pw_gid

    def workdir(self, c, name):
        """/data/NAME at node1, the user's, with the test's programs in it."""
        work = os.path.join(c.node("node1")["data"], name)
        os.makedirs(work)
        for program, text in (("counter.py", COUNTER), ("holder.py", HOLDER),
                              ("getlk.py", GETLK)):
            with open(os.path.join(work, program), "w") as f:
                f.write(text)
        os.chown(work, self.uid, self.gid)
        return work

    def start(self, c, name, tag, where, *program):
        """Starts `program` as a job of the user in /data/NAME, kept at home (where "home"),
        on node `where`, or as mosrun's option `where` says (one starting with "-"); its status, output and errors go to TAG.status/out/err."""
        placement = (["-h"] if where == "home" else [where] if where.startswith("-")
                     else ["-r", where])
        mosrun = shlex.join(["runuser", "-u", self.user, "--", "mosrun", *placement, *program])
        c.run("node1", "sh", "-c", f"cd /data/{name} && ({mosrun} > {tag}.out 2> {tag}.err; "
                                   f"echo $? > {tag}.status) >/dev/null 2>&1 & echo started")

    def ended(self, c, work, tag, timeout):
        c.wait_for(lambda: read(os.path.join(work, f"{tag}.status")), timeout,
                   f"job {tag} to end")
        return (read(os.path.join(work, f"{tag}.status")).strip(),
                read(os.path.join(work, f"{tag}.err")))

    def wait_mounts(self, c, nodes):
        for node in nodes:
            c.wait_for(lambda: c.run(node, "test", "-d", "/mosix/home/node1/data",
                                     check=False).returncode == 0,
                       30, f"{node} to mount node1's files")

    def host_pid(self, c, node, args):
        """The pid on the host of the job process `python3 ARGS` (what the job itself
        prints is its home pid)."""
        found = c.run(node, "pgrep", "-f", f"^python3 {args}$").stdout.split()
        self.assertEqual(len(found), 1, found)
        return int(found[0])

    def test_counters_getlk_and_a_killed_holder(self):
        settings = ["gossip.interval_ms=200", "balance.automatic=false"]
        with harness.LoopCluster(3, settings=settings) as c:
            self.wait_mounts(c, ["node2", "node3"])
            work = self.workdir(c, "locks")
            # A counter under flock and one under fcntl, 200 increments from each of a job
            # on node2, one on node3 and one at home, all at once.
            for how in ("flock", "lockf"):
                counter = os.path.join(work, f"counter-{how}")
                with open(counter, "w") as f:
                    f.write("0")
                os.chown(counter, self.uid, self.gid)
                for where in ("node2", "node3", "home"):
                    self.start(c, "locks", f"{how}-{where}", where, "python3", "counter.py",
                               f"counter-{how}", how, "200")
            for how in ("flock", "lockf"):
                for where in ("node2", "node3", "home"):
                    status, err = self.ended(c, work, f"{how}-{where}", 300)
                    self.assertEqual(status, "0", f"{how} on {where}: {err}")
                self.assertEqual(read(os.path.join(work, f"counter-{how}")), "600",
                                 f"the counter under {how}")

            # F_GETLK from node3 sees the lock a process at home holds, by its pid there.
            with open(os.path.join(work, "shared"), "w") as f:
                f.write("data\n")
            os.chown(os.path.join(work, "shared"), self.uid, self.gid)
            local = shlex.join(["runuser", "-u", self.user, "--", "python3", "holder.py",
                                "shared", "lockf", "h0"])
            c.run("node1", "sh", "-c", f"cd /data/locks && ({local} >/dev/null 2>&1 &)")
            c.wait_for(lambda: read(os.path.join(work, "h0.held")), 60, "the local lock")
            local_pid = read(os.path.join(work, "h0.held")).split()[0]
            self.start(c, "locks", "getlk0", "node3", "python3", "getlk.py", "shared")
            status, err = self.ended(c, work, "getlk0", 60)
            self.assertEqual(status, "0", err)
            self.assertEqual(read(os.path.join(work, "getlk0.out")).split(),
                             ["1", "0", "0", local_pid])
            with open(os.path.join(work, "h0.go"), "w"):
                pass
            c.wait_for(lambda: c.run("node1", "pgrep", "-f", "^python3 holder.py shared lockf h0$",
                                     check=False).returncode != 0, 30, "the local holder to end")

            # F_GETLK from node3 sees the lock a job on node2 holds, by the holder's home id
            # (its mosrun at home: what the job itself calls its pid).
            self.start(c, "locks", "holder", "node2", "python3", "holder.py", "shared", "lockf",
                       "h1")
            c.wait_for(lambda: read(os.path.join(work, "h1.held")), 60, "the holder's lock")
            home_id = read(os.path.join(work, "h1.held")).split()[0]
            self.start(c, "locks", "getlk", "node3", "python3", "getlk.py", "shared")
            status, err = self.ended(c, work, "getlk", 60)
            self.assertEqual(status, "0", err)
            self.assertEqual(read(os.path.join(work, "getlk.out")).split(),
                             ["1", "0", "0", home_id])
            # A range lock: F_GETLK of a part of it reports the holder's own range.
            self.start(c, "locks", "getlkr", "node3", "python3", "getlk.py", "shared", "2")
            status, err = self.ended(c, work, "getlkr", 60)
            self.assertEqual(status, "0", err)
            self.assertEqual(read(os.path.join(work, "getlkr.out")).split(),
                             ["1", "0", "0", home_id])
            # As root on node3 (not a job: no shim asks homefs), the kernel translates the
            # home id into node3's pid namespace: on a loopback cluster, the host's, where
            # mosrun is that very pid. At home, as the home's kernel has it: a lock of an
            # open file the file service holds (an OFD lock, pid -1).
            seen = c.run("node3", "python3", os.path.join("/mosix/home/node1/data/locks",
                                                          "getlk.py"),
                         "/mosix/home/node1/data/locks/shared").stdout.split()
            holder = self.host_pid(c, "node2", "holder.py shared lockf h1")
            self.assertEqual(seen, ["1", "0", "0", home_id])
            at_home = c.run("node1", "python3", "/data/locks/getlk.py",
                            "/data/locks/shared").stdout.split()
            self.assertEqual(at_home, ["1", "0", "0", "-1"])

            # A waiter on node3 gets the lock when the holder is killed, not before. A first
            # waiter, killed while it waits, ends at once (its wait at home is cancelled).
            self.start(c, "locks", "waiter1", "node3", "python3", "holder.py", "shared",
                       "lockf", "w1")
            self.start(c, "locks", "waiter2", "node3", "python3", "holder.py", "shared",
                       "lockf", "w2")
            c.wait_for(lambda: len(c.run("node3", "pgrep", "-f", "^python3 holder.py shared lockf w",
                                         check=False).stdout.split()) == 2,
                       30, "both waiters to run on node3")
            c.holds_for(2, lambda: not read(os.path.join(work, "w1.held")) and
                        not read(os.path.join(work, "w2.held")), "the waiters wait")
            os.kill(self.host_pid(c, "node3", "holder.py shared lockf w1"), signal.SIGKILL)
            status, _ = self.ended(c, work, "waiter1", 30)
            self.assertNotEqual(status, "0")
            os.kill(holder, signal.SIGKILL)
            self.ended(c, work, "holder", 60)
            c.wait_for(lambda: read(os.path.join(work, "w2.held")), 30,
                       "the waiter to get the lock")
            with open(os.path.join(work, "w2.go"), "w"):
                pass
            status, err = self.ended(c, work, "waiter2", 60)
            self.assertEqual(status, "0", err)

    def test_a_holder_at_home_is_not_pinned_by_its_locks(self):
        """A lockf lock or a flock a job at home holds on a file no longer pins it: the shim
        takes a POSIX lock as an OFD lock of the process's own description, and the home
        keeps the descriptions for the job while it moves (test_home_lock_moves.py); only a
        POSIX lock held through the kernel itself does (test_lock_migration.py)."""
        with harness.LoopCluster(2, settings=["balance.automatic=false"]) as c:
            work = self.workdir(c, "pinned")
            for name in ("locked", "flocked"):
                with open(os.path.join(work, name), "w") as f:
                    f.write("data\n")
                os.chown(os.path.join(work, name), self.uid, self.gid)
            for how, name in (("lockf", "locked"), ("flock", "flocked")):
                self.start(c, "pinned", how, "-L", "python3", "holder.py", name, how, how)
                c.wait_for(lambda: read(os.path.join(work, f"{how}.held")), 60,
                           f"the {how} holder's lock")
                holder = next(j for j in harness.jobs(c) if j["cmd"].endswith(
                    name + " " + how + " " + how))
                self.assertEqual(holder["where"], "node1")
                self.assertNotIn("holds a file lock", holder.get("pinned", ""))
                with open(os.path.join(work, f"{how}.go"), "w"):
                    pass
                status, err = self.ended(c, work, how, 60)
                self.assertEqual(status, "0", err)

    def test_a_lost_node_loses_its_locks(self):
        settings = ["gossip.interval_ms=200", "gossip.suspect_ms=1000", "gossip.dead_ms=3000",
                    "balance.automatic=false"]
        with harness.LoopCluster(3, settings=settings) as c:
            self.wait_mounts(c, ["node2", "node3"])
            work = self.workdir(c, "lost")
            for name in ("byflock", "bylockf"):
                with open(os.path.join(work, name), "w") as f:
                    f.write("data\n")
                os.chown(os.path.join(work, name), self.uid, self.gid)
            for how, name in (("flock", "byflock"), ("lockf", "bylockf")):
                self.start(c, "lost", f"holder-{how}", "node2", "python3", "holder.py", name,
                           how, f"h-{how}")
                c.wait_for(lambda: read(os.path.join(work, f"h-{how}.held")), 60,
                           f"node2's {how} lock")
                self.start(c, "lost", f"waiter-{how}", "node3", "python3", "holder.py", name,
                           how, f"w-{how}")
            c.holds_for(2, lambda: not read(os.path.join(work, "w-flock.held")) and
                        not read(os.path.join(work, "w-lockf.held")), "the waiters wait")
            # node2's daemon dies; its homefs and job go on holding the connection, so only
            # the home declaring node2 dead lets the waiters in.
            killed = time.time()
            c.kill("node2")
            for how in ("flock", "lockf"):
                got = c.wait_for(lambda: read(os.path.join(work, f"w-{how}.held")), 60,
                                 f"the {how} waiter to get the lock")
                self.assertGreater(float(got.split()[1]), killed)
            log = c.log("node1")
            dead = re.search(r"gossip: node2 \(.*\) is dead", log)
            self.assertIsNotNone(dead, "node2 declared dead at home")
            self.assertLess(dead.start(), log.index("dropped the locks of a lost node"))


if __name__ == "__main__":
    harness.main()
