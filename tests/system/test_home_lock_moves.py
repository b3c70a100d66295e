#!/usr/bin/python3
"""A job at home that holds locks moves with them. A job of a throwaway user, started at
home (node1), holds a POSIX lock (lockf) on one file and a flock on another; a job on node3
and a plain process at home wait for each (F_SETLKW, flock). The holder is moved to node2
(mosmigrate): it holds both locks there before it runs, and no waiter gets one while it
does (its old copy's end at home does not free them: the home's file service kept the
descriptions the job held them through). Once the holder, on node2, logs that it lets go
and unlocks, every waiter gets its lock after that line; a holder that ends without
unlocking frees them as it ends. F_GETLK at home, from a job, names a guest's lock by the
guest's home id (its mosrun's pid), not -1; the home's lock-holder socket that names it
tells an ordinary user nothing of a file it cannot open. And the POSIX lock semantics the
shim gives a job at home (its locks taken as OFD locks) are the kernel's, step by step,
fclose and execve included."""

import json
import os
import shlex
import unittest

import harness
import lock_jobs
from lock_jobs import WAITER

read = harness.read_text

# Locks `counted` (lockf) and `flocked` (flock), says so in `held`, waits for `go`, then
# logs that it lets go and: "unlock", unlocks both and waits until the waiters (argv[2])
# have logged theirs, then ends; "end", ends holding them.
HOLDER = r"""
import fcntl, os, sys, time
how, waiters = sys.argv[1], int(sys.argv[2])
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
if how == "unlock":
    fcntl.lockf(a, fcntl.LOCK_UN)
    fcntl.flock(b, fcntl.LOCK_UN)
    # Still running, and still holding its files open: only the unlocks freed them.
    while len(open("log").read().splitlines()) < 1 + waiters:
        time.sleep(0.05)
    with open("after", "w") as out:
        out.write("".join(sorted(open("log").read().splitlines(True)[1:])))
os._exit(0)
"""

# Holds a write lock (lockf) on FILE, says so in `FILE.held` with its pid, and waits for
# `FILE.go`.
GUEST = r"""
import fcntl, os, sys, time
f = open(sys.argv[1], "r+")
fcntl.lockf(f, fcntl.LOCK_EX)
with open(sys.argv[1] + ".held", "w") as out:
    out.write(f"{os.getpid()}\n")
while not os.path.exists(sys.argv[1] + ".go"):
    time.sleep(0.05)
"""

# What F_GETLK says of a write lock on all of FILE: type and pid.
GETLK = r"""
import fcntl, struct, sys
fd = open(sys.argv[1], "r+")
lock = struct.pack("hhqqi4x", fcntl.F_WRLCK, 0, 0, 0, 0)
kind, _, start, length, pid = struct.unpack("hhqqi4x", fcntl.fcntl(fd, fcntl.F_GETLK, lock))
print(kind, pid)
"""

# Asks the home's lock-holder socket who holds a write lock on all of FILE, as HOW: "fd"
# passes FILE open (as the shim does), "opath" an O_PATH descriptor of it, "dir" a
# descriptor of FILE's directory, "nofd" none, "v1" the first version's question, naming
# the file by its dev and ino. Prints the answer's pid ("none": no answer).
# "flood": keeps 50 silent connections open (opening new ones as the service closes them)
# until FILE.go appears, having made FILE.flooding once they are open.
ASK = r"""
import array, fcntl, os, select, socket, struct, sys, time
how, path = sys.argv[1], sys.argv[2]
SOCKET = "/mosix/lock-holders"

def connect():
    s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    s.settimeout(10)
    s.connect(SOCKET)
    return s

if how == "flood":
    conns = [connect() for _ in range(50)]
    open(path + ".flooding", "w").close()
    deadline = time.time() + 120
    while not os.path.exists(path + ".go") and time.time() < deadline:
        closed, _, _ = select.select(conns, [], [], 0.05)
        time.sleep(0.01)  # a flood, not a spin of the test's own
        for s in closed:
            conns.remove(s)
            s.close()
            try:
                conns.append(connect())
            except OSError:
                pass
    sys.exit(0)
s = connect()
if how == "v1":
    st = os.stat(path)
    s.send(struct.pack("<QQqqh6x", st.st_dev, st.st_ino, 0, 2**63 - 1, fcntl.F_WRLCK))
else:
    question = struct.pack("<Ih2xqq", 2, fcntl.F_WRLCK, 0, 2**63 - 1)
    if how == "nofd":
        s.send(question)
    else:
        flags = {"fd": os.O_RDONLY, "opath": os.O_PATH, "dir": os.O_RDONLY}[how]
        fd = os.open(os.path.dirname(path) if how == "dir" else path, flags)
        s.sendmsg([question], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]))])
answer = s.recv(16)
print(struct.unpack("<i", answer)[0] if len(answer) == 4 else "none")
"""


