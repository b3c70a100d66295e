#!/usr/bin/python3
"""Gossip on loopback clusters: nodes find each other through one seed, a killed node is
declared dead and rejoins when restarted, a node with another cluster's key is never
listed, and a burst of garbage datagrams changes nothing."""

import json
import os
import random
import signal
import socket
import subprocess
import tempfile
import time
import unittest

import harness

# Fast rounds so that the tests take seconds; suspicion and death scale with them.
SETTINGS = ["gossip.interval_ms=200", "gossip.suspect_ms=1000", "gossip.dead_ms=2500"]
WAIT_S = 40  # generous: the machine is shared and noisy


def picture(cluster, node):
    result = cluster.run(node, "mosmon", "--json", check=False)
    if result.returncode != 0:
        return None
    return {n["name"]: n for n in json.loads(result.stdout)["nodes"]}


def alive_names(cluster, node):
    nodes = picture(cluster, node) or {}
    return sorted(name for name, n in nodes.items() if n["alive"])


class GossipTest(unittest.TestCase):
    def test_nodes_see_each_other_and_a_dead_node_rejoins(self):
        with harness.LoopCluster(3, settings=SETTINGS) as cluster:
            everyone = ["node1", "node2", "node3"]
            for node in cluster.nodes:
                cluster.wait_for(lambda: alive_names(cluster, node) == everyone, WAIT_S,
                                 f"{node} to see all three nodes alive")
            nodes = picture(cluster, "node1")
            self.assertEqual(len(nodes), 3)
            me = nodes["node1"]
            self.assertTrue(me["self"])
            self.assertEqual(me["age_ms"], 0)
            self.assertEqual(me["address"], cluster.node("node1")["address"])
            for name, n in nodes.items():
                for field in ("name", "address", "alive", "load", "cpus", "speed",
                              "mem_free_mb", "mem_total_mb", "jobs", "guests", "age_ms"):
                    self.assertIn(field, n)
                self.assertGreaterEqual(n["cpus"], 1)
                self.assertGreater(n["speed"], 0)
                self.assertGreater(n["mem_total_mb"], 0)
                self.assertLessEqual(n["mem_free_mb"], n["mem_total_mb"])
                self.assertEqual(n["jobs"], 0)
                self.assertEqual(n["guests"], 0)

            cluster.kill("node3")
            for node in ("node1", "node2"):
                cluster.wait_for(lambda: alive_names(cluster, node) == ["node1", "node2"],
                                 WAIT_S, f"{node} to declare node3 dead")
                self.assertEqual(picture(cluster, node)["node3"]["state"], "dead")
            self.assertIn("node3 (", cluster.log("node1"))

            cluster.start("node3")
            for node in cluster.nodes:
                cluster.wait_for(lambda: alive_names(cluster, node) == everyone, WAIT_S,
                                 f"{node} to see node3 back")

    def test_cpuset_node_publishes_one_core(self):
        with harness.LoopCluster(2, cpuset=True, settings=SETTINGS) as cluster:
            cluster.wait_for(lambda: alive_names(cluster, "node1") == ["node1", "node2"],
                             WAIT_S, "node1 to see node2")
            nodes = picture(cluster, "node1")
            self.assertEqual(nodes["node1"]["cpus"], 1)
            self.assertEqual(nodes["node2"]["cpus"], 1)

    def test_memory_limited_nodes_publish_their_limit(self):
        """Two nodes on one host with 512 MB each publish the cgroup's memory, not the
        host's, and a job's memory counts against its own node only."""
        with harness.LoopCluster(2, cpuset=True, memory_mb=512, settings=SETTINGS) as cluster:
            cgroups = harness.cgroup_identities(c for n in cluster.nodes
                                                for c in cluster.node(n)["cgroups"])
            cluster.wait_for(lambda: alive_names(cluster, "node2") == ["node1", "node2"],
                             WAIT_S, "node2 to see node1")
            for n in picture(cluster, "node2").values():
                self.assertEqual(n["cpus"], 1)
                self.assertGreater(n["mem_total_mb"], 500)
                self.assertLessEqual(n["mem_total_mb"], 512)
                self.assertLessEqual(n["mem_free_mb"], n["mem_total_mb"])
            hog = "import time; x = bytearray(200 << 20); time.sleep(30)"
            cluster.run("node1", "sh", "-c", f"timeout 60 python3 -c '{hog}' >/dev/null 2>&1 &")
            cluster.wait_for(lambda: (picture(cluster, "node1") or {}).get("node1", {}).get(
                "mem_free_mb", 512) <= 512 - 150, WAIT_S,
                             "node1's free memory to fall by the 200 MB a job holds")
            self.assertGreater(picture(cluster, "node2")["node2"]["mem_free_mb"], 400)
        harness.assert_cgroups_gone(self, cgroups)

    def test_node_with_another_key_is_never_listed(self):
        with harness.LoopCluster(2, settings=SETTINGS) as cluster:
            cluster.wait_for(lambda: alive_names(cluster, "node1") == ["node1", "node2"],
                             WAIT_S, "the cluster to form")
            with tempfile.TemporaryDirectory(prefix="homeward-intruder-") as tmp:
                intruder = start_intruder(cluster, tmp)
                try:
                    # The intruder knocks at node1 every round; node1 drops it all.
                    cluster.wait_for(lambda: "bad MAC" in cluster.log("node1"), WAIT_S,
                                     "node1 to report datagrams with a bad MAC")
                    cluster.holds_for(2, lambda: all("intruder" not in picture(cluster, node)
                                                     for node in cluster.nodes),
                                      "no node listing the intruder")
                    own = json.loads(run_on(intruder, "mosmon", "--control", intruder.control,
                                           "--json"))["nodes"]
                    self.assertEqual([n["name"] for n in own], ["intruder"])
                finally:
                    stop_intruder(intruder)

    def test_garbage_datagrams_change_nothing(self):
        with harness.LoopCluster(3, settings=SETTINGS) as cluster:
            everyone = ["node1", "node2", "node3"]
            cluster.wait_for(lambda: alive_names(cluster, "node2") == everyone, WAIT_S,
                             "the cluster to form")
            pid = cluster.node("node2")["pid"]
            daemon_pid = status_pid(cluster, "node2")
            rss_before = rss_kb(daemon_pid)
            target = (cluster.node("node2")["address"], 4700)
            rng = random.Random(7)
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                for i in range(3000):
                    kind = i % 5
                    if kind == 0:
                        data = b""
                    elif kind == 1:
                        data = rng.randbytes(rng.randrange(1, 2000))
                    elif kind == 2:  # our header, then noise and a made-up MAC
                        data = b"HWGS\x00\x02\x00\x00" + rng.randbytes(rng.randrange(16, 1500))
                    elif kind == 3:  # an unknown version
                        data = b"HWGS\x00\x09\x00\x00" + rng.randbytes(200)
                    else:  # larger than any gossip datagram
                        data = rng.randbytes(rng.randrange(33 * 1024, 65000))
                    try:
                        sock.sendto(data, target)
                    except OSError:
                        pass
            cluster.wait_for(lambda: "dropped" in cluster.log("node2"), WAIT_S,
                             "node2 to report the dropped datagrams")
            self.assertEqual(status_pid(cluster, "node2"), daemon_pid)
            self.assertEqual(cluster.node("node2")["pid"], pid)
            for node in cluster.nodes:
                cluster.wait_for(lambda: alive_names(cluster, node) == everyone, WAIT_S,
                                 f"{node} to still see everyone alive")
            # Garbage costs counters, not memory (a little slack for the allocator).
            self.assertLess(rss_kb(daemon_pid) - rss_before, 4096)
            log = cluster.log("node2")
            self.assertRegex(log, r"dropped \d+ datagram")


