#!/usr/bin/python3
"""homefs takes the kernel's FUSE requests through io_uring where the kernel allows it (the
fuse module's enable_uring): one lane (a thread, its ring and one request's buffers) per
CPU to start with, pinned to it, and another whenever all of a CPU's lanes hold a call.

- An ordinary user's files on node2, from node1's tree: 200 files made, written, read
  back, listed and removed, all correct, and node2's mosmount's rings took the requests
  (their completions, counted in /proc/PID/fdinfo, grow by more than the calls made).
- Three of the user's processes on CPU 0 wait in F_SETLKW for a lock a process at the
  home holds (each wait holds a lane of CPU 0 until it is answered): a fourth process on
  CPU 0 still reads, lists and stats at once, since lanes are added as they are taken;
  once the lock is let go, the three get it in turn.
- Lanes are pinned, each to its CPU, and the threads homefs starts from them are not (the
  connection to a home and its timer, the flusher of requests sent behind, the sending
  thread of big writes): used from every CPU, no thread but a lane is pinned. (A thread
  inherits its creator's CPUs: a connection's receiving thread pinned with the lane that
  connected waited behind any job on that CPU, and halved the other CPU's random reads.)
- The kernel is told that the home drops setuid, setgid and capabilities on write
  (FUSE_HANDLE_KILLPRIV_V2, which libfuse 3.14 does not know), through io_uring and
  through /dev/fuse alike: 2,000 small writes of the user's to a file are about 2,000
  requests to homefs (completions on the rings; read(2)s of /dev/fuse), not a capability
  query before each as well, and a setuid file the user writes or truncates through
  homefs loses its setuid bit at the home, as it would locally.
- With `[files] io_uring = false`, homefs reads /dev/fuse as before: no ring, the same
  files.
- Where homefs cannot make a lane (the fault point no-io-uring-lane, as when a ring or its
  memory is refused), it does not ask the kernel for io_uring, which would then hold
  every request until each CPU had one: the files work through /dev/fuse."""

import os
import re
import signal
import subprocess
import unittest

import harness

ENABLE_URING = "/sys/module/fuse/parameters/enable_uring"

WORK = r"""
import os, sys
d, n = sys.argv[1], int(sys.argv[2])
os.makedirs(d, exist_ok=True)
for i in range(n):
    with open(f"{d}/f{i}", "w") as f:
        f.write(f"file {i}\n" * (i + 1))
for i in range(n):
    with open(f"{d}/f{i}") as f:
        assert f.read() == f"file {i}\n" * (i + 1), i
listed = len(os.listdir(d))
for i in range(n):
    os.unlink(f"{d}/f{i}")
print(listed, len(os.listdir(d)))
"""

# Waits for a write lock on the file, then says so and lets it go.
WAIT_LOCK = r"""
import fcntl, sys
with open(sys.argv[1], "r+") as f:
    print("waiting", flush=True)
    fcntl.lockf(f, fcntl.LOCK_EX)
    print("locked", flush=True)
"""

# Holds a write lock until its input ends.
HOLD_LOCK = r"""
import fcntl, sys
with open(sys.argv[1], "r+") as f:
    fcntl.lockf(f, fcntl.LOCK_EX)
    print("held", flush=True)
    sys.stdin.read()
"""

# Small buffered writes, each a write(2) of its own.
SMALL_WRITES = r"""
import os, sys
path, n = sys.argv[1], int(sys.argv[2])
fd = os.open(path, os.O_WRONLY)
for i in range(n):
    os.write(fd, bytes([i % 251]) * 512)
os.close(fd)
"""

BUSY = r"""
import os, sys, time
d = sys.argv[1]
start = time.monotonic()
with open(f"{d}/other") as f:
    data = f.read()
names = os.listdir(d)
os.stat(f"{d}/other")
print(data.strip(), len(names), f"{time.monotonic() - start:.2f}")
"""


def homefs_pid(c, node):
    found = re.findall(r"\(homefs (\d+)\)", c.log(node))
    if not found:
        raise AssertionError(f"{node}'s log names no homefs process")
    return int(found[-1])


