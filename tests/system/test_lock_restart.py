#!/usr/bin/python3
"""Locks across a restart of the home's daemon. Jobs of a throwaway user on node2 hold a
`lockf` lock and a `flock` on files of node1; node1's daemon is SIGKILLed and started again
(its lock keeper holds the locks' descriptions meanwhile, and the new daemon gives them back
to node2's homefs when it connects again). A job on node3 must not get either lock while
the holders still have them, whether it tries without waiting or waits; F_GETLK from
node3 still names the holder by its home id; waiters on node3 whose requests wait at the
home while the daemon dies wait on (homefs sends their requests again to the new daemon,
rather than failing them with EIO); once the holders let go (they end: their closes reach
the home), the waiters get the locks."""

import os
import shlex
import unittest

import harness
from test_locks import GETLK, HOLDER

read = harness.read_text

# Tries a lock once without waiting (lockf or flock); prints "busy" or "got".
TRY = r"""
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDWR)
try:
    if sys.argv[2] == "flock":
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    else:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    print("got")
except OSError:
    print("busy")
"""


def waiting_at_home(path, kind):
    """Whether a request of `kind` (OFDLCK: the home's hold of a lockf; FLOCK) waits for
    the file at `path` in the home's kernel (a blocked request: "->" in /proc/locks; the
    loopback cluster's nodes share one kernel)."""
    ino = os.stat(path).st_ino
    for line in read("/proc/locks").splitlines():
        fields = line.split()
        if len(fields) > 6 and fields[1] == "->" and fields[2] == kind and \
                fields[6].endswith(f":{ino}"):
            return True
    return False


