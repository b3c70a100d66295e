#!/usr/bin/python3
"""homefs answers a write once it is on its way to the home (write-behind, as NFS and
sshfs do). What a program must still see, as an ordinary user's jobs (a user made here):
a write the home refuses (its disk is full) is reported by a later write or the close,
never lost; fsync and close wait until the writes are at the home; and a job whose
writes have not reached its home does not move: the drain that a move asks for after
the job's freeze answers once they are there, and says ETIMEDOUT while the homefs
connection to the home is cut (the move then fails, and the job runs on where it was).
Every move of a guest in the other tests passes through it.

An unlink from a directory whose state homefs knows (this node changed it last, and no
notice of another's change came since) goes behind as well: it returns before the home
has done it, a listing after it waits for it; one the home refuses after all brings the
name back and is reported by the directory's next fsync, once.

The home hands a big sequential stream of writes to its disk as it comes, chunk by chunk,
rather than leaving it all dirty for the writer's fsync."""

import ctypes
import errno
import hashlib
import json
import os
import select
import shutil
import struct
import subprocess
import time
import unittest

import harness
from test_cutlink import Cut

WAIT_S = 60
LIBC = ctypes.CDLL(None, use_errno=True)
SYS_CACHESTAT = 451  # the same number on every architecture

# Writes 2 MiB in 64 KiB blocks to a file on a 1 MiB file system, then closes it: prints
# which call failed first and with which errno (the local kernel's answer is the same).
FILL = r"""
import errno, json, os, sys
path = sys.argv[1]
fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
failed = None
for i in range(32):
    try:
        os.write(fd, b"x" * 65536)
    except OSError as e:
        failed = ["write", errno.errorcode[e.errno]]
        break
try:
    os.close(fd)
except OSError as e:
    failed = failed or ["close", errno.errorcode[e.errno]]
# What fits is written whole: 512 KiB, fsync'd and closed without error, and read back.
os.unlink(path)
fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
os.write(fd, b"y" * (512 << 10))
os.fsync(fd)
os.close(fd)
with open(path, "rb") as f:
    back = f.read()
print(json.dumps({"failed": failed, "fits": back == b"y" * (512 << 10)}))
"""

# Writes a file 1 MiB at a time through one descriptor, and after each of those writes
# 4 KiB over it through the same descriptor or through another opened O_DSYNC (sent in
# step, not behind), 48 times; prints the SHA-256 of what the file must hold, and of what
# it reads back.
ORDER = r"""
import hashlib, os, sys
path = sys.argv[1]
fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
os.ftruncate(fd, 48 << 20)
in_step = os.open(path, os.O_WRONLY | os.O_DSYNC)
expect = bytearray(48 << 20)
bigs = [bytes([65 + i]) * (1 << 20) for i in range(26)]
for i in range(48):
    at, big = i << 20, bigs[i % 26]
    small = f"{i:04d}".encode() * 1024
    over = at + (i * 7 * 4096 + 512) % ((1 << 20) - 4096)
    os.pwrite(fd, big, at)  # the next write follows at once
    os.pwrite(in_step if i % 2 else fd, small, over)
    expect[at:at + (1 << 20)] = big
    expect[over:over + 4096] = small
os.close(in_step)
os.close(fd)
with open(path, "rb") as f:
    back = f.read()
print(hashlib.sha256(expect).hexdigest(), hashlib.sha256(back).hexdigest())
"""

# A writer driven line by line on its standard input: "open PATH", "write TEXT",
# "close", "mkdir PATH", "touch PATH", "unlink PATH", "rmdir PATH", "list DIR",
# "exists PATH", "fsyncdir DIR", "hold DIR" (keeps it open); it answers
# "ok SECONDS [WHAT]" (how long the call took; what a list or exists found) or
# "err ERRNO-NAME".
WRITER = r"""
import errno, os, sys, time
fd = None
held = []
for line in sys.stdin:
    verb, _, arg = line.rstrip("\n").partition(" ")
    started = time.monotonic()
    found = ""
    try:
        if verb == "open":
            fd = os.open(arg, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        elif verb == "write":
            os.write(fd, (arg + "\n").encode())
        elif verb == "close":
            os.close(fd)
        elif verb == "mkdir":
            os.mkdir(arg)
        elif verb == "touch":
            os.close(os.open(arg, os.O_WRONLY | os.O_CREAT, 0o644))
        elif verb == "unlink":
            os.unlink(arg)
        elif verb == "rmdir":
            os.rmdir(arg)
        elif verb == "hold":
            held.append(os.open(arg, os.O_RDONLY | os.O_DIRECTORY))
        elif verb == "list":
            found = ",".join(sorted(os.listdir(arg))) or "-"
        elif verb == "exists":
            found = "yes" if os.path.exists(arg) else "no"
        elif verb == "fsyncdir":
            d = os.open(arg, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(d)
            finally:
                os.close(d)
        print(f"ok {time.monotonic() - started:.3f} {found}".rstrip(), flush=True)
    except OSError as e:
        print(f"err {errno.errorcode[e.errno]}", flush=True)
"""