def ring_fds(pid):
    fd_dir = f"/proc/{pid}/fd"
    rings = []
    for fd in os.listdir(fd_dir):
        try:
            if os.readlink(os.path.join(fd_dir, fd)) == "anon_inode:[io_uring]":
                rings.append(fd)
        except FileNotFoundError:  # closed meanwhile
            pass
    return rings


def ring_completions(pid):
    total = 0
    for fd in ring_fds(pid):
        with open(f"/proc/{pid}/fdinfo/{fd}") as f:
            total += int(re.search(r"^CqTail:\s+(\d+)", f.read(), re.M).group(1))
    return total


def dev_fuse_reads(pid):
    """The read(2)s homefs has made: one per request it took from /dev/fuse (its other
    reads are rare; the home's connection is read with recv, which is not counted)."""
    with open(f"/proc/{pid}/io") as f:
        return int(re.search(r"^syscr:\s+(\d+)", f.read(), re.M).group(1))


def cpus_allowed(pid, tid):
    with open(f"/proc/{pid}/task/{tid}/status") as f:
        return re.search(r"^Cpus_allowed_list:\s+(\S+)", f.read(), re.M).group(1)


def thread_cpus(pid, tid):
    """A thread's name and the CPUs it may run on; (None, None) once it has ended."""
    try:
        with open(f"/proc/{pid}/task/{tid}/comm") as f:
            return f.read().strip(), cpus_allowed(pid, tid)
    except (FileNotFoundError, ProcessLookupError):
        return None, None


def require_uring():
    """Skips the class unless this kernel lets FUSE servers use io_uring."""
    try:
        with open(ENABLE_URING) as f:
            allowed = f.read().strip() == "Y"
    except OSError:
        allowed = False
    if not allowed:
        raise unittest.SkipTest(f"this kernel does not let FUSE use io_uring ({ENABLE_URING} "
                                "is not Y; scripts/setup turns it on)")


class UserFiles:
    """What both ways of taking requests test with an ordinary user's files."""

    def wait_for_tree(self, node="node2"):
        c = self.c
        c.wait_for(lambda: c.run(node, "test", "-d", "/mosix/home/node1/data", check=False)
                   .returncode == 0, 30, f"{node} to see node1's files")

    def run_as(self, c, node, *command, cpu):
        return c.run(node, "taskset", "-c", str(cpu), "runuser", "-u", self.user, "--",
                     *command, timeout=60).stdout.split()

    def assert_writes_ask_nothing_else(self, requests_taken):
        """2,000 small writes of the user's to a file that is setuid at the home are about
        2,000 requests to node2's homefs (`requests_taken(pid)`: how many it has taken so
        far), and the home drops the file's setuid bit, on write and on truncate."""
        c = self.c
        work = harness.user_work_dir(c, self.user, "killpriv")
        owner = os.stat(work)
        at_home = os.path.join(work, "setuid")
        with open(at_home, "wb"):
            pass
        os.chown(at_home, owner.st_uid, owner.st_gid)
        os.chmod(at_home, 0o4755)
        small_writes = harness.readable_script("small_writes.py", SMALL_WRITES)
        self.wait_for_tree()
        pid = homefs_pid(c, "node2")
        writes = 2000
        before = requests_taken(pid)
        self.run_as(c, "node2", "python3", small_writes,
                    "/mosix/home/node1/data/killpriv/setuid", str(writes), cpu=0)
        taken = requests_taken(pid) - before
        with open(at_home, "rb") as f:
            self.assertEqual(f.read(), b"".join(bytes([i % 251]) * 512 for i in range(writes)))
        self.assertEqual(os.stat(at_home).st_mode & 0o7777, 0o755)
        # The writes, the open's lookup, open, flush and release; a capability query
        # before each write would make it twice as many.
        self.assertGreaterEqual(taken, writes)
        self.assertLess(taken, 1.3 * writes, f"homefs took {taken} requests for {writes} writes")
        # Set again at the home, the bit goes with the user's truncate through homefs.
        os.chmod(at_home, 0o4755)
        self.run_as(c, "node2", "truncate", "-s", "100",
                    "/mosix/home/node1/data/killpriv/setuid", cpu=0)
        self.assertEqual(os.stat(at_home).st_size, 100)
        self.assertEqual(os.stat(at_home).st_mode & 0o7777, 0o755)


