#!/usr/bin/python3
"""localhost means home: a guest's TCP connections to its loopback reach its home's.

A throwaway ordinary user runs one job at node1 (`mosrun python3 job.py`). The test runs a
TCP echo server as that user at home, outside any job, on node1's own address (on a
loopback cluster every node shares the host's 127.0.0.0/8, and node1's address is what is
node1's alone), and a "decoy" on node2's address that answers whoever connects. The job
is moved node1 -> node2 -> node3 -> home, holding no connection between rounds (an
established connection pins a job: criu does not carry it), and in each round it:
- sends 8 MiB to the echo server and reads them back while it sends (more than any buffer
  on the way holds, so the carrying's back-pressure is at work) and compares the bytes;
- talks to a listener of its own on 127.0.0.1 (which stays the job's own);
- connects to the decoy's address and port: at home it reaches the decoy (the node's
  network, as a plain program); away the connection is carried to node1, which refuses
  another node's address, so the decoy sees nothing from a guest and the job's connect
  fails with EHOSTUNREACH (the carrier held its SYN until the home had answered).
The daemons' logs show that node2 and node3 carried the connections, and that node1
connected them as the job's user."""

import os
import pwd
import shlex
import subprocess
import tempfile

import harness

ECHO_BYTES = 8 << 20

JOB = r"""
import errno, hashlib, os, socket, sys, threading, time

echo, decoy = sys.argv[1], sys.argv[2]

def split(where):
    address, port = where.rsplit(":", 1)
    return address, int(port)

def echo_round():
    data = hashlib.sha256(b"0").digest() * (%d // 32)
    got = bytearray()
    with socket.create_connection(split(echo), timeout=30) as s:
        def send():
            s.sendall(data)
            s.shutdown(socket.SHUT_WR)
        sender = threading.Thread(target=send)
        sender.start()
        while True:
            chunk = s.recv(1 << 16)
            if not chunk:
                break
            got += chunk
        sender.join()
    return "echo-ok" if bytes(got) == data else f"echo-bad-{len(got)}"

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

def decoy_round():
    try:
        with socket.create_connection(split(decoy), timeout=10) as s:
            return "decoy-" + (s.recv(16).decode() or "closed")
    except OSError as e:
        return "decoy-" + errno.errorcode.get(e.errno, "refused")

for i in range(4):
    while not os.path.exists(f"go{i}"):
        time.sleep(0.05)
    print(f"round {i}: {echo_round()} {self_talk()} {decoy_round()}", flush=True)
""" % ECHO_BYTES

# The echo server at home: one thread per connection, bytes back as they come.
ECHO = harness.LISTENING_SERVER + r"""
def serve(conn):
    with conn:
        while True:
            chunk = conn.recv(1 << 16)
            if not chunk:
                break
            conn.sendall(chunk)
while True:
    conn, _ = server.accept()
    threading.Thread(target=serve, args=(conn,), daemon=True).start()
"""

# The decoy on node2's address: answers "node2" and logs each connection to argv[3].
DECOY = harness.LISTENING_SERVER + r"""
while True:
    conn, peer = server.accept()
    with open(sys.argv[3], "a") as log:
        log.write(f"{peer}\n")
    conn.sendall(b"node2")
    conn.close()
"""


