#!/usr/bin/python3
"""Strangers against a node, tried from an unprivileged user on a loopback cluster: 500
idle connections to the peer port cost the daemon no thread, stop no job and are closed
by the handshake deadline; a connection for which no thread can be had costs only
itself; a gossip datagram recorded on the wire and played again seconds later is
dropped as a replay and never answered."""

import hashlib
import hmac
import json
import os
import re
import socket
import struct
import subprocess
import tempfile
import time
import unittest

import harness

SETTINGS = ["gossip.interval_ms=200"]
PYTHON = "/usr/bin/python3"  # the test's own python may live where the user cannot read
# A stranger's address on the loopback network: not one of any cluster's nodes
# (127.77.<slot>.<node>), whose own connections all come from 127.0.0.1.
STRANGER = "127.66.0.9"
GOSSIP_PORT = 4700
PEER_PORT = 4701

# Opens one idle connection, then 500 more, from STRANGER; reports; then waits for the
# idle one to be closed by the node, and reports how long that took.
FLOOD = r"""
import json, socket, sys, time
target = (sys.argv[1], int(sys.argv[2]))
source = sys.argv[3]
def connect():
    s = socket.socket()
    s.bind((source, 0))
    s.settimeout(10)
    s.connect(target)
    return s
idle = connect()
opened_at = time.monotonic()
held, failed = [], 0
for _ in range(500):
    try:
        held.append(connect())
    except OSError:
        failed += 1
print(json.dumps({"opened": len(held), "failed": failed}), flush=True)
idle.settimeout(60)
try:
    data = idle.recv(1)
    how = "closed" if data == b"" else "data"
except ConnectionResetError:
    how = "reset"
except socket.timeout:
    how = "still open"
print(json.dumps({"idle": how, "after_s": time.monotonic() - opened_at}), flush=True)
sys.stdin.read()  # holds the others until the test is done
"""

# Sends each datagram (hex) to the target from its own socket and reports, for each,
# whether anything came back within the given seconds.
REPLAY = r"""
import json, socket, sys
target = (sys.argv[1], int(sys.argv[2]))
wait_s = float(sys.argv[3])
answers = []
for line in sys.stdin:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        s.settimeout(wait_s)
        s.sendto(bytes.fromhex(line.strip()), target)
        try:
            data, _ = s.recvfrom(65536)
            answers.append(data[:4].decode("latin-1"))
        except socket.timeout:
            answers.append(None)
print(json.dumps(answers), flush=True)
"""


class Stranger:
    """A throwaway unprivileged user, removed afterwards."""

    def __enter__(self):
        self.name = f"hwpeer{os.getpid() % 100000}"
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin",
                        self.name], check=True, capture_output=True)
        self.dir = tempfile.mkdtemp(prefix="homeward-stranger-")
        os.chmod(self.dir, 0o755)
        return self

    def __exit__(self, *exc):
        harness.remove_user(self.name)
        subprocess.run(["rm", "-rf", self.dir])
        return False

    def script(self, name, text):
        path = os.path.join(self.dir, name)
        with open(path, "w") as f:
            f.write(text)
        os.chmod(path, 0o644)
        return path

    def popen(self, *args, **kwargs):
        return subprocess.Popen(["setpriv", f"--reuid={self.name}", f"--regid={self.name}",
                                 "--clear-groups", "--", PYTHON, *args], text=True,
                                cwd=self.dir, **kwargs)


def daemon_pid(cluster, node):
    status = cluster.run(node, "mosctl", "status").stdout
    return int(next(l.split()[1] for l in status.splitlines() if l.startswith("pid")))


def threads(pid):
    with open(f"/proc/{pid}/status") as f:
        return int(next(l.split()[1] for l in f if l.startswith("Threads:")))


def wait_formed(cluster):
    cluster.wait_for(lambda: cluster.run("node1", "mosrun", "-r", "node2", "true",
                                         check=False).returncode == 0,
                     60, "node2 to run node1's jobs")


class IdlePeerConnections(unittest.TestCase):
    def test_500_idle_connections_stop_nothing(self):
        with harness.LoopCluster(2, settings=SETTINGS) as cluster, Stranger() as stranger:
            wait_formed(cluster)
            pid = daemon_pid(cluster, "node2")
            before = threads(pid)
            flood = stranger.popen(stranger.script("flood.py", FLOOD),
                                   cluster.node("node2")["address"], str(PEER_PORT), STRANGER,
                                   stdin=subprocess.PIPE, stdout=subprocess.PIPE)
            try:
                opened = json.loads(flood.stdout.readline())
                self.assertEqual(opened["opened"] + opened["failed"], 500, opened)
                # Before the deadline closes anything: the connections cost no thread.
                during = threads(pid)
                self.assertLessEqual(during, before + 8,
                                     f"{during} threads with 500 connections, {before} before")
                # A job still goes to node2 and back, and node2's daemon is the same one.
                # (mosrun -r fails when it cannot reach node2's jobs service.)
                result = cluster.run("node1", "mosrun", "-r", "node2", "echo", "ran")
                self.assertEqual(result.stdout, "ran\n")
                self.assertEqual(daemon_pid(cluster, "node2"), pid)
                # The connection that never said anything is closed by the deadline (5 s
                # from accept, the default), not left to hold anything.
                idle = json.loads(flood.stdout.readline())
                self.assertIn(idle["idle"], ("closed", "reset"), idle)
                self.assertGreaterEqual(idle["after_s"], 4.0, idle)
                self.assertLess(idle["after_s"], 20.0, idle)
                self.assertLessEqual(threads(pid), before + 8)
            finally:
                flood.stdin.close()
                flood.wait(timeout=30)
                flood.stdout.close()
            log = cluster.log("node2")
            self.assertIn("refused peer", log)
            self.assertRegex(log, r"\d+ over the limit for their address")
            # The refusals were reported in a few lines, not one per connection.
            self.assertLess(log.count("refused peer"), 10)
            self.assertEqual(daemon_pid(cluster, "node2"), pid)
            cluster.run("node1", "mosrun", "-r", "node2", "true")


