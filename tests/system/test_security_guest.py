#!/usr/bin/env python3
"""A guest is sandboxed: tried as an ordinary user (and as root) on a loopback cluster,
a job's /proc holds only its own processes, a process of the same user outside the job is
neither listed nor reachable through /proc/PID/root, nor are its System V IPC objects, the
job's init is out of reach, /dev is minimal, /sys and the node's OS paths are read-only,
and every job runs with no capabilities and no_new_privs, at home and away. Such a job,
root's or the user's, still moves node1 -> node2 -> home."""

import json
import os
import random
import subprocess
import unittest

import harness

USER = f"hwsec{random.randrange(10**6):06d}"

# Run in the job: which pids its /proc lists (a builtin loop: no child of its own shows).
LIST_PIDS = 'for p in /proc/[0-9]*; do printf "%s " ${p#/proc/}; done; echo'
CAPS = "grep -E '^(CapInh|CapPrm|CapEff|CapBnd|CapAmb|NoNewPrivs):' /proc/self/status"
NO_CAPS = ("CapInh:\t0000000000000000\nCapPrm:\t0000000000000000\nCapEff:\t0000000000000000\n"
           "CapBnd:\t0000000000000000\nCapAmb:\t0000000000000000\nNoNewPrivs:\t1\n")

# PTRACE_ATTACH to the job's init (pid 1 of its namespace): the init is root with its
# capabilities, the job is not.
PTRACE_INIT = """
import ctypes, errno
libc = ctypes.CDLL(None, use_errno=True)
libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p]
result = libc.ptrace(16, 1, None, None)
print("ptrace", result, errno.errorcode.get(ctypes.get_errno(), ctypes.get_errno()))
"""

# keyctl(KEYCTL_GET_KEYRING_ID, KEY_SPEC_USER_KEYRING): root's keyring on the node.
KEYRING = """
import ctypes, errno
libc = ctypes.CDLL(None, use_errno=True)
result = libc.syscall(250, 0, -4, 0)
print("keyctl", result, errno.errorcode.get(ctypes.get_errno(), ctypes.get_errno()))
"""

MOVING = r"""
i=0
while [ $i -lt 2 ]; do
  while [ ! -e /data/sec/go$i ]; do sleep 0.1; done
  printf 'round %s on %s:' $i "$(cat /proc/sys/kernel/hostname)"
  for p in /proc/[0-9]*; do printf ' %s' ${p#/proc/}; done
  echo
  grep -E '^(CapEff|NoNewPrivs):' /proc/self/status
  i=$((i+1))
done
"""


class GuestSandboxTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        subprocess.run(["useradd", "--no-create-home", "--shell", "/bin/sh", USER], check=True)
        cls.cluster = None
        cls.host_pid = None
        try:
            cls.cluster = harness.LoopCluster(2, settings=["gossip.interval_ms=200"]).__enter__()
            c = cls.cluster
            c.run("node1", "sh", "-c", f"mkdir -p /data/sec && chown {USER} /data/sec && "
                                       "echo home-marker > /data/marker")
            c.run("node2", "sh", "-c", "echo node2-secret > /data/only-on-node2 && "
                                       "chmod 644 /data/only-on-node2")
            c.wait_for(lambda: c.run("node2", "cat", "/mosix/home/node1/data/marker",
                                     check=False).stdout == "home-marker\n",
                       30, "node2 to mount node1's files")
            # A process of the same user on node2, outside any job: the guest's way into
            # node2's files would be its /proc/PID/root.
            c.run("node2", "sh", "-c", f"runuser -u {USER} -- sleep 600 "
                                       "</dev/null >/dev/null 2>&1 &")
            cls.host_pid = int(c.wait_for(
                lambda: c.run("node2", "pgrep", "-u", USER, "-x", "sleep",
                              check=False).stdout.split()[:1], 20, "the user's sleep")[0])
        except BaseException:
            cls.tearDownClass()
            raise

    @classmethod
    def tearDownClass(cls):
        try:
            if cls.cluster and cls.host_pid:
                cls.cluster.run("node2", "kill", "-KILL", str(cls.host_pid), check=False)
            if cls.cluster:
                cls.cluster.__exit__(None, None, None)
        finally:
            subprocess.run(["userdel", USER], check=False)

    def as_user(self, script, node="node1", check=True):
        where = "/data/sec" if node == "node1" else "/"
        return self.cluster.run(node, "sh", "-c", f"cd {where} && runuser -u {USER} -- {script}",
                                check=check)

    def sh(self, script, node="node1", check=True):
        return self.cluster.run(node, "sh", "-c", script, check=check)

    def test_proc_lists_only_the_job(self):
        for where in ("", "-r node2 "):
            with self.subTest(where=where or "home"):
                out = self.as_user(f"mosrun {where}sh -c '{LIST_PIDS}'").stdout
                self.assertEqual(out, "1 2 \n")
                out = self.sh(f"cd /data/sec && mosrun {where}sh -c '{LIST_PIDS}'").stdout
                self.assertEqual(out, "1 2 \n")
                # `ls` is the job's program (pid 2) under its init (pid 1).
                listed = self.as_user(f"mosrun {where}ls /proc").stdout.split()
                self.assertEqual([name for name in listed if name.isdigit()], ["1", "2"])

    def test_proc_paths_by_home_ids(self):
        # The shim turns /proc/<home id> into the job's inner pid, which the job's own /proc
        # names: the shell's own ($$) and a child's ($!) alike.
        # (The child is the shell's fork until it has run sleep: read until it has.)
        probe = ('sleep 30 & p=$!; test $p -ge 4194304 && echo home-id; '
                 'for i in $(seq 600); do c=$(tr "\\0" " " < /proc/$p/cmdline); '
                 'test "$c" = "sleep 30 " && break; sleep 0.05; done; echo "$c"; '
                 'grep -c ^Pid: /proc/$$/status; kill $p')
        for where in ("", "-r node2 "):
            with self.subTest(where=where or "home"):
                out = self.as_user(f"mosrun {where}sh -c '{probe}'").stdout
                self.assertEqual(out, "home-id\nsleep 30 \n1\n")

    def test_host_process_of_the_same_user_is_out_of_reach(self):
        pid = self.host_pid
        # Outside a job the way is open: that is what the sandbox must close.
        outside = self.as_user(f"cat /proc/{pid}/root/data/only-on-node2", node="node2")
        self.assertEqual(outside.stdout, "node2-secret\n")
        probe = (f"test -e /proc/{pid} && echo listed || echo absent; "
                 f"cat /proc/{pid}/root/data/only-on-node2 2>/dev/null || echo refused; "
                 f"cat /data/only-on-node2 2>/dev/null || echo refused")
        for user in (True, False):
            run = self.as_user if user else self.sh
            with self.subTest(user=user):
                out = run(f"mosrun -r node2 sh -c '{probe}'").stdout
                self.assertEqual(out, "absent\nrefused\nrefused\n")

    def test_host_ipc_is_out_of_reach(self):
        # A System V shared memory segment of the same user on node2, open to everyone.
        made = self.as_user("ipcmk -M 4096 -p 0666", node="node2").stdout
        shmid = made.split()[-1]
        try:
            listed = self.sh("ipcs -m", node="node2").stdout
            self.assertIn(f" {shmid} ", listed)
            count = "ipcs -m | grep -c ^0x || true"
            self.assertEqual(self.as_user(f"mosrun -r node2 sh -c '{count}'").stdout, "0\n")
        finally:
            self.sh(f"ipcrm -m {shmid}", node="node2", check=False)

    def test_init_is_out_of_reach(self):
        probe = ("ls /proc/1/root/ >/dev/null 2>&1 && echo root-open || echo root-refused; "
                 "cat /proc/1/environ >/dev/null 2>&1 && echo env-open || echo env-refused; "
                 "ls /proc/1/cwd/ >/dev/null 2>&1 && echo cwd-open || echo cwd-refused; "
                 "python3 /data/sec/ptrace.py")
        expected = "root-refused\nenv-refused\ncwd-refused\nptrace -1 EPERM\n"
        self.cluster.run("node1", "sh", "-c", "cat > /data/sec/ptrace.py", input=PTRACE_INIT)
        for where in ("", "-r node2 "):
            with self.subTest(where=where or "home"):
                self.assertEqual(self.as_user(f"mosrun {where}sh -c '{probe}'").stdout, expected)
                self.assertEqual(self.sh(f"mosrun {where}sh -c '{probe}'").stdout, expected)

    def test_no_capabilities_and_no_new_privs(self):
        for where in ("", "-r node2 "):
            with self.subTest(where=where or "home"):
                self.assertEqual(self.sh(f"mosrun {where}{CAPS}").stdout, NO_CAPS)
                self.assertEqual(self.as_user(f"mosrun {where}{CAPS}").stdout, NO_CAPS)

    def test_root_guest_cannot_change_its_node(self):
        probe = ("touch /usr/hw-sec-probe 2>/dev/null && echo usr-written || echo usr-refused; "
                 "echo 1 > /proc/sys/vm/drop_caches 2>/dev/null && echo sysctl-written "
                 "|| echo sysctl-refused; "
                 "echo x > /sys/kernel/uevent_helper 2>/dev/null && echo sys-written "
                 "|| echo sys-refused; "
                 "unshare -U true 2>/dev/null && echo userns || echo no-userns; "
                 "find /sys/kernel/debug /sys/fs/cgroup /sys/firmware -mindepth 1 | grep -q . "
                 "&& echo sys-mounts || echo sysfs-alone; "
                 "mount -t tmpfs none /tmp 2>/dev/null && echo mounted || echo no-mount; "
                 "python3 /data/sec/keyring.py")
        self.cluster.run("node1", "sh", "-c", "cat > /data/sec/keyring.py", input=KEYRING)
        out = self.sh(f"mosrun -r node2 sh -c '{probe}'").stdout
        self.assertEqual(out, "usr-refused\nsysctl-refused\nsys-refused\nno-userns\n"
                              "sysfs-alone\nno-mount\nkeyctl -1 EPERM\n")
        self.assertFalse(os.path.exists("/usr/hw-sec-probe"))

    def test_dev_is_minimal(self):
        for where in ("", "-r node2 "):
            with self.subTest(where=where or "home"):
                out = self.as_user(f"mosrun {where}ls /dev").stdout.split()
                self.assertEqual(sorted(out), ["fd", "full", "null", "ptmx", "pts", "random",
                                               "shm", "stderr", "stdin", "stdout", "tty",
                                               "urandom", "zero"])
                out = self.as_user(f"mosrun {where}sh -c 'head -c 4 /dev/zero | od -An -tx1; "
                                   "echo gone > /dev/null && echo null-ok'").stdout
                self.assertEqual(out.split(), ["00", "00", "00", "00", "null-ok"])

    def test_sandboxed_job_still_moves(self):
        c = self.cluster
        c.run("node1", "sh", "-c", "cat > /data/sec/moving.sh", input=MOVING)
        for user in (False, True):
            with self.subTest(user=user):
                c.run("node1", "sh", "-c", "rm -f /data/sec/go* /data/sec/out /data/sec/err "
                                           "/data/sec/status")
                start = "(mosrun sh moving.sh > out 2>err; echo $? > status) >/dev/null 2>&1 &"
                if user:
                    start = f"runuser -u {USER} -- sh -c '{start}'"
                c.run("node1", "sh", "-c", f"cd /data/sec && {start} echo started")
                pid = c.wait_for(lambda: next(
                    (j["pid"] for j in json.loads(c.run("node1", "mosps", "--json").stdout)["jobs"]
                     if "moving.sh" in j["cmd"]), None), 20, "the job to start")
                moved = c.run("node1", "mosmigrate", str(pid), "node2", check=False)
                self.assertEqual(moved.returncode, 0, moved.stderr)
                c.run("node1", "touch", "/data/sec/go0")
                c.wait_for(lambda: "NoNewPrivs" in c.run("node1", "cat", "/data/sec/out").stdout,
                           30, "the job's first round")
                moved = c.run("node1", "mosmigrate", str(pid), "home", check=False)
                self.assertEqual(moved.returncode, 0, moved.stderr)
                c.run("node1", "touch", "/data/sec/go1")
                c.wait_for(lambda: c.run("node1", "cat", "/data/sec/status", check=False).stdout,
                           30, "the job to end")
                self.assertEqual(c.run("node1", "cat", "/data/sec/status").stdout, "0\n")
                out = c.run("node1", "cat", "/data/sec/out").stdout
                self.assertEqual(out, "round 0 on node1: 1 2\nCapEff:\t0000000000000000\n"
                                      "NoNewPrivs:\t1\nround 1 on node1: 1 2\n"
                                      "CapEff:\t0000000000000000\nNoNewPrivs:\t1\n")
                # It did run on node2: the log there says so.
                self.assertIn(f"job {pid} restored here", c.log("node2"))

if __name__ == "__main__":
    harness.main()
