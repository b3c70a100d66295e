"""File operations an ordinary user runs, which the homefs conformance test runs twice: on
the home's own tree and through homefs from another node, both as the same unprivileged
user (and as a second one, for the cases that need a non-owner). Prints one JSON list of
[step, result] pairs; a result is the value observed or the errno name the step failed with.

  python3 homefs_user_ops.py ROOT OTHER_UID OTHER_GID

The cases are those where a remote file system most easily differs from the local one:
search permission on names the kernel has cached, FIFOs, writes by a non-owner to a set-id
file, O_DIRECT reads and writes, a symlink's own times, and the permission errors of an
ordinary caller.
"""

import errno
import json
import mmap
import os
import stat
import subprocess
import sys
import threading

ROOT, OTHER_UID, OTHER_GID = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
results = []


def step(name, fn):
    try:
        value = fn()
    except OSError as e:
        value = "E:" + errno.errorcode.get(e.errno, str(e.errno))
    results.append([name, value])


def p(*parts):
    return os.path.join(ROOT, *parts)


def as_other(*command):
    """Runs `command` as the second user; returns [exit status, its first error line's
    reason], the reason without the program's own words."""
    r = subprocess.run(["setpriv", f"--reuid={OTHER_UID}", f"--regid={OTHER_GID}",
                        "--clear-groups", *command], capture_output=True, text=True)
    reason = r.stderr.strip().splitlines()[0].rsplit(": ", 1)[-1] if r.stderr.strip() else ""
    return [r.returncode, reason]


def write(path, data, flags=os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode=0o644):
    fd = os.open(path, flags, mode)
    try:
        return os.write(fd, data)
    finally:
        os.close(fd)


def fifo_round_trip(path):
    """A reader and a writer on one FIFO, both on this node: the bytes go through."""
    got = []
    reader = threading.Thread(target=lambda: got.append(open(path, "rb").read()))
    reader.start()
    with open(path, "wb") as w:
        w.write(b"through the fifo\n")
    reader.join(timeout=30)
    return got[0].decode() if got else "nothing read"


def symlink_times(path):
    os.utime(path, ns=(1_000_000_000_000_000_000, 1_100_000_000_000_000_000),
             follow_symlinks=False)
    st = os.lstat(path)
    target = os.stat(path)
    return [st.st_atime_ns, st.st_mtime_ns, target.st_mtime_ns != st.st_mtime_ns]


def direct_round_trip(path):
    """O_DIRECT writes and reads, with page-aligned buffers as such programs use: what was
    written reads back, and the file holds it once closed."""
    data = os.urandom(3 * mmap.PAGESIZE)
    out, back = mmap.mmap(-1, len(data)), mmap.mmap(-1, len(data))
    out.write(data)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_DIRECT, 0o644)
    try:
        written = os.pwritev(fd, [out], 0)
        read = os.preadv(fd, [back], 0)
    finally:
        os.close(fd)
    with open(path, "rb") as f:
        return [written, read, back[:] == data, f.read() == data]


os.umask(0o022)
step("mkdir", lambda: os.makedirs(p("u", "x"), 0o755) or "ok")
step("create", lambda: write(p("u", "x", "file"), b"inside\n"))
step("stat through x", lambda: os.stat(p("u", "x", "file")).st_size)
# The name is now in the kernel's cache; taking search permission away must still refuse
# a walk through it, as the local kernel does.
step("chmod x 0", lambda: os.chmod(p("u", "x"), 0) or oct(os.stat(p("u", "x")).st_mode))
step("stat without search", lambda: os.stat(p("u", "x", "file")).st_size)
step("open without search", lambda: os.open(p("u", "x", "file"), os.O_RDONLY))
step("chmod x back", lambda: os.chmod(p("u", "x"), 0o755) or "ok")
step("stat with search", lambda: os.stat(p("u", "x", "file")).st_size)

