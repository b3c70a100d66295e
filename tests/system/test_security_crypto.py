#!/usr/bin/python3
"""Peer traffic is encrypted: on a 2-node loopback cluster, every byte crossing lo to or
from the nodes' peer ports is captured with a packet socket while a job away from home
prints a marker and reads, through homefs, a file full of another marker. The job's
output is right, the handshake is seen on the wire (so the capture works), and neither
marker is anywhere in the captured bytes."""

import os
import secrets
import socket
import struct
import threading
import unittest

import harness

SETTINGS = ["gossip.interval_ms=200"]
PEER_PORT = 4701


class Capture:
    """Collects the TCP payloads to or from `port` on `addresses`, as they cross lo."""

    def __init__(self, addresses, port):
        self.addresses = set(addresses)
        self.port = port
        self.data = bytearray()
        self.packets = 0
        self.stop = threading.Event()
        self.raw = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(0x0800))
        self.raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 << 20)
        self.raw.bind(("lo", 0))
        self.raw.settimeout(0.2)
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        while not self.stop.is_set():
            try:
                packet, where = self.raw.recvfrom(65536)
            except socket.timeout:
                continue
            if where[2] == socket.PACKET_OUTGOING:  # lo shows each packet twice
                continue
            if len(packet) < 20 or packet[9] != 6:  # TCP only
                continue
            header = (packet[0] & 0x0F) * 4
            source = socket.inet_ntoa(packet[12:16])
            dest = socket.inet_ntoa(packet[16:20])
            sport, dport = struct.unpack("!HH", packet[header:header + 4])
            if not ({source, dest} & self.addresses) or self.port not in (sport, dport):
                continue
            tcp_header = (packet[header + 12] >> 4) * 4
            payload = packet[header + tcp_header:]
            if payload:
                self.packets += 1
                self.data += payload

    def close(self):
        self.stop.set()
        self.thread.join()
        self.raw.close()


class EncryptedTraffic(unittest.TestCase):
    def test_job_output_and_file_contents_never_cross_in_clear(self):
        out_marker = "HWOUT" + secrets.token_hex(12)
        file_marker = "HWFILE" + secrets.token_hex(12)
        with harness.LoopCluster(2, settings=SETTINGS) as c:
            # 1 MiB of the file marker, written on the home itself (not over the network).
            line = file_marker + "\n"
            c.run("node1", "sh", "-c", "cat > /data/secret.txt",
                  input=line * ((1 << 20) // len(line)))
            c.run("node1", "sh", "-c", "echo home-marker > /data/marker")
            c.wait_for(lambda: c.run("node2", "cat", "/mosix/home/node1/data/marker",
                                     check=False).stdout == "home-marker\n",
                       30, "node2 to mount node1's files")
            addresses = [c.node(n)["address"] for n in ("node1", "node2")]
            capture = Capture(addresses, PEER_PORT)
            try:
                # The output marker is put together by the job: its command line (which
                # crosses too) holds it only in two pieces.
                head, tail = out_marker[:5], out_marker[5:]
                script = (f'echo "{head}""$0"; grep -c {file_marker[:6]} /data/secret.txt; '
                          'md5sum < /data/secret.txt')
                result = c.run("node1", "sh", "-c",
                               f"cd /data && mosrun -r node2 sh -c '{script}' {tail}")
            finally:
                capture.close()
            expected_md5 = c.run("node1", "sh", "-c", "md5sum < /data/secret.txt").stdout
            lines = (1 << 20) // len(line)
            self.assertEqual(result.stdout, f"{out_marker}\n{lines}\n{expected_md5}")
            captured = bytes(capture.data)
            # The capture saw the connections: the handshakes' hellos are in clear.
            self.assertTrue(b"HWPEER03" in captured, "no handshake in the capture")
            # The file crossed (it was read on node2 through homefs), so the capture
            # holds at least its size.
            self.assertGreater(len(captured), 1 << 20, f"{capture.packets} packets")
            # (Checked as booleans: a failure must not print megabytes of capture.)
            for marker in (out_marker, file_marker, file_marker[6:], "home-marker"):
                self.assertFalse(marker.encode() in captured,
                                 f"{marker} crossed the peer port in clear")
            # Nothing failed to authenticate on the way.
            for node in ("node1", "node2"):
                self.assertNotIn("failed to authenticate", c.log(node))


if __name__ == "__main__":
    harness.main()