class IoUringTest(UserFiles, harness.UserClusterTest):
    user_prefix = "hwiu"

    @classmethod
    def setUpClass(cls):
        require_uring()
        super().setUpClass()

    def test_requests_go_through_the_rings(self):
        c = self.c
        harness.user_work_dir(c, self.user, "rings")
        work = harness.readable_script("work.py", WORK)
        self.wait_for_tree()
        pid = homefs_pid(c, "node2")
        c.wait_for(lambda: "taking FUSE requests through io_uring" in c.log("node2"), 30,
                   "node2's homefs to take requests through io_uring")
        self.assertGreaterEqual(len(ring_fds(pid)), os.cpu_count())
        before = ring_completions(pid)
        out = c.run("node2", "runuser", "-u", self.user, "--", "python3", work,
                    "/mosix/home/node1/data/rings/d", "200", timeout=180).stdout
        self.assertEqual(out.split(), ["200", "0"])
        # Each file is a lookup, a create, writes, flushes, releases, an open, a read and
        # an unlink at the least.
        taken = ring_completions(pid) - before
        self.assertGreater(taken, 200 * 6, f"the rings took {taken} requests")

    def test_a_waiting_call_does_not_hold_up_the_next(self):
        c = self.c
        work = harness.user_work_dir(c, self.user, "lanes")
        owner = os.stat(work)
        for name, text in (("locked", ""), ("other", "other file\n")):
            with open(os.path.join(work, name), "w") as f:
                f.write(text)
            os.chown(os.path.join(work, name), owner.st_uid, owner.st_gid)
        wait_lock = harness.readable_script("wait_lock.py", WAIT_LOCK)
        hold_lock = harness.readable_script("hold_lock.py", HOLD_LOCK)
        busy = harness.readable_script("busy.py", BUSY)
        self.wait_for_tree()
        pid = homefs_pid(c, "node2")
        remote = "/mosix/home/node1/data/lanes"
        holder = self.start(c, "node1", "python3", hold_lock, "/data/lanes/locked",
                            stdin=subprocess.PIPE)
        waiters = []
        try:
            self.assertEqual(holder.stdout.readline().strip(), "held")
            for _ in range(3):
                waiters.append(self.start(c, "node2", "python3", wait_lock, f"{remote}/locked",
                                          cpu=0))
            # Each waiter is in its F_SETLKW, waiting in the kernel for homefs's answer.
            c.wait_for(lambda: self.waiting_in_fuse(wait_lock) == 3, 60,
                       "three processes waiting for the lock")
            out = self.run_as(c, "node2", "python3", busy, remote, cpu=0)
            self.assertEqual(out[:3], ["other", "file", "2"], out)
            # CPU 0's three lanes held and one more waiting; the other CPUs' one each.
            self.assertGreaterEqual(len(ring_fds(pid)), os.cpu_count() + 3)
            for waiter in waiters:
                self.assertIsNone(waiter.poll(), "a waiter got the lock while it was held")
            holder.stdin.close()
            for waiter in waiters:
                self.assertEqual(waiter.stdout.read().split(), ["waiting", "locked"])
                self.assertEqual(waiter.wait(timeout=60), 0)
            self.assertEqual(holder.wait(timeout=60), 0)
        finally:
            for process in (holder, *waiters):
                if process.poll() is None:
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait()

    def test_threads_a_lane_starts_run_on_any_cpu(self):
        c = self.c
        cpus = sorted(os.sched_getaffinity(0))
        if len(cpus) < 2:
            self.skipTest("one CPU: no thread can be pinned away from another")
        harness.user_work_dir(c, self.user, "unpinned")
        self.wait_for_tree()
        pid = homefs_pid(c, "node2")
        remote = "/mosix/home/node1/data/unpinned"
        # From each CPU: a big write behind (sent by a thread of its own), small appends
        # and an unlink (requests behind, which the flusher sends), a read.
        for cpu in cpus:
            self.run_as(c, "node2", "sh", "-c",
                        f"dd if=/dev/zero of={remote}/big{cpu} bs=1M count=4 status=none && "
                        f"echo {cpu} >> {remote}/small && cat {remote}/small && "
                        f"rm {remote}/big{cpu}", cpu=cpu)
        everywhere = cpus_allowed(pid, pid)
        threads = [(comm, allowed) for comm, allowed in
                   (thread_cpus(pid, tid) for tid in os.listdir(f"/proc/{pid}/task"))
                   if comm is not None]
        # Each CPU's lanes are pinned to it (a lane of a CPU the process may not use, one
        # possible but offline, runs where the process does).
        lanes = [allowed for comm, allowed in threads if comm.startswith("homefs lane")]
        for cpu in cpus:
            self.assertIn(str(cpu), lanes, threads)
        names = {comm for comm, _ in threads}
        self.assertIn("homefs receive", names)
        pinned = [f"{comm} on CPUs {allowed}" for comm, allowed in threads
                  if not comm.startswith("homefs lane") and allowed != everywhere]
        self.assertEqual(pinned, [], f"the process runs on CPUs {everywhere}")

    def test_writes_ask_nothing_else_and_the_home_drops_setuid(self):
        self.assert_writes_ask_nothing_else(ring_completions)

    def start(self, c, node, *command, cpu=None, stdin=subprocess.DEVNULL):
        """The user's `command` in `node`, in the background (on `cpu` alone if given)."""
        pinned = ["taskset", "-c", str(cpu)] if cpu is not None else []
        return subprocess.Popen(
            [harness.LOOPCLUSTER, "exec", c.dir, node, "--", *pinned, "runuser", "-u",
             self.user, "--", *command],
            env=c.env(), stdin=stdin, stdout=subprocess.PIPE, text=True,
            start_new_session=True)

    def waiting_in_fuse(self, script):
        """How many of the user's processes running `script` wait for a FUSE answer."""
        waiting = 0
        for pid in subprocess.run(["pgrep", "-u", self.user, "-f", script],
                                  capture_output=True, text=True).stdout.split():
            try:
                with open(f"/proc/{pid}/wchan") as f:
                    waiting += f.read() == "request_wait_answer"
            except OSError:
                pass
        return waiting