def status_pid(cluster, node):
    status = cluster.run(node, "mosctl", "status").stdout
    return int(next(l.split()[1] for l in status.splitlines() if l.startswith("pid")))


def rss_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


class Intruder:
    def __init__(self, cluster, tmp, process, env):
        self.cluster, self.tmp, self.process, self.env = cluster, tmp, process, env
        self.pid = None


def start_intruder(cluster, tmp):
    """A mosnoded with a key of its own, inside node1's namespace, seeded with node1."""
    key = os.path.join(tmp, "other.key")
    with open(os.open(key, os.O_WRONLY | os.O_CREAT, 0o600), "w") as f:
        f.write(os.urandom(32).hex() + "\n")
    slot = cluster.info["slot"]
    config = os.path.join(tmp, "node.toml")
    with open(config, "w") as f:
        f.write(f'[node]\nname = "intruder"\naddress = "127.77.{slot}.200"\n'
                f'state_dir = "{tmp}/state"\nlog_level = "debug"\n'
                f'[cluster]\nkey_file = "{key}"\n'
                f'seeds = ["{cluster.node("node1")["address"]}"]\n'
                f'[gossip]\ninterval_ms = 200\nsuspect_ms = 1000\ndead_ms = 2500\n')
    env = cluster.env()
    with open(os.path.join(tmp, "log"), "wb") as log:
        process = subprocess.Popen([harness.LOOPCLUSTER, "exec", cluster.dir, "node1", "--",
                                    "mosnoded", "--config", config], env=env,
                                   stdout=log, stderr=log, stdin=subprocess.DEVNULL)
    intruder = Intruder(cluster, tmp, process, env)
    # `loopcluster exec` points commands at node1's daemon: name the intruder's socket.
    intruder.control = f"{tmp}/state/control.sock"
    deadline = time.time() + WAIT_S
    while time.time() < deadline and intruder.pid is None:
        try:
            intruder.pid = int(next(l.split()[1] for l in run_on(intruder, "mosctl", "--control",
                                                              intruder.control, "status")
                                    .splitlines() if l.startswith("pid")))
        except (AssertionError, StopIteration):
            if process.poll() is not None:
                raise AssertionError(f"the intruder exited: {open(tmp + '/log').read()}")
            time.sleep(0.1)
    if intruder.pid is None:
        stop_intruder(intruder)
        raise AssertionError("the intruder daemon did not start")
    return intruder


def run_on(intruder, *command):
    result = subprocess.run([harness.LOOPCLUSTER, "exec", intruder.cluster.dir, "node1", "--",
                             *command], env=intruder.env, capture_output=True, text=True,
                            timeout=30)
    if result.returncode != 0:
        raise AssertionError(f"{command} failed: {result.stderr}")
    return result.stdout


def stop_intruder(intruder):
    if intruder.pid:
        try:
            os.kill(intruder.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    try:
        intruder.process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        intruder.process.kill()
        intruder.process.wait()


if __name__ == "__main__":
    harness.main()
