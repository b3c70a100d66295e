"""The script of lock operations the homefs conformance test runs twice: on a node's own
tree and through homefs (and test_home_lock_moves as a job at home, whose shim takes
POSIX locks its own way). POSIX record locks (per process, dropped by any close of the
file, fclose's inside libc too, close_range's and closefrom's, kept across execve unless it closes one), OFD locks (per open file), flock, F_GETLK, waits and interrupted waits. Prints one
JSON list of [step, result] pairs; a result is the value observed or the errno name.

  python3 homefs_lock_ops.py ROOT
"""

import ctypes
import errno
import fcntl
import json
import os
import signal
import struct
import sys
import threading
import time

ROOT = sys.argv[1]
results = []
F_OFD_GETLK, F_OFD_SETLK, F_OFD_SETLKW = 36, 37, 38
FLOCK = "hhqqi4x"  # struct flock on x86_64: type, whence, start, len, pid


def step(name, fn):
    try:
        value = fn()
    except OSError as e:
        value = "E:" + errno.errorcode.get(e.errno, str(e.errno))
    results.append([name, value])
    if os.environ.get("LOCK_OPS_TRACE"): print(name, value, file=sys.stderr, flush=True)


def lk(fd, cmd, kind, start=0, length=0):
    out = fcntl.fcntl(fd, cmd, struct.pack(FLOCK, kind, os.SEEK_SET, start, length, 0))
    t, _, s, n, pid = struct.unpack(FLOCK, out)
    return t, s, n, pid


def getlk(fd, kind, start=0, length=0, cmd=fcntl.F_GETLK):
    t, s, n, pid = lk(fd, cmd, kind, start, length)
    return [t, s, n, pid]


def opened(name="f", flags=os.O_RDWR):
    return os.open(os.path.join(ROOT, name), flags)


def bounded(fn, seconds=10):
    """Runs a call that may wait, failing with ETIMEDOUT after `seconds`."""
    def ring(signum, frame):
        raise OSError(errno.ETIMEDOUT, "timed out")
    old = signal.signal(signal.SIGALRM, ring)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        return fn()
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


class Child:
    """A process that runs `fn` (which may take locks), reports, then waits for a word."""

    def __init__(self, fn):
        self.r, w = os.pipe()
        self.go_r, self.go_w = os.pipe()
        self.pid = os.fork()
        if self.pid == 0:
            os.close(self.r)
            try:
                value = fn()
            except OSError as e:
                value = "E:" + errno.errorcode.get(e.errno, str(e.errno))
            os.write(w, (json.dumps(value) + "\n").encode())
            os.read(self.go_r, 1)  # until told
            os._exit(0)
        os.close(w)
        os.close(self.go_r)
        self.value = json.loads(os.read(self.r, 4096).decode())

    def go(self):
        os.write(self.go_w, b"g")  # a byte, not a close: other children share the pipe

    def end(self):
        self.go()
        os.waitpid(self.pid, 0)
        os.close(self.r)
        os.close(self.go_w)


with open(os.path.join(ROOT, "f"), "wb") as f:
    f.write(b"x" * 100)
with open(os.path.join(ROOT, "g"), "wb") as f:
    f.write(b"y" * 100)
me = os.getpid()

# POSIX record locks belong to the process: a second descriptor of it shares them.
a, b = opened(), opened()
step("posix lock", lambda: fcntl.lockf(a, fcntl.LOCK_EX) or "ok")
step("posix same process other fd", lambda: fcntl.lockf(b, fcntl.LOCK_EX | fcntl.LOCK_NB) or "ok")
child = Child(lambda: getlk(opened(), fcntl.F_WRLCK))
step("posix getlk from another process", lambda: child.value[:3] + [child.value[3] == me])
child.end()
child = Child(lambda: fcntl.lockf(opened(), fcntl.LOCK_EX | fcntl.LOCK_NB) or "got")
step("posix conflict", lambda: child.value)
child.end()
# Closing any descriptor of the file drops the process's locks.
os.close(b)
child = Child(lambda: fcntl.lockf(opened(), fcntl.LOCK_EX | fcntl.LOCK_NB) or "got")
step("posix close releases", lambda: child.value)
child.end()
os.close(a)

# A close inside libc (fclose's) drops them too.
libc = ctypes.CDLL(None, use_errno=True)
libc.fdopen.restype = ctypes.c_void_p
libc.fdopen.argtypes = [ctypes.c_int, ctypes.c_char_p]
libc.fclose.argtypes = [ctypes.c_void_p]
a, b = opened(), opened()
step("posix lock before fclose", lambda: fcntl.lockf(a, fcntl.LOCK_EX) or "ok")
stream = libc.fdopen(b, b"r+")
step("fclose", lambda: libc.fclose(stream))
child = Child(lambda: fcntl.lockf(opened(), fcntl.LOCK_EX | fcntl.LOCK_NB) or "got")
step("posix fclose releases", lambda: child.value)
child.end()
os.close(a)