DRAIN = ("import errno, os\n"
         "try:\n"
         "    os.setxattr('/mosix/home/node1', 'trusted.homeward.drain', b'')\n"
         "    print('ok')\n"
         "except OSError as e:\n"
         "    print(errno.errorcode[e.errno])\n")


def dirty_bytes(path):
    """How much of the file at `path` is dirty in this kernel's page cache and not yet
    on its way to the disk (cachestat(2), Linux 6.5)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        whole = ctypes.create_string_buffer(16)  # struct cachestat_range {0, 0}: all of it
        stat = ctypes.create_string_buffer(40)   # struct cachestat: five counts of pages
        if LIBC.syscall(SYS_CACHESTAT, fd, whole, stat, 0) != 0:
            err = ctypes.get_errno()
            if err == errno.ENOSYS:
                raise unittest.SkipTest("this kernel has no cachestat(2) (Linux 6.5)")
            raise OSError(err, os.strerror(err), path)
    finally:
        os.close(fd)
    _cached, dirty, _writeback, _evicted, _recent = struct.unpack("5Q", stat.raw)
    return dirty * os.sysconf("SC_PAGE_SIZE")


class WriteBehindTest(harness.UserClusterTest):
    user_prefix = "hwwb"
    cluster_nodes = 3

    def as_user(self, *command):
        return ["runuser", "-u", self.user, "--", *command]

    def test_a_full_disk_at_home_is_reported_by_a_write_or_the_close(self):
        c = self.c
        c.run("node1", "mkdir", "-p", "/data/small")
        c.run("node1", "mount", "-t", "tmpfs", "-o", "size=1m,mode=0777", "tmpfs", "/data/small")
        try:
            script = os.path.join(harness.private_dir(), "fill.py")
            with open(script, "w") as f:
                f.write(FILL)
            at_home = json.loads(c.run("node1", *self.as_user(
                "python3", script, "/data/small/at-home")).stdout)
            away = json.loads(c.run("node2", *self.as_user(
                "python3", script, "/mosix/home/node1/data/small/away")).stdout)
            self.assertEqual(at_home["failed"][1], "ENOSPC", at_home)
            # Away, the error may come one write later than at home, or with the close;
            # it comes, and it is the same.
            self.assertIsNotNone(away["failed"], "the full disk was never reported")
            self.assertEqual(away["failed"][1], "ENOSPC", away)
            self.assertTrue(away["fits"], away)
            self.assertEqual(c.run("node1", "stat", "-c", "%s", "/data/small/away").stdout,
                             f"{512 << 10}\n")
        finally:
            c.run("node1", "umount", "/data/small", check=False)

    def test_writes_reach_the_home_in_the_order_they_were_made(self):
        # A big write behind is sent by a thread of its own; a small one after it, or one
        # in step through an O_DSYNC descriptor, must not overtake it.
        c = self.c
        work = harness.user_work_dir(c, self.user, "ordered")
        script = os.path.join(harness.private_dir(), "order.py")
        with open(script, "w") as f:
            f.write(ORDER)
        expect, back = c.run("node2", *self.as_user(
            "python3", script, "/mosix/home/node1/data/ordered/f"), timeout=WAIT_S).stdout.split()
        self.assertEqual(back, expect, "node2 read back another file than it wrote")
        with open(os.path.join(work, "f"), "rb") as f:
            at_home = hashlib.sha256(f.read()).hexdigest()
        self.assertEqual(at_home, expect, "the home's file is not what node2 wrote")

    def test_a_big_stream_is_on_its_way_to_the_home_disk_before_any_sync(self):
        # The home hands each 8 MiB a writer sends at a stretch to its disk at once
        # (StreamWriteback): once 64 MiB written from node2 are closed, without a sync,
        # at most the last stretch of the file is still dirty in the home's memory. Left
        # to the kernel's flusher, all of it would be, for half a minute.
        c = self.c
        work = harness.user_work_dir(c, self.user, "stream")
        kind = subprocess.run(["stat", "-f", "-c", "%T", work], capture_output=True, text=True,
                              check=True).stdout.strip()
        if kind == "tmpfs":
            self.skipTest("the home's files are on tmpfs, which writes nothing back")
        c.run("node2", *self.as_user("dd", "if=/dev/zero", "of=/mosix/home/node1/data/stream/big",
                                     "bs=1M", "count=64", "status=none"), timeout=WAIT_S)
        at_home = os.path.join(work, "big")
        self.assertEqual(os.stat(at_home).st_size, 64 << 20)
        dirty = dirty_bytes(at_home)
        self.assertLessEqual(dirty, 8 << 20, f"{dirty >> 20} MiB of 64 still dirty at the home")

    def homefs_connection(self, node):
        """The ports of `node`'s homefs connection to node1's file service."""
        me, home = self.c.node(node)["address"], self.c.node("node1")["address"]
        listing = subprocess.run(["ss", "-tnpH", "state", "established"], capture_output=True,
                                 text=True, check=True).stdout
        for line in listing.splitlines():
            fields = line.split()
            local, peer = fields[2], fields[3]
            if '"mosmount"' in line and local.startswith(me + ":") and \
                    peer.startswith(home + ":"):
                return local.rsplit(":", 1)[1], peer.rsplit(":", 1)[1]
        return None

    def start_writer(self, node):
        script = os.path.join(harness.private_dir(), "writer.py")
        with open(script, "w") as f:
            f.write(WRITER)
        argv, env = harness._loopcluster.exec_args(
            self.c.info, harness._loopcluster.node_of(self.c.info, node),
            self.as_user("python3", script), self.c.env())
        writer = subprocess.Popen(argv, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  text=True)

        def stop():
            if writer.poll() is None:
                writer.kill()
            writer.wait()
            writer.stdin.close()
            writer.stdout.close()
        self.addCleanup(stop)

        def ask(line, timeout=WAIT_S):
            writer.stdin.write(line + "\n")
            writer.stdin.flush()
            ready, _, _ = select.select([writer.stdout], [], [], timeout)
            if not ready:
                return ["no answer", f"in {timeout} s"]
            return writer.stdout.readline().split()
        return ask

    def writer_in(self, name, *lines):
        """An ordinary user's writer on node2, after it has run `lines`, each formatted with
        d: the directory `name`/d of the user's at node1, seen from node2. Returns the
        user's work directory `name` at the home, the writer, and d."""
        work = harness.user_work_dir(self.c, self.user, name)
        ask = self.start_writer("node2")
        d = f"/mosix/home/node1/data/{name}/d"
        for line in lines:
            line = line.format(d=d)
            self.assertEqual(ask(line)[0], "ok", line)
        return work, ask, d

    def drain(self, node, *user):
        return self.c.run(node, *user, "python3", "-c", DRAIN, timeout=WAIT_S).stdout.strip()

    def test_the_drain_a_move_waits_for_answers_once_the_writes_are_at_home(self):
        c = self.c
        lines = os.path.join(harness.user_work_dir(c, self.user, "drained"), "lines")
        ask = self.start_writer("node2")
        self.assertEqual(ask("open /mosix/home/node1/data/drained/lines")[0], "ok")
        self.assertEqual(ask("write before")[0], "ok")
        self.assertEqual(self.drain("node2"), "ok")
        self.assertEqual(harness.read_text(lines), "before\n")
        # Only the user's may ask: trusted.* is root's.
        self.assertEqual(self.drain("node2", *self.as_user()), "EPERM")

        ports = self.homefs_connection("node2")
        self.assertIsNotNone(ports, "no homefs connection from node2 to node1")
        me_addr, home_addr = c.node("node2")["address"], c.node("node1")["address"]
        # Only that connection is cut: the home hears nothing of node2's homefs.
        cut = Cut(me_addr, home_addr)
        cut.rules = [["-p", "tcp", "-s", me_addr, "--sport", ports[0], "-d", home_addr,
                      "--dport", ports[1]],
                     ["-p", "tcp", "-s", home_addr, "--sport", ports[1], "-d", me_addr,
                      "--dport", ports[0]]]
        try:
            cut.cut()
            # The write returns at once: it is behind, on its way.
            answer = ask("write during")
            self.assertEqual(answer[0], "ok", answer)
            self.assertLess(float(answer[1]), 5.0, answer)
            self.assertEqual(harness.read_text(lines), "before\n")
            # A move would wait for it: the home is silent, so the drain says so.
            started = time.monotonic()
            self.assertEqual(self.drain("node2"), "ETIMEDOUT")
            self.assertGreaterEqual(time.monotonic() - started, 1.5)
        finally:
            cut.restore()
        # Once the link is back, the write reaches home and the drain answers.
        c.wait_for(lambda: self.drain("node2") == "ok", WAIT_S, "the drain to answer")
        self.assertEqual(harness.read_text(lines), "before\nduring\n")
        self.assertEqual(ask("close")[0], "ok")

    def test_an_unlink_returns_before_the_home_has_removed_the_file(self):
        c = self.c
        work, ask, d = self.writer_in("removed", "mkdir {d}", "touch {d}/a", "touch {d}/b")
        with harness.stopped(c.node("node1")["pid"]):
            # The home is stopped: only an unlink that does not wait for it returns.
            answer = ask(f"unlink {d}/a", timeout=20)
            self.assertEqual(answer[0], "ok", answer)
            self.assertTrue(os.path.exists(os.path.join(work, "d", "a")))
        # What node2 asks next waits for it: the listing and the home agree.
        listed = ask(f"list {d}")
        self.assertEqual((listed[0], listed[-1]), ("ok", "b"), listed)
        self.assertEqual(sorted(os.listdir(os.path.join(work, "d"))), ["b"])

    def test_a_directory_emptied_here_is_removed_before_the_home_has_removed_it(self):
        c = self.c
        work, ask, d = self.writer_in("emptied", "mkdir {d}", "mkdir {d}/sub", "touch {d}/sub/x",
                                      "unlink {d}/sub/x")
        with harness.stopped(c.node("node1")["pid"]):
            # Known empty here (made here, its one name removed here): the rmdir does not
            # wait for the stopped home.
            answer = ask(f"rmdir {d}/sub", timeout=20)
            self.assertEqual(answer[0], "ok", answer)
            self.assertTrue(os.path.isdir(os.path.join(work, "d", "sub")))
        listed = ask(f"list {d}")
        self.assertEqual(listed, ["ok", listed[1], "-"], listed)
        self.assertEqual(os.listdir(os.path.join(work, "d")), [])

    def test_a_directory_another_filled_is_not_removed(self):
        c = self.c
        work, ask, d = self.writer_in("filled", "mkdir {d}", "mkdir {d}/sub")
        # Someone at the home puts a file in it; node2 hears of it (the home's notice).
        with open(os.path.join(work, "d", "sub", "theirs"), "w") as f:
            f.write("kept\n")
        c.wait_for(lambda: ask(f"exists {d}/sub/theirs")[-1] == "yes", WAIT_S,
                   "node2 to see the home's new file")
        self.assertEqual(ask(f"rmdir {d}/sub"), ["err", "ENOTEMPTY"])
        self.assertEqual(harness.read_text(os.path.join(work, "d", "sub", "theirs")), "kept\n")

    def test_a_directory_the_home_refuses_to_remove_comes_back_usable(self):
        if shutil.which("chattr") is None:
            self.skipTest("no chattr")
        c = self.c
        work, ask, d = self.writer_in("unremoved", "mkdir {d}", "mkdir {d}/sub", "hold {d}/sub")
        sub = os.path.join(work, "d", "sub")
        with harness.stopped(c.node("node1")["pid"]):
            # Immutable at the home, which is stopped: node2 hears nothing of it before the
            # rmdir, which goes behind, and the home refuses it once it runs again.
            subprocess.run(["chattr", "+i", sub], check=True)
            self.addCleanup(subprocess.run, ["chattr", "-i", sub], check=False)
            answer = ask(f"rmdir {d}/sub", timeout=20)
            self.assertEqual(answer[0], "ok", answer)
        c.wait_for(lambda: ask(f"exists {d}/sub")[-1] == "yes", WAIT_S,
                   "the refused directory to come back on node2")
        self.assertTrue(os.path.isdir(sub))
        self.assertEqual(ask(f"fsyncdir {d}"), ["err", "EPERM"])
        # Held open here all along, so its kernel keeps it as removed: found again, the name
        # leads to a directory one can make files in, not to the removed one (ENOENT).
        subprocess.run(["chattr", "-i", sub], check=True)
        self.assertEqual(ask(f"touch {d}/sub/new")[0], "ok")
        listed = ask(f"list {d}/sub")
        self.assertEqual(listed, ["ok", listed[1], "new"], listed)
        self.assertEqual(os.listdir(sub), ["new"])

    def test_a_removal_the_home_refuses_comes_back_and_the_directory_fsync_says_so(self):
        if shutil.which("chattr") is None:
            self.skipTest("no chattr")
        c = self.c
        work, ask, d = self.writer_in("refused", "mkdir {d}", "touch {d}/kept")
        # Immutable at the home: no one may remove it there, and node2's kernel cannot know.
        kept = os.path.join(work, "d", "kept")
        subprocess.run(["chattr", "+i", kept], check=True)
        self.addCleanup(subprocess.run, ["chattr", "-i", kept], check=False)
        answer = ask(f"unlink {d}/kept")
        self.assertEqual(answer[0], "ok", answer)  # told before the home refused
        c.wait_for(lambda: ask(f"exists {d}/kept")[-1] == "yes", WAIT_S,
                   "the refused name to come back on node2")
        self.assertTrue(os.path.exists(kept))
        self.assertEqual(ask(f"fsyncdir {d}"), ["err", "EPERM"])
        self.assertEqual(ask(f"fsyncdir {d}")[0], "ok")  # said once
        self.assertIn("the home refused to remove kept", c.log("node2"))


if __name__ == "__main__":
    harness.main()
