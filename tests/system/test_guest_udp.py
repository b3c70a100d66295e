#!/usr/bin/python3
"""A guest's UDP leaves from the node it runs on, its loopback's UDP (a resolver at the
home's 127.0.0.53) is its home's, and its IPv6 goes out as its IPv4 does.

As in test_guest_outbound.py the whole test (and its loopback cluster) runs in a network
namespace of its own, joined by a veth pair to one more, "outside": 198.18.0.1 and
fd00:198:18::1 on the test's end (addresses of the nodes), 198.18.0.2 and fd00:198:18::2
on outside's. Both namespaces go with their processes, pass or fail.

A throwaway ordinary user runs a job of node1 on node2 (`mosrun -r node2`). First it holds
80 UDP sockets, each with a datagram answered by a server outside: the node holds at most
64 flows of a guest (the oldest end as more come), every one the user's. Then it moves
the job home and back to node2 (a guest restored by criu), and in each of the three rounds
the job:
- sends a datagram to a UDP echo server outside, from an unconnected socket, and gets the
  echo back from the server's address and port; while the flow lives, its socket on the
  node is the user's (`ss -e`) and the server saw the node's address;
- asks a DNS "resolver" (a small UDP responder, as a stub resolver such as
  systemd-resolved's would be) on the home's 127.0.0.53:53 for a name, and gets the home's
  answer (a real DNS reply: its id, question and the A record the home's responder gives);
  and looks a name up with getaddrinfo, the C library reading the home's resolv.conf
  (which names 127.0.0.53, bound over /etc/resolv.conf in the home node's mount namespace);
- sends to a UDP server of the node itself (198.18.0.1), and to servers outside on the
  daemons' gossip and peer port numbers: refused by the carrier, no reply, and the servers
  never see a datagram;
- sends from a connected socket to a closed port outside, and gets ECONNREFUSED: the
  target's "port unreachable" comes back to the job's socket, as at home;
- where the namespace has IPv6: a UDP and a TCP echo outside over IPv6, and a TCP echo on
  the home's ::1 and a UDP echo there (its loopback carried home as 127.0.0.1 is), and
  ECONNREFUSED from a closed port outside.
At home the same is the node's own, as for any program there: every server answers."""

import os
import pwd
import shlex
import socket
import subprocess

import outside_net  # first: the test runs in a network namespace of its own
import harness  # noqa: E402
from outside_net import NODE_ADDRESS, OUTSIDE_ADDRESS  # noqa: E402
from outside_net import NODE_ADDRESS6, OUTSIDE_ADDRESS6  # noqa: E402

RESOLVER = "127.0.0.53"
ANSWER = "192.0.2.53"  # what the home's resolver says every name is
GOSSIP_PORT, PEER_PORT = 4700, 4701  # the loopback cluster's (the daemons' defaults)

