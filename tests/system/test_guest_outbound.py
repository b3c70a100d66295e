#!/usr/bin/python3
"""A guest's TCP connections to other addresses leave from the node it runs on.

Tests may use only loopback addresses and network namespaces of their own, so the whole
test (and the loopback cluster it starts) runs in a network namespace it makes first
(`unshare --net`, its loopback up). There it makes "outside": one more namespace, joined
to the test's by a veth pair, 198.18.0.1 on the test's end (an address of the nodes, as a
node's own interface would have) and 198.18.0.2 on outside's. Both namespaces go with
their processes, pass or fail.

A throwaway ordinary user runs a job of node1 on node2 (`mosrun -r node2`), moves it home
and back to node2 (a guest restored by criu), and in each of the three rounds the job:
- talks to an echo server outside (198.18.0.2): the connection is the user's (`ss -e`
  shows its uid) and comes from the node's address (198.18.0.1), not from the home;
- connects to a port outside where nothing listens: its connect fails with ECONNREFUSED,
  as at home (the carrier holds the job's SYN until the far end has answered);
- connects to a server of the node itself on 198.18.0.1: refused by the carrier (a guest
  does not reach its host's services) with EHOSTUNREACH, and the server never sees it;
- connects to 198.51.100.7, which no route reaches: ENETUNREACH, as at home;
- still reaches its home's loopback through node1 (an echo server there), and a closed
  port there refuses at connect (ECONNREFUSED) too.
At home the same connections are the node's own, as for any program there: the node's
server answers, the closed port refuses at connect, the unrouted address is unreachable."""

import os
import pwd
import shlex
import subprocess

import outside_net  # first: the test runs in a network namespace of its own
import harness  # noqa: E402
from outside_net import NODE_ADDRESS, OUTSIDE_ADDRESS  # noqa: E402

UNROUTED = "198.51.100.7"

JOB = r"""
import errno, os, socket, sys, time

def wait(name):
    while not os.path.exists(name):
        time.sleep(0.05)

def split(where):
    address, port = where.rsplit(":", 1)
    return address, int(port)

def talk(where, hold=None):
    try:
        with socket.create_connection(split(where), timeout=20) as s:
            s.sendall(b"hello\n")
            reply = s.makefile().readline().strip()
            if hold:
                print(f"held {hold[-1]} {reply}", flush=True)
                wait(hold)
            return reply or "eof"
    except OSError as e:
        return errno.errorcode.get(e.errno, type(e).__name__)

outside, closed, own, unrouted, home, home_closed = sys.argv[1:7]
for i in range(3):
    wait(f"go{i}")
    print(f"{i} outside:", talk(outside, hold=f"checked{i}"), flush=True)
    print(f"{i} closed:", talk(closed), flush=True)
    print(f"{i} own:", talk(own), flush=True)
    print(f"{i} unrouted:", talk(unrouted), flush=True)
    print(f"{i} home:", talk(home), flush=True)
    print(f"{i} home closed:", talk(home_closed), flush=True)
"""

# A server: listens on argv[1], writes "PORT" to argv[2] once it does, logs each peer to
# argv[3] and answers one line with "echo LINE" (then holds the connection until its end).
SERVER = harness.LISTENING_SERVER + r"""
def serve(conn):
    with conn:
        f = conn.makefile("rb")
        conn.sendall(b"echo " + f.readline())
        f.read()
while True:
    conn, peer = server.accept()
    with open(sys.argv[3], "a") as log:
        log.write(f"{peer[0]}\n")
    threading.Thread(target=serve, args=(conn,), daemon=True).start()
"""