step("mkfifo", lambda: os.mkfifo(p("u", "fifo"), 0o600) or
     stat.S_ISFIFO(os.stat(p("u", "fifo")).st_mode))
step("fifo round trip", lambda: fifo_round_trip(p("u", "fifo")))
step("fifo nonblocking writer without reader",
     lambda: os.open(p("u", "fifo"), os.O_WRONLY | os.O_NONBLOCK))

# A set-id file the owner lets others write: a write by another user succeeds and the
# kernel clears the set-id bits, as it does at home.
step("setid file", lambda: write(p("u", "setid"), b"#!/bin/sh\n") and
     os.chmod(p("u", "setid"), 0o6777) or oct(os.stat(p("u", "setid")).st_mode & 0o7777))
step("non-owner writes setid", lambda: as_other("sh", "-c", f"echo more >> {p('u', 'setid')}"))
step("setid bits after", lambda: oct(os.stat(p("u", "setid")).st_mode & 0o7777))
step("setid size after", lambda: os.stat(p("u", "setid")).st_size)

step("O_DIRECT round trip", lambda: direct_round_trip(p("u", "direct")))

step("symlink", lambda: os.symlink("x/file", p("u", "link")) or os.readlink(p("u", "link")))
step("symlink own times", lambda: symlink_times(p("u", "link")))

# An ordinary caller's errors.
step("private file", lambda: write(p("u", "private"), b"mine\n") and
     os.chmod(p("u", "private"), 0o600) or "ok")
step("other reads private", lambda: as_other("cat", p("u", "private")))
step("other creates in mine", lambda: as_other("touch", p("u", "by-other")))
step("other chmods mine", lambda: as_other("chmod", "777", p("u", "private")))
step("other unlinks mine", lambda: as_other("rm", "-f", p("u", "private")))
step("chown to other", lambda: os.chown(p("u", "private"), OTHER_UID, -1))
step("utime of other's", lambda: as_other("touch", "-d", "@0", p("u", "private")))
# POSIX ACLs: an entry for the other user lets them read what the mode bits alone refuse;
# a directory's default ACL, not the umask, decides a new file's mode.
step("acl grants other", lambda: subprocess.run(
    ["setfacl", "-m", f"u:{OTHER_UID}:r", p("u", "private")], check=True) and
    oct(os.stat(p("u", "private")).st_mode & 0o777))
step("other reads by acl", lambda: as_other("cat", p("u", "private")))
step("acl taken back", lambda: subprocess.run(
    ["setfacl", "-b", p("u", "private")], check=True) and "ok")
step("other refused again", lambda: as_other("cat", p("u", "private")))
step("default acl dir", lambda: os.mkdir(p("u", "acl")) or subprocess.run(
    ["setfacl", "-d", "-m", "u::rwx,g::rwx,o::rwx", p("u", "acl")], check=True) and "ok")
step("umask without default acl", lambda: os.umask(0o077) is None or
     write(p("u", "masked"), b"x", mode=0o666) and oct(os.stat(p("u", "masked")).st_mode & 0o777))
step("default acl over umask", lambda: write(p("u", "acl", "f"), b"x", mode=0o666) and
     oct(os.stat(p("u", "acl", "f")).st_mode & 0o777))
step("mkdir under default acl", lambda: os.mkdir(p("u", "acl", "d"), 0o777) or
     oct(os.stat(p("u", "acl", "d")).st_mode & 0o777))
step("umask back", lambda: os.umask(0o022) and "ok")
step("sticky dir", lambda: os.chmod(p("u"), 0o1777) or "ok")
step("other creates in sticky", lambda: as_other("touch", p("u", "by-other")))
step("I remove other's in sticky", lambda: os.unlink(p("u", "by-other")))
step("cleanup", lambda: subprocess.run(["rm", "-rf", p("u")], check=True) and
     sorted(os.listdir(ROOT)))
print(json.dumps(results))
