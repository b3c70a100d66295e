"""A loopback cluster in a network namespace of the test's own, with an "outside" beyond a
veth pair: the node's address NODE_ADDRESS on our side, OUTSIDE_ADDRESS (and the IPv6
pair, if asked) in a namespace of its own. Importing this module re-runs the test in a
new network namespace first, so nothing it does touches the machine's network."""

import os
import shutil
import subprocess
import sys
import tempfile

OWN_NETNS = "HOMEWARD_TEST_OWN_NETNS"

if os.environ.get(OWN_NETNS) != "1":
    if os.geteuid() != 0 or shutil.which("unshare") is None or shutil.which("ip") is None:
        print("needs root, unshare and ip", file=sys.stderr)
        sys.exit(77)
    env = dict(os.environ, **{OWN_NETNS: "1"})
    sys.exit(subprocess.run(["unshare", "--net", "--", sys.executable, *sys.argv],
                            env=env).returncode)

import harness  # noqa: E402  (after the re-exec: its private directory is made once)

NODE_ADDRESS = "198.18.0.1"
OUTSIDE_ADDRESS = "198.18.0.2"
NODE_ADDRESS6 = "fd00:198:18::1"
OUTSIDE_ADDRESS6 = "fd00:198:18::2"


def ip(*args, netns_pid=None):
    command = ["ip", *args]
    if netns_pid:
        command = ["nsenter", "-t", str(netns_pid), "-n", "--", *command]
    subprocess.run(command, check=True, capture_output=True, text=True)


class OutsideNetTest(harness.UserClusterTest):
    maxDiff = None
    cluster_nodes = 2

    @classmethod
    def setUpClass(cls):
        ip("link", "set", "lo", "up")  # the test's own namespace: the cluster's loopback
        super().setUpClass()

    def server(self, name, source, address, prefix=None, user=None):
        """Runs the python `source` with arguments `address`, a file it writes its port to
        once it serves, and its log (inside the namespace `prefix` enters, if any) as
        `user`; returns (port, log path)."""
        work = tempfile.mkdtemp(prefix=f"{name}-", dir=harness.private_dir())
        os.chmod(work, 0o777)
        path = os.path.join(work, "server.py")
        with open(path, "w") as f:
            f.write(source)
        ready, log = os.path.join(work, "port"), os.path.join(work, "log")
        command = ["/usr/bin/python3", path, address, ready, log]
        if user:
            command = ["runuser", "-u", user, "--", *command]
        process = subprocess.Popen((prefix or []) + command, stdin=subprocess.DEVNULL,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.addCleanup(process.wait)
        self.addCleanup(process.kill)
        port = int(self.c.wait_for(lambda: harness.read_text(ready).strip(), 30,
                                   f"the {name} server to listen"))
        return port, log

    def make_outside(self, ipv6=False):
        """The namespace "outside", joined to ours by a veth pair; returns the pid of the
        process that holds it (killed at the end, which removes it and the pair)."""
        holder = subprocess.Popen(["unshare", "--net", "--", "sleep", "infinity"],
                                  stdin=subprocess.DEVNULL)
        self.addCleanup(holder.wait)
        self.addCleanup(holder.kill)
        # unshare has made the namespace once its child runs in it.
        self.c.wait_for(lambda: os.readlink(f"/proc/{holder.pid}/ns/net")
                        != os.readlink("/proc/self/ns/net")
                        and "sleep" in harness.read_text(f"/proc/{holder.pid}/cmdline"),
                        10, "the outside namespace")
        veth = f"hwo{os.getpid() % 100000}"
        ip("link", "add", veth, "type", "veth", "peer", "name", veth + "x")
        ip("link", "set", veth + "x", "netns", str(holder.pid))
        ip("addr", "add", f"{NODE_ADDRESS}/24", "dev", veth)
        ip("addr", "add", f"{OUTSIDE_ADDRESS}/24", "dev", veth + "x", netns_pid=holder.pid)
        if ipv6:
            # nodad: usable at once, without waiting for duplicate address detection.
            ip("-6", "addr", "add", f"{NODE_ADDRESS6}/64", "dev", veth, "nodad")
            ip("-6", "addr", "add", f"{OUTSIDE_ADDRESS6}/64", "dev", veth + "x", "nodad",
               netns_pid=holder.pid)
        ip("link", "set", veth, "up")
        ip("link", "set", veth + "x", "up", netns_pid=holder.pid)
        ip("link", "set", "lo", "up", netns_pid=holder.pid)
        return holder.pid
