#!/usr/bin/python3
"""A guest is sandboxed: tried as an ordinary user (and as root) on a loopback cluster,
a job's /proc holds only its own processes, a process of the same user outside the job is
neither listed nor reachable through /proc/PID/root, nor are its System V IPC objects, the
job's init is out of reach, /dev is minimal, /sys and the node's OS paths are read-only,
and every job runs with no capabilities and no_new_privs, at home and away. A guest reaches
neither a TCP service on its host's loopback (its connections there are carried to its
home, which refuses another node's address) nor its host's abstract unix sockets, but
talks to itself over a loopback of its own. Such a job, root's or the user's, still moves
node1 -> node2 -> home, and one that talks to itself over 127.0.0.1 goes on doing so
node1 -> node2 -> node3 -> home."""

import json
import os
import random
import subprocess
import unittest

import harness

USER = f"hwsec{random.randrange(10**6):06d}"

# Run in the job: which pids its /proc lists (a builtin loop: no child of its own shows).
# How many processes the job's /proc lists, and whether the shell itself is one of them
# (by its own pid, the home id the job's /proc lists it by).
LIST_PIDS = ('n=0; self=no; for p in /proc/[0-9]*; do n=$((n+1)); '
             '[ ${p#/proc/} = $$ ] && self=yes; done; echo $n $self')
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
  n=0; self=no
  for p in /proc/[0-9]*; do n=$((n+1)); [ ${p#/proc/} = $$ ] && self=yes; done
  echo " $n $self"
  grep -E '^(CapEff|NoNewPrivs):' /proc/self/status
  i=$((i+1))
done
"""


# A service of the node, outside any job, run by root: a TCP listener on the node's own
# loopback address (argv[3]; on a loopback cluster 127.0.0.1 is every node's, and a
# guest's connections to its loopback are carried to its home's) and an abstract unix
# socket, each answering "host" to whoever connects. It writes "PORT PID" to argv[1] once
# both listen.
HOST_SERVICES = r"""
import os, selectors, socket, sys
tcp = socket.socket()
tcp.bind((sys.argv[3], 0))
tcp.listen(64)
unix = socket.socket(socket.AF_UNIX)
unix.bind("\0" + sys.argv[2])
unix.listen(64)
with open(sys.argv[1] + ".tmp", "w") as f:
    f.write(f"{tcp.getsockname()[1]} {os.getpid()}\n")
os.rename(sys.argv[1] + ".tmp", sys.argv[1])
sel = selectors.DefaultSelector()
sel.register(tcp, selectors.EVENT_READ)
sel.register(unix, selectors.EVENT_READ)
while True:
    for key, _ in sel.select():
        conn, _ = key.fileobj.accept()
        conn.sendall(b"host")
        conn.close()
"""

# Run in a job or outside one: can it reach the node's services (argv: ADDRESS:PORT NAME), and can
# it talk to itself over 127.0.0.1? With rounds (argv: PORT NAME ROUNDS), each round waits
# for /data/sec/net-go<i> and holds no socket between rounds, so the job may move there.
NET_PROBE = r"""
import os, socket, sys, time

def host_tcp(where):
    address, port = where.rsplit(":", 1)
    try:
        with socket.create_connection((address, int(port)), timeout=5) as s:
            return "tcp-" + (s.recv(16).decode() or "refused")
    except OSError as e:
        return "tcp-refused"

def host_unix(name):
    try:
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(5)
            s.connect("\0" + name)
            return "unix-" + s.recv(16).decode()
    except OSError as e:
        return "unix-refused"

def self_talk():
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        with socket.create_connection(listener.getsockname(), timeout=5) as client:
            peer, _ = listener.accept()
            with peer:
                client.sendall(b"ping")
                peer.sendall(peer.recv(4))
                return "self-" + client.recv(4).decode()

def probe():
    return " ".join([host_tcp(sys.argv[1]), host_unix(sys.argv[2]), self_talk()])

rounds = int(sys.argv[3]) if len(sys.argv) > 3 else 0
if not rounds:
    print(probe())
for i in range(rounds):
    while not os.path.exists(f"/data/sec/net-go{i}"):
        time.sleep(0.1)
    print(f"round {i}: {probe()}", flush=True)
"""


class GuestSandboxTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        subprocess.run(["useradd", "--no-create-home", "--shell", "/bin/sh", USER], check=True)
        cls.cluster = None
        cls.host_pid = None
        cls.services_pid = None
        try:
            cls.cluster = harness.LoopCluster(3, settings=["gossip.interval_ms=200"]).__enter__()
            c = cls.cluster
            c.run("node1", "sh", "-c", f"mkdir -p /data/sec && chown {USER} /data/sec && "
                                       "echo home-marker > /data/marker")
            c.run("node2", "sh", "-c", "echo node2-secret > /data/only-on-node2 && "
                                       "chmod 644 /data/only-on-node2")
            for node in ("node2", "node3"):
                c.wait_for(lambda: c.run(node, "cat", "/mosix/home/node1/data/marker",
                                         check=False).stdout == "home-marker\n",
                           30, f"{node} to mount node1's files")
            # A process of the same user on node2, outside any job: the guest's way into
            # node2's files would be its /proc/PID/root.
            c.run("node2", "sh", "-c", f"runuser -u {USER} -- sleep 600 "
                                       "</dev/null >/dev/null 2>&1 &")
            cls.host_pid = int(c.wait_for(
                lambda: c.run("node2", "pgrep", "-u", USER, "-x", "sleep",
                              check=False).stdout.split()[:1], 20, "the user's sleep")[0])
            # The node's own services, root's, outside any job: on node2's loopback and
            # among its abstract unix sockets.
            cls.abstract_name = f"homeward-test-{USER}"
            c.run("node2", "sh", "-c", "cat > /data/host_services.py", input=HOST_SERVICES)
            c.run("node2", "sh", "-c", "python3 /data/host_services.py /data/services "
                                       f"{cls.abstract_name} {c.node('node2')['address']} "
                                       "</dev/null >/dev/null 2>&1 &")
            port, pid = c.wait_for(lambda: c.run("node2", "cat", "/data/services",
                                                 check=False).stdout.split(),
                                   60, "the node's services to listen")
            cls.services_port = f"{c.node('node2')['address']}:{port}"
            cls.services_pid = int(pid)
            c.run("node1", "sh", "-c", "cat > /data/sec/net_probe.py", input=NET_PROBE)
            c.run("node2", "sh", "-c", "cat > /data/net_probe.py", input=NET_PROBE)
        except BaseException:
            cls.tearDownClass()
            raise

    @classmethod
    def tearDownClass(cls):
        try:
            if cls.cluster and cls.host_pid:
                cls.cluster.run("node2", "kill", "-KILL", str(cls.host_pid), check=False)
            if cls.cluster and cls.services_pid:
                cls.cluster.run("node2", "kill", "-KILL", str(cls.services_pid), check=False)
            if cls.cluster:
                cls.cluster.__exit__(None, None, None)
        finally:
            harness.remove_user(USER)

    def as_user(self, script, node="node1", check=True):
        where = "/data/sec" if node == "node1" else "/"
        return self.cluster.run(node, "sh", "-c", f"cd {where} && runuser -u {USER} -- {script}",
                                check=check)

    def sh(self, script, node="node1", check=True):
        return self.cluster.run(node, "sh", "-c", script, check=check)

    def test_proc_lists_only_the_job(self):
        for where in ("", "-r node2 "):
            with self.subTest(where=where or "home"):
                # The job's init and its shell, nothing else.
                out = self.as_user(f"mosrun {where}sh -c '{LIST_PIDS}'").stdout
                self.assertEqual(out, "2 yes\n")
                out = self.sh(f"cd /data/sec && mosrun {where}sh -c '{LIST_PIDS}'").stdout
                self.assertEqual(out, "2 yes\n")
                # `ls` is the job's program under its init.
                listed = self.as_user(f"mosrun {where}ls /proc").stdout.split()
                self.assertEqual(len([name for name in listed if name.isdigit()]), 2, listed)

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
                self.assertEqual(out, "round 0 on node1: 2 yes\nCapEff:\t0000000000000000\n"
                                      "NoNewPrivs:\t1\nround 1 on node1: 2 yes\n"
                                      "CapEff:\t0000000000000000\nNoNewPrivs:\t1\n")
                # It did run on node2: the log there says so.
                self.assertIn(f"job {pid} restored here", c.log("node2"))

    def test_guest_reaches_no_host_loopback_service_nor_abstract_socket(self):
        probe = f"python3 /data/sec/net_probe.py {self.services_port} {self.abstract_name}"
        # Outside a job, the user reaches both: that is what a guest must not.
        outside = self.as_user(f"python3 /data/net_probe.py "
                               f"{self.services_port} {self.abstract_name}", node="node2")
        self.assertEqual(outside.stdout, "tcp-host unix-host self-ping\n")
        for user in (True, False):
            run = self.as_user if user else self.sh
            with self.subTest(user=user):
                # A guest on node2: only a loopback of its own, where it talks to itself.
                guest = run(f"mosrun -r node2 {probe}").stdout
                self.assertEqual(guest, "tcp-refused unix-refused self-ping\n")
                # Its devices are its loopback alone, in /proc and in /sys.
                devices = run("mosrun -r node2 sh -c 'ls /sys/class/net; "
                              "tail -n +3 /proc/net/dev | cut -d: -f1'").stdout.split()
                self.assertEqual(devices, ["lo", "lo"])
                # A job at its home is the plain program it stands for: the node's network
                # is its home's (on a loopback cluster, node2's loopback is node1's too).
                home = run(f"mosrun {probe}").stdout
                self.assertEqual(home, "tcp-host unix-host self-ping\n")

    def test_job_talking_to_itself_keeps_doing_so_as_it_moves(self):
        c = self.cluster
        c.run("node1", "sh", "-c", "rm -f /data/sec/net-go* /data/sec/net-out /data/sec/net-err "
                                   "/data/sec/net-status")
        start = (f"(mosrun python3 net_probe.py {self.services_port} {self.abstract_name} 4 "
                 "> net-out 2>net-err; echo $? > net-status) >/dev/null 2>&1 &")
        c.run("node1", "sh", "-c", f"cd /data/sec && runuser -u {USER} -- sh -c '{start}' "
                                   "&& echo started")
        pid = c.wait_for(lambda: next(
            (j["pid"] for j in json.loads(c.run("node1", "mosps", "--json").stdout)["jobs"]
             if "net_probe.py" in j["cmd"]), None), 60, "the job to start")
        expected = []
        try:
            for i, (node, reached) in enumerate([("home", "tcp-host unix-host"),
                                                 ("node2", "tcp-refused unix-refused"),
                                                 ("node3", "tcp-refused unix-refused"),
                                                 ("home", "tcp-host unix-host")]):
                if i > 0:
                    moved = c.run("node1", "mosmigrate", str(pid), node, check=False)
                    self.assertEqual(moved.returncode, 0, moved.stderr)
                c.run("node1", "touch", f"/data/sec/net-go{i}")
                expected.append(f"round {i}: {reached} self-ping")
                c.wait_for(lambda: c.run("node1", "cat", "/data/sec/net-out").stdout.count(
                    "\n") > i, 60, f"round {i} ({node})")
                self.assertEqual(c.run("node1", "cat", "/data/sec/net-out").stdout.splitlines(),
                                 expected, c.run("node1", "cat", "/data/sec/net-err").stdout)
            c.wait_for(lambda: c.run("node1", "cat", "/data/sec/net-status", check=False).stdout,
                       30, "the job to end")
            self.assertEqual(c.run("node1", "cat", "/data/sec/net-status").stdout, "0\n")
            self.assertIn(f"job {pid} restored here", c.log("node2"))
            self.assertIn(f"job {pid} restored here", c.log("node3"))
        finally:
            c.run("node1", "sh", "-c", "touch /data/sec/net-go0 /data/sec/net-go1 "
                                       "/data/sec/net-go2 /data/sec/net-go3", check=False)

    def test_job_with_a_network_socket_stays_home(self):
        # A job at home holding a UDP socket in the node's network would lose that network
        # away: it is pinned, and says why.
        c = self.cluster
        start = ("(mosrun python3 -c \"import socket, time; s = socket.socket(socket.AF_INET, "
                 "socket.SOCK_DGRAM); s.bind(('127.0.0.1', 0)); time.sleep(60)\" "
                 ">/dev/null 2>&1 &) ; echo started")
        c.run("node1", "sh", "-c", f"cd /data/sec && {start}")
        job = c.wait_for(lambda: next(
            (j for j in json.loads(c.run("node1", "mosps", "--json").stdout)["jobs"]
             if "SOCK_DGRAM" in j["cmd"] and j.get("pinned")), None), 60, "the job to be pinned")
        try:
            self.assertIn("uses the network (a UDP socket", job["pinned"])
            moved = c.run("node1", "mosmigrate", str(job["pid"]), "node2", check=False)
            self.assertNotEqual(moved.returncode, 0)
            self.assertIn("uses the network", moved.stderr)
        finally:
            c.run("node1", "kill", "-KILL", str(job["pid"]), check=False)


if __name__ == "__main__":
    harness.main()