class GuestOutboundTest(outside_net.OutsideNetTest):
    def test_guest_connects_from_its_node(self):
        c = self.c
        entry = pwd.getpwnam(self.user)
        outside = self.make_outside()
        enter_outside = ["nsenter", "-t", str(outside), "-n", "--"]
        echo_port, echo_log = self.server("outside", SERVER, OUTSIDE_ADDRESS,
                                          prefix=enter_outside)
        own_port, own_log = self.server("own", SERVER, NODE_ADDRESS)
        home_port, home_log = self.server("home", SERVER, c.node("node1")["address"],
                                          user=self.user)
        # A port outside where nothing listens: the echo server's, plus one (a test of
        # this namespace alone: nothing else runs there).
        closed_port = echo_port + 1 if echo_port < 65535 else echo_port - 1
        home_closed = home_port + 1 if home_port < 65535 else home_port - 1

        work = os.path.join(c.node("node1")["data"], "outbound")
        os.makedirs(work)
        os.chown(work, entry.pw_uid, entry.pw_gid)
        with open(os.path.join(work, "job.py"), "w") as f:
            f.write(JOB)
        self.addCleanup(lambda: [open(os.path.join(work, f"{name}{i}"), "w").close()
                                 for i in range(3) for name in ("go", "checked")])
        mosrun = shlex.join(["runuser", "-u", self.user, "--", "mosrun", "-r", "node2",
                             "python3", "job.py",
                             f"{OUTSIDE_ADDRESS}:{echo_port}", f"{OUTSIDE_ADDRESS}:{closed_port}",
                             f"{NODE_ADDRESS}:{own_port}", f"{UNROUTED}:80",
                             f"{c.node('node1')['address']}:{home_port}",
                             f"{c.node('node1')['address']}:{home_closed}"])
        c.run("node1", "sh", "-c", f"cd /data/outbound && ({mosrun} > out 2> err; "
                                   "echo $? > status) >/dev/null 2>&1 & echo started")
        pid = c.wait_for(lambda: next((j["pid"] for j in harness.jobs(c)
                                       if j["user"] == self.user and j["where"] == "node2"
                                       and j["state"] == "running"), None),
                         60, "the job running on node2")
        out = os.path.join(work, "out")
        for i, where in enumerate(["node2", "node1", "node2"]):
            if i:
                target = "home" if where == "node1" else where
                moved = c.run("node1", "mosmigrate", str(pid), target, check=False)
                self.assertEqual(moved.returncode, 0, moved.stdout + moved.stderr)
                self.assertIn(f"now runs on {where}", moved.stdout)
            open(os.path.join(work, f"go{i}"), "w").close()
            c.wait_for(lambda: f"held {i}" in harness.read_text(out), 60,
                       f"round {i}'s outside connection")
            # The job's connection outside is the user's, from the node's address.
            ss = subprocess.run(["ss", "-tnHe", "state", "established", "dst", OUTSIDE_ADDRESS],
                                capture_output=True, text=True, check=True).stdout
            self.assertIn(f"uid:{entry.pw_uid}", ss)
            self.assertEqual(harness.read_text(echo_log), f"{NODE_ADDRESS}\n" * (i + 1))
            open(os.path.join(work, f"checked{i}"), "w").close()
            c.wait_for(lambda: f"{i} home closed:" in harness.read_text(out), 120, f"round {i}")
        status = os.path.join(work, "status")
        c.wait_for(lambda: harness.read_text(status), 120, "the job's end")
        self.assertEqual(harness.read_text(status).strip(), "0",
                         harness.read_text(os.path.join(work, "err")))
        expected = []
        for i, where in enumerate(["node2", "node1", "node2"]):
            away = where != "node1"
            expected += [
                f"held {i} echo hello",
                f"{i} outside: echo hello",
                f"{i} closed: ECONNREFUSED",
                f"{i} own: {'EHOSTUNREACH' if away else 'echo hello'}",
                f"{i} unrouted: ENETUNREACH",
                f"{i} home: echo hello",
                f"{i} home closed: ECONNREFUSED",
            ]
        self.assertEqual(harness.read_text(out).splitlines(), expected)
        # The node's service saw the job only while it was at home, a plain program there.
        self.assertEqual(harness.read_text(own_log), f"{NODE_ADDRESS}\n")
        self.assertEqual(harness.read_text(home_log).count("\n"), 3)
        log2 = c.log("node2")
        for line, times in [
                (f"job {pid}: connection to {OUTSIDE_ADDRESS}:{echo_port} made from this node "
                 f"(uid {entry.pw_uid})", 2),
                (f"job {pid}: connection to {OUTSIDE_ADDRESS}:{closed_port} not made: ", 2),
                (f"job {pid}: connection to {NODE_ADDRESS}:{own_port} not made: "
                 f"{NODE_ADDRESS} is an address of this node", 2),
                (f"job {pid}: connection to {UNROUTED}:80 not made: ", 2)]:
            self.assertEqual(log2.count(line), times, line)

if __name__ == "__main__":
    harness.main()