# So do close_range and closefrom when they close a descriptor of the file; one that
# closes only others, or only marks them close-on-exec, leaves the locks held.
libc.close_range.argtypes = [ctypes.c_uint, ctypes.c_uint, ctypes.c_int]
CLOSE_RANGE_CLOEXEC = 4
a, b = opened(), opened()
step("posix lock before close_range", lambda: fcntl.lockf(a, fcntl.LOCK_EX) or "ok")
step("close_range cloexec", lambda: libc.close_range(b, b, CLOSE_RANGE_CLOEXEC))
child = Child(lambda: fcntl.lockf(opened(), fcntl.LOCK_EX | fcntl.LOCK_NB) or "got")
step("posix close_range cloexec keeps", lambda: child.value)
child.end()
step("close_range", lambda: libc.close_range(b, b, 0))
child = Child(lambda: fcntl.lockf(opened(), fcntl.LOCK_EX | fcntl.LOCK_NB) or "got")
step("posix close_range releases", lambda: child.value)
child.end()
os.close(a)


def lock_then_closefrom(closes_it):
    """In a process of its own: locks `f` through a descriptor at 650, then closes every
    descriptor from 600 (the lock's own) or from 660 (not the file's)."""
    fd = os.dup2(opened(), 650)
    fcntl.lockf(fd, fcntl.LOCK_EX)
    libc.closefrom(600 if closes_it else 660)
    return "closed"


for closes_it in (True, False):
    holder = Child(lambda: lock_then_closefrom(closes_it))
    child = Child(lambda: fcntl.lockf(opened(), fcntl.LOCK_EX | fcntl.LOCK_NB) or "got")
    step(f"posix closefrom {'of the file releases' if closes_it else 'of others keeps'}",
         lambda: [holder.value, child.value])
    child.end()
    holder.end()

# execve keeps the process's POSIX locks: the new image (this one, run with an fd of a
# locked file, a pipe to report on and one to be told on) holds them, takes more as their
# owner ("m"), and its close drops them ("c"); "q" ends it.
IMAGE = r"""
import errno, fcntl, json, os, sys
fd, report, told = (int(a) for a in sys.argv[1:4])
def say(value):
    os.write(report, (json.dumps(value) + "\n").encode())
say("ready")
while True:
    word = os.read(told, 1)
    if word in (b"q", b""):
        os._exit(0)
    try:
        if word == b"m":
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 10, 10)
            say("ok")
        elif word == b"c":
            os.close(fd)
            say("closed")
    except OSError as e:
        say("E:" + errno.errorcode.get(e.errno, str(e.errno)))
"""


class Execed:
    """A child that locks bytes 0-9 of `f` through a descriptor it keeps across execve
    (`keep`) or through a close-on-exec one (and keeps another), then runs IMAGE."""

    def __init__(self, keep):
        r, self.report = os.pipe()
        self.told, w = os.pipe()
        self.pid = os.fork()
        if self.pid == 0:
            locked = opened()  # close-on-exec unless kept
            fcntl.lockf(locked, fcntl.LOCK_EX, 10, 0)
            fd = locked if keep else opened()
            for inherited in (fd, self.report, self.told):
                os.set_inheritable(inherited, True)
            os.execv(sys.executable, [sys.executable, "-c", IMAGE, str(fd), str(self.report),
                                      str(self.told)])
        os.close(self.report)
        os.close(self.told)
        self.r, self.w = os.fdopen(r), w
        self.ready = json.loads(self.r.readline())

    def ask(self, word):
        os.write(self.w, word)
        return json.loads(self.r.readline())

    def end(self):
        os.write(self.w, b"q")
        os.waitpid(self.pid, 0)
        self.r.close()
        os.close(self.w)


def try_lock(start, length):
    child = Child(lambda: fcntl.lockf(opened(), fcntl.LOCK_EX | fcntl.LOCK_NB, length, start)
                  or "got")
    child.end()
    return child.value


execed = Execed(keep=True)
step("exec keeps the lock", lambda: [execed.ready, try_lock(0, 10)])
fd = opened()
step("getlk names the new image", lambda: getlk(fd, fcntl.F_WRLCK, 0, 10)[:3] +
     [getlk(fd, fcntl.F_WRLCK, 0, 10)[3] == execed.pid])
os.close(fd)
step("new image locks more as the owner", lambda: [execed.ask(b"m"), try_lock(10, 10)])
step("new image's close releases", lambda: [execed.ask(b"c"), try_lock(0, 20)])
execed.end()
execed = Execed(keep=False)
step("exec closing a descriptor releases", lambda: [execed.ready, try_lock(0, 10)])
execed.end()

# Ranges: a lock of bytes 10-19 of another process, seen and not seen.
holder = Child(lambda: fcntl.lockf(opened(), fcntl.LOCK_EX, 10, 10) or "held")
fd = opened()
step("range held", lambda: holder.value)
step("getlk overlapping", lambda: getlk(fd, fcntl.F_WRLCK, 0, 100)[:3] +
     [getlk(fd, fcntl.F_WRLCK, 0, 100)[3] == holder.pid])