class NoThreadForAPeer(unittest.TestCase):
    def test_a_failed_thread_costs_only_its_connection(self):
        # Every daemon runs with the fault point that makes a service thread fail, as it
        # would under a pids limit: each authenticated connection is closed unserved.
        with harness.LoopCluster(2, settings=SETTINGS, faults="peer-thread") as c:
            c.wait_for(lambda: any(n["name"] == "node2" and n["alive"] for n in json.loads(
                c.run("node1", "mosmon", "--json").stdout)["nodes"]), 60,
                       "node1 to see node2 alive")
            pid = daemon_pid(c, "node2")
            failed = c.run("node1", "mosrun", "-r", "node2", "true", check=False)
            self.assertNotEqual(failed.returncode, 0)
            # (Refusals are logged once per 10 s with the latest one's detail, which
            # may be a homefs connection's.)
            c.wait_for(lambda: "no thread for its" in c.log("node2"), 30,
                       "node2 to log a connection it could not serve")
            # The daemons are the same processes and still answer.
            self.assertEqual(daemon_pid(c, "node2"), pid)
            c.run("node1", "mosctl", "status")


def sniff_gossip(source, dest, kind, timeout):
    """Returns the UDP payload of the first gossip datagram of `kind` from source to
    dest (address, port) seen on lo, read with a packet socket as it crosses."""
    with socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(0x0800)) as raw:
        raw.bind(("lo", 0))
        raw.settimeout(1)
        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                packet, where = raw.recvfrom(65536)
            except socket.timeout:
                continue
            if where[2] == socket.PACKET_OUTGOING:  # lo shows each packet twice
                continue
            header = (packet[0] & 0x0F) * 4
            if packet[9] != 17 or socket.inet_ntoa(packet[12:16]) != source:
                continue
            if (socket.inet_ntoa(packet[16:20]), struct.unpack("!H", packet[header + 2:header + 4])[0]) != dest:
                continue
            payload = packet[header + 8:]
            if payload[:4] != b"HWGS" or payload[4:6] != b"\x00\x02":
                continue
            # Cap'n Proto after the 16-byte header: segment table, root pointer, then the
            # Datagram struct, whose second 16-bit field is its kind.
            root = struct.unpack("<Q", payload[24:32])[0]
            start = 32 + 8 * ((root >> 2) & 0x3FFFFFFF)
            if struct.unpack("<H", payload[start + 2:start + 4])[0] == kind:
                return payload
    raise AssertionError(f"no gossip datagram from {source} to {dest} within {timeout}s")


def restamp(datagram, key, stamp_us):
    """The datagram with another stamp and a fresh MAC: what only a key holder can make."""
    body = datagram[:8] + struct.pack("!Q", stamp_us) + datagram[16:-32]
    return body + hmac.new(key, body, hashlib.sha512).digest()[:32]


class ReplayedGossip(unittest.TestCase):
    def test_a_datagram_played_again_is_dropped_unanswered(self):
        with harness.LoopCluster(2, settings=SETTINGS) as cluster, Stranger() as stranger:
            wait_formed(cluster)
            node1, node2 = (cluster.node(n)["address"] for n in ("node1", "node2"))
            with open(cluster.info["key_file"]) as f:
                key = bytes.fromhex(f.read().strip())
            recorded = sniff_gossip(node1, (node2, GOSSIP_PORT), kind=0, timeout=30)
            recorded_at = time.time()
            # Controls, made with the key. A fresh ping is answered where it came from,
            # so the silence below means refusal, not a deaf listener. It is stamped
            # 0.3 s ahead of the clock, so that it is newer than whatever node1 sent
            # meanwhile (node2 then drops node1's own datagrams of the next 0.3 s, which
            # gossip shrugs off); it is sent from here at once, as a stranger's process
            # could take longer than that to start.
            fresh = restamp(recorded, key, int(time.time() * 1e6) + 300_000)
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.bind(("127.0.0.1", 0))
                s.settimeout(5)
                s.sendto(fresh, (node2, GOSSIP_PORT))
                self.assertEqual(s.recvfrom(65536)[0][:4], b"HWGS", "a fresh ping is answered")
            # One stamped a minute ago is out of the window.
            old = restamp(recorded, key, int(time.time() * 1e6) - 60_000_000)
            replay = stranger.script("replay.py", REPLAY)

            def play(*datagrams, wait_s):
                process = stranger.popen(replay, node2, str(GOSSIP_PORT), str(wait_s),
                                         stdin=subprocess.PIPE, stdout=subprocess.PIPE)
                out, _ = process.communicate("".join(d.hex() + "\n" for d in datagrams),
                                             timeout=60)
                self.assertEqual(process.returncode, 0)
                return json.loads(out)

            # The attack: the recorded datagram again, 5 s after it crossed the wire
            # (the delay is the attack's, not a wait for readiness), and the control
            # datagram that was just accepted, again.
            time.sleep(max(0.0, recorded_at + 5 - time.time()))
            self.assertEqual(play(recorded, fresh, old, wait_s=3), [None, None, None])
            cluster.wait_for(lambda: re.search(r"\d+ replayed", cluster.log("node2")), 30,
                             "node2 to report the replays")
            cluster.wait_for(lambda: "out of the time window" in cluster.log("node2"), 30,
                             "node2 to report the stale datagram")
            # The cluster itself goes on.
            cluster.run("node1", "mosrun", "-r", "node2", "true")


if __name__ == "__main__":
    harness.main()