class DevFuseTest(UserFiles, harness.UserClusterTest):
    user_prefix = "hwdf"
    cluster_settings = ("files.io_uring=false",)

    def test_no_ring_and_the_same_files(self):
        self.assert_files_through_dev_fuse()
        self.assertNotIn("FUSE over io_uring", self.c.log("node2"))

    def test_writes_ask_nothing_else_and_the_home_drops_setuid(self):
        self.assert_writes_ask_nothing_else(dev_fuse_reads)

    def assert_files_through_dev_fuse(self):
        c = self.c
        harness.user_work_dir(c, self.user, "plain")
        work = harness.readable_script("work.py", WORK)
        self.wait_for_tree()
        out = c.run("node2", "runuser", "-u", self.user, "--", "python3", work,
                    "/mosix/home/node1/data/plain/d", "50", timeout=120).stdout
        self.assertEqual(out.split(), ["50", "0"])
        self.assertEqual(ring_fds(homefs_pid(c, "node2")), [])
        self.assertNotIn("taking FUSE requests through io_uring", c.log("node2"))


class NoLaneTest(DevFuseTest):
    user_prefix = "hwnl"
    cluster_settings = ()
    cluster_faults = "no-io-uring-lane"

    @classmethod
    def setUpClass(cls):
        require_uring()
        super().setUpClass()

    def test_no_ring_and_the_same_files(self):
        self.assert_files_through_dev_fuse()
        self.assertIn("fault point no-io-uring-lane", self.c.log("node2"))


if __name__ == "__main__":
    harness.main()