class LocalhostTest(harness.UserClusterTest):
    maxDiff = None
    cluster_nodes = 3

    def start_server(self, script, name, address, *extra, user=None):
        """Runs `script` on the host (outside any node's job) as `user`; returns its port.
        Its files are in a directory of their own that the user can read (the cluster's
        directory is root's alone)."""
        work = tempfile.mkdtemp(prefix=f"{name}-", dir=harness.private_dir())
        os.chmod(work, 0o777)
        path = os.path.join(work, f"{name}.py")
        with open(path, "w") as f:
            f.write(script)
        ready = os.path.join(work, f"{name}.port")
        command = ["/usr/bin/python3", path, address, ready, *extra]
        if user:
            command = ["runuser", "-u", user, "--", *command]
        server = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL)
        self.addCleanup(server.wait)
        self.addCleanup(server.kill)
        return int(self.c.wait_for(lambda: harness.read_text(ready).strip(), 30,
                                   f"the {name} server to listen"))

    def test_guest_loopback_reaches_home(self):
        c = self.c
        entry = pwd.getpwnam(self.user)
        node1, node2 = c.node("node1"), c.node("node2")
        self.work = os.path.join(node1["data"], "localhost")
        os.makedirs(self.work)
        os.chown(self.work, entry.pw_uid, entry.pw_gid)
        echo_port = self.start_server(ECHO, "echo", node1["address"], user=self.user)
        decoy_log = os.path.join(harness.private_dir(), "decoy.log")
        decoy_port = self.start_server(DECOY, "decoy", node2["address"], decoy_log)
        with open(os.path.join(self.work, "job.py"), "w") as f:
            f.write(JOB)
        mosrun = shlex.join(["runuser", "-u", self.user, "--", "mosrun", "python3", "job.py",
                             f"{node1['address']}:{echo_port}",
                             f"{node2['address']}:{decoy_port}"])
        self.addCleanup(lambda: [open(os.path.join(self.work, f"go{i}"), "w").close()
                                 for i in range(4)])
        c.run("node1", "sh", "-c", f"cd /data/localhost && ({mosrun} > out 2> err; "
                                   "echo $? > status) >/dev/null 2>&1 & echo started")
        pid = c.wait_for(lambda: next((j["pid"] for j in harness.jobs(c)
                                       if j["user"] == self.user), None), 30, "the job")
        out = os.path.join(self.work, "out")
        expected = []
        decoy_seen = 0
        for i, (target, where) in enumerate([(None, "node1"), ("node2", "node2"),
                                             ("node3", "node3"), ("home", "node1")]):
            if target:
                moved = c.run("node1", "mosmigrate", str(pid), target, check=False)
                self.assertEqual(moved.returncode, 0, moved.stdout + moved.stderr)
                self.assertIn(f"now runs on {where}", moved.stdout)
            at_home = where == "node1"
            open(os.path.join(self.work, f"go{i}"), "w").close()
            expected.append(f"round {i}: echo-ok self-ping "
                            f"{'decoy-node2' if at_home else 'decoy-EHOSTUNREACH'}")
            c.wait_for(lambda: harness.read_text(out).count("\n") > i, 120,
                       f"round {i} on {where}")
            self.assertEqual(harness.read_text(out).splitlines(), expected,
                             harness.read_text(os.path.join(self.work, "err")))
            # A guest's connection to node2's address never reached the decoy.
            seen = harness.read_text(decoy_log).count("\n")
            self.assertEqual(seen, decoy_seen + (1 if at_home else 0), f"round {i} on {where}")
            decoy_seen = seen
            if not at_home:
                # The guest's daemon carried the connection home; the home connected it as
                # the job's user, and refused the decoy's address.
                echo_at = f"{node1['address']}:{echo_port}"
                self.assertIn(f"job {pid}: loopback connection to {echo_at} carried to node1",
                              c.log(where))
                self.assertIn(f"job {pid}: loopback connection from {c.node(where)['address']}",
                              c.log("node1"))
                self.assertIn(f"carried to {echo_at} (uid {entry.pw_uid})", c.log("node1"))
                self.assertIn(f"to {node2['address']}:{decoy_port} refused: "
                              f"{node2['address']} is another node's address", c.log("node1"))
        c.wait_for(lambda: harness.read_text(os.path.join(self.work, "status")), 60,
                   "the job's end")
        self.assertEqual(harness.read_text(os.path.join(self.work, "status")).strip(), "0",
                         harness.read_text(os.path.join(self.work, "err")))
        # Each guest node carried exactly its rounds' two connections (echo and decoy); the
        # job's own listener's never left it.
        for node in ("node2", "node3"):
            self.assertEqual(c.log(node).count(f"job {pid}: loopback connection to "), 2,
                             node)


if __name__ == "__main__":
    harness.main()