JOB = r"""
import os, socket, struct, sys, time

def wait(name):
    while not os.path.exists(name):
        time.sleep(0.05)

def split(where):
    address, port = where.rsplit(":", 1)
    return address.strip("[]"), int(port)

def family(address):
    return socket.AF_INET6 if ":" in address else socket.AF_INET

def udp(where, timeout):
    address, port = split(where)
    with socket.socket(family(address), socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        s.sendto(b"hello", (address, port))
        try:
            reply, peer = s.recvfrom(2048)
        except socket.timeout:
            return "timeout"
        except OSError as e:
            return type(e).__name__
        frm = f"[{peer[0]}]:{peer[1]}" if ":" in peer[0] else f"{peer[0]}:{peer[1]}"
        return f"{reply.decode()} from {'target' if frm == where else frm}"

def closed(where):
    # A connected socket to a closed port: the target's "port unreachable" is ECONNREFUSED.
    address, port = split(where)
    with socket.socket(family(address), socket.SOCK_DGRAM) as s:
        s.settimeout(10)
        s.connect((address, port))
        s.send(b"anyone?")
        try:
            s.recv(100)
            return "reply"
        except socket.timeout:
            return "timeout"
        except OSError as e:
            return type(e).__name__

def tcp(where):
    try:
        with socket.create_connection(split(where), timeout=20) as s:
            s.sendall(b"hello\n")
            return s.makefile().readline().strip() or "eof"
    except OSError as e:
        return type(e).__name__

def lookup(name):
    # The C library's resolver, with the resolv.conf the job reads (its home's).
    try:
        return socket.getaddrinfo(name, 80, socket.AF_INET, socket.SOCK_STREAM)[0][4][0]
    except OSError as e:
        return f"{type(e).__name__} {e}"

def resolve(where, name):
    # A DNS query for NAME's A record, as a stub resolver sends it, and the answer's address.
    address, port = split(where)
    qid = os.getpid() & 0xffff
    question = b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0"
    question += struct.pack(">HH", 1, 1)
    query = struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 0) + question
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(10)
        s.sendto(query, (address, port))
        try:
            reply = s.recv(2048)
        except OSError as e:
            return type(e).__name__
    rid, flags, qd, an = struct.unpack(">HHHH", reply[:8])
    if rid != qid or not flags & 0x8000 or an < 1 or reply[12:12 + len(question)] != question:
        return f"bad reply {reply!r}"
    return socket.inet_ntoa(reply[-4:])

def many(where, count):
    # COUNT sockets, each with one datagram answered, all held at once: more flows than a
    # guest may have.
    address, port = split(where)
    sockets, answered = [], 0
    for _ in range(count):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sockets.append(s)
        s.settimeout(20)
        s.sendto(b"m", (address, port))
        try:
            answered += s.recv(100) == b"echo m"
        except OSError:
            pass
    print(f"many: {answered}", flush=True)
    wait("checked-many")
    for s in sockets:
        s.close()

echo, own, gossip, peer, echo6, tcp6, home6, home6udp, crowd, shut, shut6 = sys.argv[1:12]
many(crowd, 80)
for i in range(3):
    wait(f"go{i}")
    print(f"{i} echo: {udp(echo, 20)}", flush=True)
    print(f"held {i}", flush=True)
    wait(f"checked{i}")
    print(f"{i} resolve: {resolve('127.0.0.53:53', f'round{i}.home.example')}", flush=True)
    print(f"{i} getaddrinfo: {lookup(f'gai{i}.home.example')}", flush=True)
    print(f"{i} own: {udp(own, 2)}", flush=True)
    print(f"{i} gossip: {udp(gossip, 2)}", flush=True)
    print(f"{i} peer: {udp(peer, 2)}", flush=True)
    print(f"{i} closed: {closed(shut)}", flush=True)
    if echo6 != "-":
        print(f"{i} echo6: {udp(echo6, 20)}", flush=True)
        print(f"{i} tcp6: {tcp(tcp6)}", flush=True)
        print(f"{i} home6: {tcp(home6)}", flush=True)
        print(f"{i} home6 udp: {udp(home6udp, 20)}", flush=True)
        print(f"{i} closed6: {closed(shut6)}", flush=True)
    print(f"{i} done", flush=True)
"""

# A job that waits for the file "go", then sends one datagram to argv[1] and prints the
# answer (or "timeout" after a minute).
LANDING_JOB = r"""
import os, socket, sys, time
while not os.path.exists("go"):
    time.sleep(0.05)
address, port = sys.argv[1].rsplit(":", 1)
with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
    s.settimeout(60)
    s.sendto(b"hello", (address, int(port)))
    try:
        print(s.recvfrom(2048)[0].decode())
    except socket.timeout:
        print("timeout")
"""

