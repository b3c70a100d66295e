"""The script of file operations the homefs conformance test runs twice: on a node's own
tree and through homefs. Prints one JSON list of [step, result] pairs; a result is the
value observed or the errno name the step failed with.

  python3 homefs_ops.py ROOT XDEV_DIR
"""

import ctypes
import errno
import fcntl
import hashlib
import json
import os
import stat
import subprocess
import sys

ROOT, XDEV = sys.argv[1], sys.argv[2]
results = []
libc = ctypes.CDLL(None, use_errno=True)
RENAME_NOREPLACE, RENAME_EXCHANGE = 1, 2


def step(name, fn):
    try:
        value = fn()
    except OSError as e:
        value = "E:" + errno.errorcode.get(e.errno, str(e.errno))
    results.append([name, value])


def p(*parts):
    return os.path.join(ROOT, *parts)


def renameat2(old, new, flags):
    if libc.renameat2(-100, old.encode(), -100, new.encode(), flags) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return "ok"


def write(path, data, flags=os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode=0o644, offset=None):
    fd = os.open(path, flags, mode)
    try:
        if offset is None:
            n = os.write(fd, data)
        else:
            n = os.pwrite(fd, data, offset)
        return n
    finally:
        os.close(fd)


def read(path, size=1 << 20, offset=0):
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.pread(fd, size, offset).decode(errors="replace")
    finally:
        os.close(fd)


def as_nobody(*command):
    r = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                        *command], capture_output=True, text=True)
    return [r.returncode, "Permission denied" in r.stderr]


os.umask(0o022)
step("mkdir", lambda: os.mkdir(p("d"), 0o755) or "ok")
step("mkdir again", lambda: os.mkdir(p("d")))
step("create excl", lambda: write(p("d", "f"), b"hello", os.O_WRONLY | os.O_CREAT | os.O_EXCL))
step("create excl again", lambda: write(p("d", "f"), b"x", os.O_WRONLY | os.O_CREAT | os.O_EXCL))
step("read", lambda: read(p("d", "f")))
step("stat", lambda: [os.stat(p("d", "f")).st_size, oct(os.stat(p("d", "f")).st_mode)])
step("chmod", lambda: os.chmod(p("d", "f"), 0o640) or oct(os.stat(p("d", "f")).st_mode))
step("chown", lambda: os.chown(p("d", "f"), 1000, 1001) or
     [os.stat(p("d", "f")).st_uid, os.stat(p("d", "f")).st_gid])
step("truncate", lambda: os.truncate(p("d", "f"), 3) or read(p("d", "f")))
step("extend", lambda: os.truncate(p("d", "f"), 6) or read(p("d", "f")))
step("utime", lambda: os.utime(p("d", "f"), ns=(1_000_000_123, 2_000_000_456)) or
     [os.stat(p("d", "f")).st_atime_ns, os.stat(p("d", "f")).st_mtime_ns])
step("append", lambda: [write(p("d", "a"), b"one"),
                        write(p("d", "a"), b"two", os.O_WRONLY | os.O_APPEND),
                        read(p("d", "a"))])


def appends():
    """O_APPEND as the kernel gives it: each write at the end as it is then (grown by
    another descriptor meanwhile), pwrite too; positional again once fcntl clears the
    flag, appending once fcntl sets it; the position after it; reading back through it."""
    path = p("d", "ap")
    write(path, b"one")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND)
    other = os.open(path, os.O_RDWR)
    try:
        out = [os.write(fd, b"-two"), os.pwrite(other, b"-three", 7), os.write(fd, b"-four"),
               os.pwrite(fd, b"-five", 0), os.lseek(fd, 0, os.SEEK_CUR)]
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_APPEND)
        out += [os.pwrite(fd, b"ONE", 0), read(path)]
        fcntl.fcntl(other, fcntl.F_SETFL, fcntl.fcntl(other, fcntl.F_GETFL) | os.O_APPEND)
        out += [os.write(other, b"-six"), read(path)]
    finally:
        os.close(fd)
        os.close(other)
    rw = os.open(path, os.O_RDWR | os.O_APPEND)
    try:
        out += [os.write(rw, b"-seven"), os.lseek(rw, 0, os.SEEK_SET),
                os.read(rw, 100).decode()]
    finally:
        os.close(rw)
    return out


def append_records():
    """Records of odd sizes up to and past PIPE_BUF, each appended whole by one write."""
    path = p("d", "records")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        for size in (1, 57, 4095, 4096, 4097, 70000):
            os.write(fd, bytes([48 + size % 10]) * size)
    finally:
        os.close(fd)
    data = open(path, "rb").read()
    return [len(data), hashlib.sha256(data).hexdigest()]


def excl_and_rename():
    """O_EXCL over a name another descriptor just created; rename over an open file: the
    open descriptor keeps the old one, a new open gets the new one."""
    path = p("d", "x1")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    os.write(fd, b"old")
    os.close(fd)
    try:
        os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        first = "created twice"
    except FileExistsError:
        first = "EEXIST"
    held = os.open(path, os.O_RDONLY)
    write(p("d", "x1.tmp"), b"new version")
    os.rename(p("d", "x1.tmp"), path)
    try:
        return [first, os.read(held, 100).decode(), read(path)]
    finally:
        os.close(held)
        os.unlink(path)