class LockRestartTest(unittest.TestCase):
    def setUp(self):
        entry = harness.user_for(self, "hwlr")
        self.user = entry.pw_name
        self.uid, self.gid = entry.pw_uid, entry.pw_gid

    def start(self, c, tag, where, *program):
        mosrun = shlex.join(["runuser", "-u", self.user, "--", "mosrun", "-r", where, *program])
        c.run("node1", "sh", "-c", f"cd /data/lr && ({mosrun} > {tag}.out 2> {tag}.err; "
                                   f"echo $? > {tag}.status) >/dev/null 2>&1 & echo started")

    def ended(self, c, tag, timeout):
        c.wait_for(lambda: read(os.path.join(self.work, f"{tag}.status")), timeout,
                   f"job {tag} to end")
        return (read(os.path.join(self.work, f"{tag}.status")).strip(),
                read(os.path.join(self.work, f"{tag}.err")))

    def run_job(self, c, tag, where, *program):
        self.start(c, tag, where, *program)
        status, err = self.ended(c, tag, 90)
        self.assertEqual(status, "0", f"{tag}: {err}")
        return read(os.path.join(self.work, f"{tag}.out")).split()

    def test_locks_held_through_a_restart_of_the_home_daemon(self):
        settings = ["gossip.interval_ms=200", "balance.automatic=false"]
        with harness.LoopCluster(3, settings=settings) as c:
            for node in ("node2", "node3"):
                c.wait_for(lambda: c.run(node, "test", "-d", "/mosix/home/node1/data",
                                         check=False).returncode == 0,
                           30, f"{node} to mount node1's files")
            self.work = os.path.join(c.node("node1")["data"], "lr")
            os.makedirs(self.work)
            for name, text in (("holder.py", HOLDER), ("getlk.py", GETLK), ("try.py", TRY),
                               ("posix", "data\n"), ("flocked", "data\n")):
                with open(os.path.join(self.work, name), "w") as f:
                    f.write(text)
                os.chown(os.path.join(self.work, name), self.uid, self.gid)
            os.chown(self.work, self.uid, self.gid)

            for how, name in (("lockf", "posix"), ("flock", "flocked")):
                self.start(c, f"holder-{how}", "node2", "python3", "holder.py", name, how,
                           f"h-{how}")
            for how in ("lockf", "flock"):
                c.wait_for(lambda: read(os.path.join(self.work, f"h-{how}.held")), 60,
                           f"the {how} holder's lock")
            home_id = read(os.path.join(self.work, "h-lockf.held")).split()[0]
            self.assertEqual(self.run_job(c, "try0", "node3", "python3", "try.py", "posix",
                                          "lockf"), ["busy"])

            # Waiters whose requests wait at the home while its daemon dies.
            for how, name in (("lockf", "posix"), ("flock", "flocked")):
                self.start(c, f"early-{how}", "node3", "python3", "holder.py", name, how,
                           f"e-{how}")
            for kind, name in (("OFDLCK", "posix"), ("FLOCK", "flocked")):
                c.wait_for(lambda: waiting_at_home(os.path.join(self.work, name), kind), 60,
                           f"node3's {kind} request to wait at the home")

            # The home has journaled the jobs away, so its next daemon takes them back.
            pids = [j["pid"] for j in harness.jobs(c)]
            self.assertEqual(len(pids), 4, pids)
            for pid in pids:
                journal = os.path.join(c.node("node1")["state"], "jobs", str(pid))
                c.wait_for(lambda: "away " in read(journal), 30, f"job {pid} journaled away")
            c.kill("node1")
            c.start("node1")
            c.wait_for(lambda: "held across the restart" in c.log("node1"), 60,
                       "node2's homefs to take its locks back")

            # Neither lock is free: tried, waited for, asked about.
            for how, name in (("lockf", "posix"), ("flock", "flocked")):
                self.assertEqual(self.run_job(c, f"try-{how}", "node3", "python3", "try.py",
                                              name, how), ["busy"], how)
            self.assertEqual(self.run_job(c, "getlk", "node3", "python3", "getlk.py", "posix"),
                             ["1", "0", "0", home_id])
            for how, name in (("lockf", "posix"), ("flock", "flocked")):
                self.start(c, f"waiter-{how}", "node3", "python3", "holder.py", name, how,
                           f"w-{how}")
            for how in ("lockf", "flock"):
                c.wait_for(lambda: c.run("node3", "pgrep", "-f",
                                         f"^python3 holder.py .* {how} w-{how}$",
                                         check=False).returncode == 0,
                           60, f"the {how} waiter to run on node3")
            c.holds_for(3, lambda: not any(read(os.path.join(self.work, f"{w}-{how}.held"))
                                           for w in ("w", "e") for how in ("lockf", "flock")),
                        "the waiters wait while the holders hold")
            for how in ("lockf", "flock"):  # still waiting, not failed across the restart
                self.assertFalse(read(os.path.join(self.work, f"early-{how}.status")),
                                 read(os.path.join(self.work, f"early-{how}.err")))
            # ... because node3's homefs sent both requests to the new daemon.
            self.assertGreaterEqual(c.log("node3").count("sent again on the new connection"), 2)

            # The holders end (their closes let the locks go at home): the waiters get them.
            for how in ("lockf", "flock"):
                with open(os.path.join(self.work, f"h-{how}.go"), "w"):
                    pass
            for how in ("lockf", "flock"):
                status, err = self.ended(c, f"holder-{how}", 60)
                self.assertEqual(status, "0", err)
                # The waiters take turns: whichever got it first lets go for the other.
                for _ in range(2):
                    c.wait_for(lambda: any(
                        read(os.path.join(self.work, f"{w}-{how}.held")) and
                        not os.path.exists(os.path.join(self.work, f"{w}-{how}.go"))
                        for w in ("w", "e")), 60, f"a {how} waiter to get the lock")
                    holders = [w for w in ("w", "e")
                               if read(os.path.join(self.work, f"{w}-{how}.held")) and
                               not os.path.exists(os.path.join(self.work, f"{w}-{how}.go"))]
                    self.assertEqual(len(holders), 1, f"{how}: both waiters hold it")
                    with open(os.path.join(self.work, f"{holders[0]}-{how}.go"), "w"):
                        pass
                for tag in (f"waiter-{how}", f"early-{how}"):
                    status, err = self.ended(c, tag, 60)
                    self.assertEqual(status, "0", f"{tag}: {err}")


if __name__ == "__main__":
    harness.main()