step("getlk beside", lambda: getlk(fd, fcntl.F_WRLCK, 50, 10)[0] == fcntl.F_UNLCK)
step("lock beside", lambda: fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 10, 20) or "ok")
step("lock overlapping", lambda: fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 5, 10) or "ok")
holder.end()
step("free after holder exit", lambda: fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 5, 10)
     or "ok")
os.close(fd)

# Read locks share; a write lock waits for them.
readers = [Child(lambda: fcntl.lockf(opened(flags=os.O_RDONLY), fcntl.LOCK_SH) or "shared")
           for _ in range(2)]
fd = opened()
step("read locks share", lambda: [r.value for r in readers])
step("getlk read vs read", lambda: getlk(fd, fcntl.F_RDLCK)[0] == fcntl.F_UNLCK)
step("getlk write vs read", lambda: getlk(fd, fcntl.F_WRLCK)[0] == fcntl.F_RDLCK)
step("write lock refused", lambda: fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB) or "ok")
for r in readers:
    r.end()
os.close(fd)

# F_SETLKW waits for the holder, then has the lock.
holder = Child(lambda: fcntl.lockf(opened(), fcntl.LOCK_EX) or "held")
fd = opened()


def wait_for_holder():
    start = time.monotonic()
    # The holder exits (which drops its lock) 0.3 s into the wait.
    threading.Timer(0.3, holder.go).start()
    fcntl.lockf(fd, fcntl.LOCK_EX)
    os.waitpid(holder.pid, 0)
    return ["got", time.monotonic() - start >= 0.25]


step("setlkw waits then gets", wait_for_holder)
os.close(holder.r)
os.close(holder.go_w)
os.close(fd)

# An interrupted F_SETLKW fails (the signal handler's exception) and holds nothing.
holder = Child(lambda: fcntl.lockf(opened(), fcntl.LOCK_EX) or "held")
fd = opened()


class Alarm(Exception):
    pass


def interrupted_wait():
    def ring(signum, frame):
        raise Alarm()
    old = signal.signal(signal.SIGALRM, ring)
    signal.setitimer(signal.ITIMER_REAL, 0.5)
    start = time.monotonic()
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX)
        return "got it?"
    except Alarm:
        return ["interrupted", time.monotonic() - start < 5]
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


step("setlkw interrupted", interrupted_wait)
step("still held after interrupt", lambda: fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB) or "ok")
holder.end()
step("free after interrupt", lambda: fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB) or "ok")
os.close(fd)

# OFD locks belong to the open file: two opens of one process exclude each other.
a, b = opened("g"), opened("g")
step("ofd lock", lambda: lk(a, F_OFD_SETLK, fcntl.F_WRLCK) and "ok")
step("ofd other open", lambda: lk(b, F_OFD_SETLK, fcntl.F_WRLCK) and "ok")
step("ofd getlk", lambda: getlk(b, fcntl.F_WRLCK, cmd=F_OFD_GETLK))
step("posix vs ofd", lambda: fcntl.lockf(b, fcntl.LOCK_EX | fcntl.LOCK_NB) or "ok")
step("ofd unlock", lambda: lk(a, F_OFD_SETLK, fcntl.F_UNLCK) and
     lk(b, F_OFD_SETLK, fcntl.F_WRLCK) and "ok")
# The open file's last close drops its OFD locks. Through homefs that happens when the
# file's release reaches the home, which the kernel sends just after close returns: a
# waiter gets the lock then (so the step waits, bounded).
os.close(b)
step("ofd close releases", lambda: bounded(lambda: lk(a, F_OFD_SETLKW, fcntl.F_WRLCK)) and "ok")
os.close(a)

# flock: per open file, independent of record locks.
a, b, c = opened(), opened(), opened()
step("flock", lambda: fcntl.flock(a, fcntl.LOCK_EX) or "ok")
step("flock other open", lambda: fcntl.flock(b, fcntl.LOCK_EX | fcntl.LOCK_NB) or "ok")
step("flock shared refused", lambda: fcntl.flock(b, fcntl.LOCK_SH | fcntl.LOCK_NB) or "ok")
step("flock vs posix", lambda: fcntl.lockf(c, fcntl.LOCK_EX | fcntl.LOCK_NB) or "ok")
step("flock downgrade", lambda: fcntl.flock(a, fcntl.LOCK_SH) or
     fcntl.flock(b, fcntl.LOCK_SH | fcntl.LOCK_NB) or "shared")
step("flock upgrade refused", lambda: fcntl.flock(b, fcntl.LOCK_EX | fcntl.LOCK_NB) or "ok")
os.close(a)
step("flock close releases", lambda: bounded(lambda: fcntl.flock(b, fcntl.LOCK_EX)) or "ok")
os.close(b)
os.close(c)
step("cleanup", lambda: [os.unlink(os.path.join(ROOT, n)) for n in ("f", "g")] and
     sorted(os.listdir(ROOT)))
print(json.dumps(results))