big = 5 << 30
step("append semantics", appends)
step("append records", append_records)
step("excl and rename", excl_and_rename)
step("sparse write past 4GiB", lambda: write(p("d", "sparse"), b"tail", offset=big))
step("sparse size", lambda: [os.stat(p("d", "sparse")).st_size,
                             os.stat(p("d", "sparse")).st_blocks < 1024])
step("sparse read", lambda: [read(p("d", "sparse"), 4, big), read(p("d", "sparse"), 4, 4096)])
data = os.urandom(3 << 20)
step("large write", lambda: write(p("d", "large"), data))
step("large read", lambda: hashlib.sha256(open(p("d", "large"), "rb").read()).hexdigest()
     == hashlib.sha256(data).hexdigest())
step("fsync", lambda: [os.fsync(fd) for fd in [os.open(p("d", "large"), os.O_RDWR)]] and "ok")
step("symlink", lambda: os.symlink("f", p("d", "s")) or os.readlink(p("d", "s")))
step("symlink exists", lambda: os.symlink("g", p("d", "s")))
step("lstat link", lambda: stat.S_ISLNK(os.lstat(p("d", "s")).st_mode))
step("read through link", lambda: read(p("d", "s")))
step("hard link", lambda: os.link(p("d", "f"), p("d", "h")) or os.stat(p("d", "f")).st_nlink)
step("hard link exists", lambda: os.link(p("d", "f"), p("d", "h")))
step("rename", lambda: os.rename(p("d", "h"), p("d", "h2")) or sorted(os.listdir(p("d"))))
step("rename noreplace", lambda: renameat2(p("d", "a"), p("d", "f"), RENAME_NOREPLACE))
step("rename exchange", lambda: renameat2(p("d", "a"), p("d", "f"), RENAME_EXCHANGE) and
     [read(p("d", "a")), read(p("d", "f"))])
step("rename missing", lambda: os.rename(p("d", "nothing"), p("d", "x")))
step("rename across mounts", lambda: os.rename(p("d", "a"), os.path.join(XDEV, "a")))
step("mkfifo", lambda: os.mkfifo(p("d", "fifo"), 0o600) or
     stat.S_ISFIFO(os.stat(p("d", "fifo")).st_mode))
step("mknod fifo", lambda: os.mknod(p("d", "fifo2"), 0o600 | stat.S_IFIFO) or "ok")
step("setxattr", lambda: os.setxattr(p("d", "f"), "user.color", b"blue") or "ok")
step("getxattr", lambda: os.getxattr(p("d", "f"), "user.color").decode())
step("listxattr", lambda: sorted(os.listxattr(p("d", "f"))))
step("removexattr", lambda: os.removexattr(p("d", "f"), "user.color") or "ok")
step("getxattr missing", lambda: os.getxattr(p("d", "f"), "user.color"))
step("xattr create exists", lambda: os.setxattr(p("d", "f"), "user.k", b"1") or
     os.setxattr(p("d", "f"), "user.k", b"2", os.XATTR_CREATE))
step("access", lambda: [os.access(p("d", "f"), os.R_OK), os.access(p("d", "f"), os.X_OK)])
step("statvfs", lambda: os.statvfs(p("d")).f_namemax)
step("listdir", lambda: sorted(os.listdir(p("d"))))
step("listdir many", lambda: os.mkdir(p("many")) or
     [write(p("many", f"n{i:04}"), b"x") for i in range(600)] and
     sorted(os.listdir(p("many"))) == [f"n{i:04}" for i in range(600)])
step("scandir types", lambda: sorted((e.name, e.is_dir(), e.is_symlink())
                                     for e in os.scandir(p("d"))))
step("open missing", lambda: os.open(p("d", "missing"), os.O_RDONLY))
step("stat missing", lambda: os.stat(p("missing", "x")))
step("open dir for write", lambda: os.open(p("d"), os.O_WRONLY))
step("rmdir not empty", lambda: os.rmdir(p("d")))
step("rmdir file", lambda: os.rmdir(p("d", "f")))
step("unlink dir", lambda: os.unlink(p("d")))
step("unlink", lambda: os.unlink(p("d", "h2")) or os.stat(p("d", "f")).st_nlink)
step("mkdir in file", lambda: os.mkdir(p("d", "f", "x")))
step("long name", lambda: os.mkdir(p("x" * 300)))
# As a user who may not: nobody reads a 0600 root file, writes into a 0755 root dir.
step("secret", lambda: write(p("secret"), b"s", mode=0o600) and os.chmod(p("secret"), 0o600))
step("EACCES read", lambda: as_nobody("cat", p("secret")))
step("EACCES create", lambda: as_nobody("touch", p("d", "by-nobody")))
step("EACCES chmod", lambda: as_nobody("chmod", "777", p("d", "f")))
step("nobody reads public", lambda: as_nobody("cat", p("d", "f")))
os.chmod(p("d"), 0o777)
step("nobody creates in 777", lambda: as_nobody("touch", p("d", "by-nobody")) and
     [os.stat(p("d", "by-nobody")).st_uid, os.stat(p("d", "by-nobody")).st_gid])
step("cleanup", lambda: subprocess.run(["rm", "-rf", p("d"), p("many"), p("secret")],
                                       check=True) and sorted(os.listdir(ROOT)))
print(json.dumps(results))