# A UDP server: binds argv[1] (an address, port 0 for any), writes "PORT" to argv[2] once
# it does, logs each datagram's sender to argv[3] and echoes "echo DATAGRAM".
UDP_ECHO = r"""
import os, socket, sys
address, port = sys.argv[1].rsplit(":", 1)
server = socket.socket(socket.AF_INET6 if ":" in address else socket.AF_INET, socket.SOCK_DGRAM)
server.bind((address, int(port)))
with open(sys.argv[2] + ".tmp", "w") as f:
    f.write(f"{server.getsockname()[1]}\n")
os.rename(sys.argv[2] + ".tmp", sys.argv[2])
while True:
    data, peer = server.recvfrom(2048)
    with open(sys.argv[3], "a") as log:
        log.write(f"{peer[0]}\n")
    server.sendto(b"echo " + data, peer)
"""

# The home's resolver: answers every A query (argv[1] its address:port) with ANSWER, and
# logs each name asked to argv[3].
RESOLVER_SERVER = r"""
import os, socket, struct, sys
address, port = sys.argv[1].rsplit(":", 1)
server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
server.bind((address, int(port)))
with open(sys.argv[2] + ".tmp", "w") as f:
    f.write(f"{server.getsockname()[1]}\n")
os.rename(sys.argv[2] + ".tmp", sys.argv[2])
while True:
    query, peer = server.recvfrom(2048)
    qid, flags, qd = struct.unpack(">HHH", query[:6])
    at, labels = 12, []
    while query[at]:
        labels.append(query[at + 1:at + 1 + query[at]].decode())
        at += 1 + query[at]
    question = query[12:at + 5]
    with open(sys.argv[3], "a") as log:
        log.write(".".join(labels) + "\n")
    answer = b"\xc0\x0c" + struct.pack(">HHIH", 1, 1, 60, 4) + socket.inet_aton("%s")
    server.sendto(struct.pack(">HHHHHH", qid, 0x8180, 1, 1, 0, 0) + question + answer, peer)
""" % ANSWER

# A TCP server: listens on argv[1], writes "PORT" to argv[2], logs each peer to argv[3] and
# answers one line with "echo LINE".
TCP_ECHO = harness.LISTENING_SERVER.replace("socket.socket()", (
    "socket.socket(socket.AF_INET6 if ':' in sys.argv[1] else socket.AF_INET)")) + r"""
def serve(conn):
    with conn:
        conn.sendall(b"echo " + conn.makefile("rb").readline())
while True:
    conn, peer = server.accept()
    with open(sys.argv[3], "a") as log:
        log.write(f"{peer[0]}\n")
    threading.Thread(target=serve, args=(conn,), daemon=True).start()
"""


def has_ipv6():
    try:
        socket.socket(socket.AF_INET6, socket.SOCK_DGRAM).close()
        return True
    except OSError:
        return False