class HomeLockMovesTest(lock_jobs.LockJobsTest):
    user_prefix = "hwhlm"

    def setUp(self):
        super().setUp()
        self.wait_for_home_mounts()

    def start_local(self, *program):
        """Starts `program` at home as a plain process of the user (no mosrun)."""
        local = shlex.join(["runuser", "-u", self.user, "--", *program])
        self.c.run("node1", "sh", "-c", f"cd {self.dir} && ({local} >/dev/null 2>&1 &)")

    def move_holder_with_waiters(self, how, local_waiters):
        c = self.c
        self.start("holder", [], "python3", "holder.py", how, str(2 + len(local_waiters)))
        c.wait_for(lambda: read(os.path.join(self.work, "held")), 60, "the holder's locks")
        holder = next(j for j in harness.jobs(c) if "holder.py" in j["cmd"])
        self.assertEqual(holder["where"], "node1")
        self.assertEqual(holder.get("pinned", ""), "", "a holder at home is not pinned by its locks")
        # A job on node3 waits for each lock, and so do plain processes at home.
        self.start("node3-lockf", ["-r", "node3"], "python3", "waiter.py", "counted", "lockf",
                   "node3-lockf")
        self.start("node3-flock", ["-r", "node3"], "python3", "waiter.py", "flocked", "flock",
                   "node3-flock")
        for file, kind in local_waiters:
            self.start_local("python3", "waiter.py", file, kind, f"home-{kind}")
        tags = ["node3-lockf", "node3-flock"] + [f"home-{kind}" for _, kind in local_waiters]
        for tag in tags:
            c.wait_for(lambda: os.path.exists(os.path.join(self.work, f"waiting-{tag}")), 60,
                       f"the {tag} waiter to start")
        counted, flocked = (os.path.join(self.work, n) for n in ("counted", "flocked"))
        want = {"counted": 1, "flocked": 1}
        for file, _ in local_waiters:
            want[file] += 1
        c.wait_for(lambda: lock_jobs.blocked_on(counted) == want["counted"] and
                   lock_jobs.blocked_on(flocked) == want["flocked"], 60,
                   "every waiter to wait in the home's kernel")
        self.assertEqual(self.log(), [])

        moved = c.run("node1", "mosmigrate", str(holder["pid"]), "node2", check=False)
        self.assertEqual(moved.returncode, 0, moved.stdout + moved.stderr)
        self.assertEqual(next(j for j in harness.jobs(c) if j["pid"] == holder["pid"])["where"],
                         "node2")
        self.assertIn("of a job leaving home kept for it", c.log("node1"))
        # Its old copy at home is gone; on node2 it holds both locks still.
        self.holder_keeps_its_locks_then_lets_go(
            tags, (counted, flocked), (want["counted"], want["flocked"]),
            "the waiters wait while the moved holder holds their locks")
        return tags

    def test_a_holder_moved_from_home_unlocks_on_its_new_node(self):
        self.workdir("hlm1", (("holder.py", HOLDER), ("waiter.py", WAITER),
                              ("counted", "0\n"), ("flocked", "x\n")))
        tags = self.move_holder_with_waiters("unlock", [("counted", "lockf"),
                                                        ("flocked", "flock")])
        # The holder saw every waiter get its lock while it still ran, after its unlocks.
        self.assertEqual(read(os.path.join(self.work, "after")).splitlines(),
                         sorted(f"{tag} got it" for tag in tags))

    def test_a_holder_moved_from_home_frees_its_locks_as_it_ends(self):
        self.workdir("hlm2", (("holder.py", HOLDER), ("waiter.py", WAITER),
                              ("counted", "0\n"), ("flocked", "x\n")))
        self.move_holder_with_waiters("end", [("flocked", "flock")])

    def test_getlk_at_home_names_a_guest_holder(self):
        c = self.c
        self.workdir("hlm3", (("guest.py", GUEST), ("getlk.py", GETLK), ("shared", "x\n")))
        self.start("guest", ["-r", "node2"], "python3", "guest.py", "shared")
        c.wait_for(lambda: read(os.path.join(self.work, "shared.held")), 60, "the guest's lock")
        home_id = read(os.path.join(self.work, "shared.held")).split()[0]
        guest = next(j for j in harness.jobs(c) if "guest.py" in j["cmd"])
        self.assertEqual(guest["where"], "node2")
        self.assertEqual(str(guest["pid"]), home_id)
        # A job at home sees the guest by its home id (what the guest calls its own pid).
        self.start("getlk", [], "python3", "getlk.py", "shared")
        status, err = self.ended("getlk")
        self.assertEqual(status, "0", err)
        self.assertEqual(read(os.path.join(self.work, "getlk.out")).split(),
                         [str(1), home_id])  # F_WRLCK
        # A plain process at home asks its kernel, which sees an open file description's
        # lock (the file service's): no owner, -1.
        at_home = c.run("node1", "python3", os.path.join(self.dir, "getlk.py"),
                        os.path.join(self.dir, "shared")).stdout.split()
        self.assertEqual(at_home, ["1", "-1"])
        with open(os.path.join(self.work, "shared.go"), "w"):
            pass
        status, err = self.ended("guest")
        self.assertEqual(status, "0", err)

    def test_lock_holders_tell_only_of_a_file_the_asker_has_open(self):
        """A root job at home holds a POSIX lock (the shim's OFD lock) on a file only root
        may open. Root, passing the file open, is told the holder's home id; an ordinary
        user is refused however it asks (the file by dev and ino in the first version's
        question, no descriptor, an O_PATH one, a directory's), and its flood of silent
        connections does not keep root's question from its answer."""
        c = self.c
        self.workdir("hlm5", (("ask.py", ASK),))
        # Root's own directory (a root job has no capabilities: it writes only where root
        # owns), which the user may pass through but whose file it cannot open.
        root_dir = os.path.join(self.work, "root")
        os.makedirs(root_dir)
        os.chmod(root_dir, 0o755)
        for name, text in (("guest.py", GUEST), ("secret", "root's\n")):
            with open(os.path.join(root_dir, name), "w") as f:
                f.write(text)
        secret = os.path.join(root_dir, "secret")
        os.chmod(secret, 0o600)
        in_node = os.path.join(self.dir, "root")
        ask = os.path.join(self.dir, "ask.py")
        c.run("node1", "sh", "-c", f"cd {in_node} && (mosrun python3 guest.py secret > out "
                                   f"2> err; echo $? > status) >/dev/null 2>&1 &")
        c.wait_for(lambda: read(secret + ".held"), 60, "the root job's lock")
        home_id = read(secret + ".held").split()[0]

        def asked(how, *user, path=os.path.join(in_node, "secret")):
            return c.run("node1", *user, "python3", ask, how, path).stdout.strip()

        self.assertEqual(asked("fd"), home_id)
        as_user = ("runuser", "-u", self.user, "--")
        cannot = c.run("node1", *as_user, "cat", os.path.join(in_node, "secret"), check=False)
        self.assertNotEqual(cannot.returncode, 0, "the user must not be able to open it")
        for how in ("v1", "nofd", "opath", "dir"):
            self.assertEqual(asked(how, *as_user), "-1", how)
        self.assertIn("lock holders: refused", c.log("node1"))
        # Many silent connections of the user: root is still answered.
        flood = os.path.join(self.work, "flood")
        c.run("node1", "sh", "-c", shlex.join([*as_user, "python3", ask, "flood",
                                               os.path.join(self.dir, "flood")]) +
              " >/dev/null 2>&1 &")
        try:
            c.wait_for(lambda: os.path.exists(flood + ".flooding"), 60, "the user's flood")
            self.assertEqual(asked("fd"), home_id)
        finally:
            for go in (flood + ".go", secret + ".go"):
                with open(go, "w"):
                    pass
        c.wait_for(lambda: read(os.path.join(root_dir, "status")), 60, "the root job to end")
        self.assertEqual(read(os.path.join(root_dir, "status")).strip(), "0",
                         read(os.path.join(root_dir, "err")))

    def test_posix_locks_at_home_keep_their_semantics(self):
        """The lock script of the homefs conformance test, run at home by a plain process
        and by a job (whose shim takes its POSIX locks as OFD locks of its own
        descriptions), gives the same results: per process, dropped by any close of the
        file or the process's end, ranges, read locks sharing, waits and interrupted
        waits, OFD and flock beside them, and F_GETLK naming the holding process (the home's
        file service finds a job's lock by the description that holds it)."""
        c = self.c
        here = os.path.dirname(os.path.abspath(__file__))
        with open(os.path.join(here, "homefs_lock_ops.py")) as f:
            script = f.read()
        self.workdir("hlm4", (("lock_ops.py", script),))
        for sub in ("plain", "job"):
            os.makedirs(os.path.join(self.work, sub))
            entry = __import__("pwd").getpwnam(self.user)
            os.chown(os.path.join(self.work, sub), entry.pw_uid, entry.pw_gid)
        plain = c.run("node1", "runuser", "-u", self.user, "--", "python3",
                      os.path.join(self.dir, "lock_ops.py"), os.path.join(self.dir, "plain"),
                      timeout=120)
        self.start("ops", [], "python3", "lock_ops.py", "job")
        status, err = self.ended("ops", 180)
        self.assertEqual(status, "0", err)
        local = json.loads(plain.stdout)
        job = json.loads(read(os.path.join(self.work, "ops.out")))
        self.assertEqual([name for name, _ in local], [name for name, _ in job])
        for (name, mine), (_, theirs) in zip(local, job):
            self.assertEqual(mine, theirs, f"step {name}")

if __name__ == "__main__":
    unittest.main()
