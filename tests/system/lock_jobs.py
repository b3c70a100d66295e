"""What the lock tests share: a job that waits for a lock, and a test class whose jobs run
in a directory of their user's at home (node1), seen by the other nodes through homefs."""

import os
import pwd
import shlex

import harness

read = harness.read_text

# Waits for a lock on FILE (lockf or flock), saying `waiting-TAG` first, and logs when
# it has it.
WAITER = r"""
import fcntl, os, sys
path, how, tag = sys.argv[1], sys.argv[2], sys.argv[3]
f = open(path, "r+")
with open(f"waiting-{tag}", "w"):
    pass
if how == "flock":
    fcntl.flock(f, fcntl.LOCK_EX)
else:
    fcntl.lockf(f, fcntl.LOCK_EX)
with open("log", "a") as log:
    log.write(f"{tag} got it\n")
"""


def blocked_on(path):
    """The waits the home's kernel has queued on the file at `path` (its /proc/locks lines
    with "->": a waiting process's, or the file service's for a waiting node)."""
    st = os.stat(path)
    tail = f":{st.st_ino} "
    with open("/proc/locks") as f:
        return sum(1 for line in f if "->" in line and tail in line.split("->")[1] + " ")


class LockJobsTest(harness.UserClusterTest):
    cluster_nodes = 3
    cluster_settings = ("gossip.interval_ms=200", "balance.automatic=false")

    def wait_for_home_mounts(self):
        for node in ("node2", "node3"):
            self.c.wait_for(lambda: self.c.run(node, "test", "-d", "/mosix/home/node1/data",
                                               check=False).returncode == 0,
                            30, f"{node} to mount node1's files")

    def workdir(self, name, files):
        """Makes /data/NAME at home, the user's, holding `files` ((name, text) pairs)."""
        entry = pwd.getpwnam(self.user)
        self.dir = f"/data/{name}"
        self.work = os.path.join(self.c.node("node1")["data"], name)
        os.makedirs(self.work)
        for file, text in files:
            with open(os.path.join(self.work, file), "w") as f:
                f.write(text)
            os.chown(os.path.join(self.work, file), entry.pw_uid, entry.pw_gid)
        os.chown(self.work, entry.pw_uid, entry.pw_gid)

    def start(self, tag, placement, *program):
        """Starts `program` as a job of the user in the work directory; status, output and
        errors go to TAG.status/out/err."""
        mosrun = shlex.join(["runuser", "-u", self.user, "--", "mosrun", *placement, *program])
        self.c.run("node1", "sh", "-c", f"cd {self.dir} && ({mosrun} > {tag}.out 2> {tag}.err; "
                                        f"echo $? > {tag}.status) >/dev/null 2>&1 & echo started")

    def ended(self, tag, timeout=60):
        self.c.wait_for(lambda: read(os.path.join(self.work, f"{tag}.status")), timeout,
                        f"job {tag} to end")
        return (read(os.path.join(self.work, f"{tag}.status")).strip(),
                read(os.path.join(self.work, f"{tag}.err")))

    def log(self):
        return read(os.path.join(self.work, "log")).splitlines()

    def holder_keeps_its_locks_then_lets_go(self, tags, files, want, why):
        """The holder, moved, still holds its locks: for a while no waiter gets one and they
        all still wait at home (as many waits on each of `files` as `want` says); then it
        lets go and ends, and every waiter (`tags`) gets its lock after it."""
        c = self.c
        c.holds_for(4, lambda: self.log() == [], why)
        self.assertEqual(tuple(blocked_on(f) for f in files), want)
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