class GuestUdpTest(outside_net.OutsideNetTest):
    # The tests move the job themselves and check where it runs: the balancer must not
    # (a guest with much I/O and little CPU goes home by itself).
    cluster_settings = ("balance.automatic=false",)

    def test_datagram_sent_as_the_job_lands(self):
        """A job restored on a node runs before that node's daemon takes it over (the
        fault point adopt-hold holds the taking-over for 5 s): a datagram it sends then
        waits for its carrier and is answered, not lost."""
        c = self.c
        entry = pwd.getpwnam(self.user)
        c.kill("node2")
        c.start("node2", faults="adopt-hold")

        def node2_as_it_was():
            c.kill("node2")
            c.start("node2")
            harness.wait_until_meshed(c)
        self.addCleanup(node2_as_it_was)
        harness.wait_until_meshed(c)
        port, log = self.server("landing", UDP_ECHO, "127.0.0.1:0", user=self.user)
        work = os.path.join(c.node("node1")["data"], "landing")
        os.makedirs(work)
        os.chown(work, entry.pw_uid, entry.pw_gid)
        with open(os.path.join(work, "job.py"), "w") as f:
            f.write(LANDING_JOB)
        go = os.path.join(work, "go")
        self.addCleanup(lambda: open(go, "w").close())
        mosrun = shlex.join(["runuser", "-u", self.user, "--", "mosrun", "-L",
                             "python3", "job.py", f"127.0.0.1:{port}"])
        c.run("node1", "sh", "-c", f"cd /data/landing && ({mosrun} > out 2> err; "
                                   "echo $? > status) >/dev/null 2>&1 & echo started")
        pid = c.wait_for(lambda: next((j["pid"] for j in harness.jobs(c)
                                       if j["user"] == self.user and j["state"] == "running"),
                                      None), 60, "the job running")
        moved = c.run("node1", "mosmigrate", str(pid), "node2", check=False)
        self.assertEqual(moved.returncode, 0, moved.stdout + moved.stderr)
        self.assertIn("now runs on node2", moved.stdout)
        # The job runs on node2 and its daemon has not taken it over: it sends now.
        c.wait_for(lambda: f"fault point adopt-hold: job {pid} runs here" in c.log("node2"),
                   30, "node2 to hold the job it restored")
        if f"job {pid} restored here" in c.log("node2"):
            # The 5 s went by before this test could look (a machine that slow): the
            # datagram would be sent to a carrier that is there already.
            self.skipTest("node2 took the job over before the test could send in the hold")
        open(go, "w").close()
        out, status = os.path.join(work, "out"), os.path.join(work, "status")
        c.wait_for(lambda: harness.read_text(status), 120, "the job's end")
        self.assertEqual(harness.read_text(status).strip(), "0",
                         harness.read_text(os.path.join(work, "err")))
        self.assertEqual(harness.read_text(out), "echo hello\n")
        self.assertEqual(harness.read_text(log), "127.0.0.1\n")

    def test_guest_udp_and_ipv6(self):
        c = self.c
        entry = pwd.getpwnam(self.user)
        ipv6 = has_ipv6()
        outside = self.make_outside(ipv6)
        enter_outside = ["nsenter", "-t", str(outside), "-n", "--"]
        echo_port, echo_log = self.server("echo", UDP_ECHO, f"{OUTSIDE_ADDRESS}:0",
                                          prefix=enter_outside)
        own_port, own_log = self.server("own", UDP_ECHO, f"{NODE_ADDRESS}:0")
        # Outside, on the daemons' port numbers: no daemon there, a plain echo.
        _, gossip_log = self.server("gossip", UDP_ECHO, f"{OUTSIDE_ADDRESS}:{GOSSIP_PORT}",
                                    prefix=enter_outside)
        _, peer_log = self.server("peer", UDP_ECHO, f"{OUTSIDE_ADDRESS}:{PEER_PORT}",
                                  prefix=enter_outside)
        _, resolver_log = self.server("resolver", RESOLVER_SERVER, f"{RESOLVER}:53")
        crowd_port, crowd_log = self.server("crowd", UDP_ECHO, f"{OUTSIDE_ADDRESS}:0",
                                            prefix=enter_outside)
        args = [f"{OUTSIDE_ADDRESS}:{echo_port}", f"{NODE_ADDRESS}:{own_port}",
                f"{OUTSIDE_ADDRESS}:{GOSSIP_PORT}", f"{OUTSIDE_ADDRESS}:{PEER_PORT}"]
        if ipv6:
            echo6_port, echo6_log = self.server("echo6", UDP_ECHO, f"{OUTSIDE_ADDRESS6}:0",
                                                prefix=enter_outside)
            tcp6_port, tcp6_log = self.server("tcp6", TCP_ECHO, OUTSIDE_ADDRESS6,
                                              prefix=enter_outside)
            home6_port, home6_log = self.server("home6", TCP_ECHO, "::1", user=self.user)
            home6udp_port, home6udp_log = self.server("home6udp", UDP_ECHO, "::1:0",
                                                      user=self.user)
            args += [f"[{OUTSIDE_ADDRESS6}]:{echo6_port}", f"[{OUTSIDE_ADDRESS6}]:{tcp6_port}",
                     f"[::1]:{home6_port}", f"[::1]:{home6udp_port}"]
        else:
            args += ["-", "-", "-", "-"]
        args.append(f"{OUTSIDE_ADDRESS}:{crowd_port}")
        # Nothing listens on the discard port outside: its kernel answers "port unreachable".
        args += [f"{OUTSIDE_ADDRESS}:9", f"[{OUTSIDE_ADDRESS6}]:9" if ipv6 else "-"]

        # The home's resolv.conf names its resolver on its loopback, as systemd-resolved's
        # stub does (in node1's mount namespace only: the host's stays as it is).
        with open(os.path.join(c.node("node1")["data"], "resolv.conf"), "w") as f:
            f.write(f"nameserver {RESOLVER}\noptions attempts:1 timeout:10\n")
        c.run("node1", "mount", "--bind", "/data/resolv.conf", "/etc/resolv.conf")
        self.addCleanup(c.run, "node1", "umount", "/etc/resolv.conf", check=False)

        work = os.path.join(c.node("node1")["data"], "udp")
        os.makedirs(work)
        os.chown(work, entry.pw_uid, entry.pw_gid)
        with open(os.path.join(work, "job.py"), "w") as f:
            f.write(JOB)
        self.addCleanup(lambda: [open(os.path.join(work, name), "w").close()
                                 for name in ["checked-many"] + [
                                     f"{name}{i}" for i in range(3) for name in ("go", "checked")]])
        mosrun = shlex.join(["runuser", "-u", self.user, "--", "mosrun", "-r", "node2",
                             "python3", "job.py", *args])
        c.run("node1", "sh", "-c", f"cd /data/udp && ({mosrun} > out 2> err; "
                                   "echo $? > status) >/dev/null 2>&1 & echo started")
        pid = c.wait_for(lambda: next((j["pid"] for j in harness.jobs(c)
                                       if j["user"] == self.user and j["where"] == "node2"
                                       and j["state"] == "running"), None),
                         60, "the job running on node2")
        out = os.path.join(work, "out")
        # 80 flows at once, each answered: the node holds at most 64 of them (the oldest
        # ended as more came), all the user's.
        c.wait_for(lambda: "many:" in harness.read_text(out), 120, "the job's 80 flows")
        self.assertEqual(harness.read_text(crowd_log), f"{NODE_ADDRESS}\n" * 80)

        def crowd_sockets():
            return subprocess.run(["ss", "-uanHe", "dst", f"{OUTSIDE_ADDRESS}:{crowd_port}"],
                                  capture_output=True, text=True, check=True).stdout.splitlines()
        c.wait_for(lambda: len(crowd_sockets()) <= 64, 10, "the flows beyond 64 to end")
        self.assertTrue(all(f"uid:{entry.pw_uid}" in line for line in crowd_sockets()))
        self.assertGreaterEqual(c.log("node2").count(f"job {pid}: 65 UDP flows at once: "), 16)
        open(os.path.join(work, "checked-many"), "w").close()
        rounds = ["node2", "node1", "node2"]
        for i, where in enumerate(rounds):
            if i:
                target = "home" if where == "node1" else where
                moved = c.run("node1", "mosmigrate", str(pid), target, check=False)
                self.assertEqual(moved.returncode, 0, moved.stdout + moved.stderr)
                self.assertIn(f"now runs on {where}", moved.stdout)
            open(os.path.join(work, f"go{i}"), "w").close()
            def what_was_said():
                # What the nodes said of the job's flows, the job's output and the echo
                # server's log.
                said = [line for node in ("node1", "node2") for line in c.log(node).splitlines()
                        if f"job {pid}" in line or " warning: " in line or " error: " in line]
                return (f"out: {harness.read_text(out)!r}\necho log: "
                        f"{harness.read_text(echo_log)!r}\n" + "\n".join(said[-60:]))
            try:
                c.wait_for(lambda: f"held {i}" in harness.read_text(out), 60,
                           f"round {i}'s echo")
            except AssertionError as e:
                raise AssertionError(f"{e}\n{what_was_said()}") from None
            # The job's flow outside is the user's socket, from the node's address (at
            # home the job's own socket, closed by now).
            self.assertEqual(harness.read_text(echo_log), f"{NODE_ADDRESS}\n" * (i + 1),
                             what_was_said())
            if where != "node1":
                ss = subprocess.run(["ss", "-uanHe", "dst", OUTSIDE_ADDRESS],
                                    capture_output=True, text=True, check=True).stdout
                self.assertIn(f"uid:{entry.pw_uid}", ss)
            open(os.path.join(work, f"checked{i}"), "w").close()
            c.wait_for(lambda: f"{i} done" in harness.read_text(out), 120, f"round {i}")
        status = os.path.join(work, "status")
        c.wait_for(lambda: harness.read_text(status), 120, "the job's end")
        self.assertEqual(harness.read_text(status).strip(), "0",
                         harness.read_text(os.path.join(work, "err")))
        expected = ["many: 80"]
        for i, where in enumerate(rounds):
            away = where != "node1"
            refused = "timeout" if away else "echo hello from target"
            expected += [f"{i} echo: echo hello from target", f"held {i}",
                         f"{i} resolve: {ANSWER}", f"{i} getaddrinfo: {ANSWER}",
                         f"{i} own: {refused}",
                         f"{i} gossip: {refused}", f"{i} peer: {refused}",
                         f"{i} closed: ConnectionRefusedError"]
            if ipv6:
                expected += [f"{i} echo6: echo hello from target", f"{i} tcp6: echo hello",
                             f"{i} home6: echo hello", f"{i} home6 udp: echo hello from target",
                             f"{i} closed6: ConnectionRefusedError"]
            expected.append(f"{i} done")
        self.assertEqual(harness.read_text(out).splitlines(), expected)
        # The home's resolver answered every round; the node's own server and the daemons'
        # port numbers outside saw the job only while it was at home.
        self.assertEqual(harness.read_text(resolver_log),
                         "".join(f"round{i}.home.example\ngai{i}.home.example\n"
                                 for i in range(3)))
        self.assertEqual(harness.read_text(own_log), f"{NODE_ADDRESS}\n")
        self.assertEqual(harness.read_text(gossip_log), f"{NODE_ADDRESS}\n")
        self.assertEqual(harness.read_text(peer_log), f"{NODE_ADDRESS}\n")
        if ipv6:
            self.assertEqual(harness.read_text(echo6_log), f"{NODE_ADDRESS6}\n" * 3)
            self.assertEqual(harness.read_text(tcp6_log), f"{NODE_ADDRESS6}\n" * 3)
            self.assertEqual(harness.read_text(home6_log), "::1\n" * 3)
            self.assertEqual(harness.read_text(home6udp_log), "::1\n" * 3)
        log2 = c.log("node2")
        lines = [
            (f"job {pid}: UDP flow to {OUTSIDE_ADDRESS}:{echo_port} sent from this node "
             f"(uid {entry.pw_uid})", 2),
            # Two rounds away, each with a query of its own and one of getaddrinfo's.
            (f"job {pid}: UDP flow to {RESOLVER}:53 carried to node1", 4),
            (f"job {pid}: UDP to {NODE_ADDRESS}:{own_port} not sent: "
             f"{NODE_ADDRESS} is an address of this node", 2),
            (f"job {pid}: UDP to {OUTSIDE_ADDRESS}:{GOSSIP_PORT} not sent: "
             f"port {GOSSIP_PORT} is a port of the node daemons", 2),
            (f"job {pid}: UDP to {OUTSIDE_ADDRESS}:{PEER_PORT} not sent: "
             f"port {PEER_PORT} is a port of the node daemons", 2)]
        if ipv6:
            lines += [(f"job {pid}: UDP flow to [{OUTSIDE_ADDRESS6}]:{echo6_port} sent from "
                       f"this node (uid {entry.pw_uid})", 2),
                      (f"job {pid}: connection to [{OUTSIDE_ADDRESS6}]:{tcp6_port} made from "
                       f"this node (uid {entry.pw_uid})", 2)]
        for line, times in lines:
            self.assertEqual(log2.count(line), times, line)


if __name__ == "__main__":
    harness.main()
