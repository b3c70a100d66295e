#!/usr/bin/python3
"""A three-node loopback cluster comes up with separate hostnames and /data, every
daemon answers mosctl status, and everything goes away on teardown."""

import os
import subprocess

import unittest

import harness


class ClusterFoundationTest(unittest.TestCase):
    def test_three_nodes_up_and_down(self):
        with harness.LoopCluster(3) as cluster:
            for node in cluster.nodes:
                self.assertEqual(cluster.run(node, "hostname").stdout.strip(), node)
                status = cluster.run(node, "mosctl", "status").stdout
                self.assertIn(f"node     {node}\n", status)
                self.assertIn(f"address  {cluster.node(node)['address']}\n", status)
                self.assertIn("version  0.1.0\n", status)
                self.assertRegex(status, r"uptime   \d")

            cluster.run("node1", "sh", "-c", "echo from-node1 > /data/marker")
            cluster.run("node2", "sh", "-c", "echo from-node2 > /data/marker")
            self.assertEqual(cluster.run("node1", "cat", "/data/marker").stdout, "from-node1\n")
            self.assertEqual(cluster.run("node2", "cat", "/data/marker").stdout, "from-node2\n")
            self.assertFalse(os.path.exists("/data/marker"), "a node's /data leaked to the host")

            # The node's namespace has its own /mosix; the host's stays untouched.
            mounts = cluster.run("node2", "cat", "/proc/self/mountinfo").stdout
            self.assertIn(" /mosix ", mounts)
            self.assertIn(" /data ", mounts)

            pids = [cluster.node(n)["pid"] for n in cluster.nodes]
            cgroups = harness.cgroup_identities(cluster.node(n)["cgroup"] for n in cluster.nodes)
            started = cluster.run("node1", "sh", "-c",
                                  "sleep 300 >/dev/null 2>&1 & echo $!").stdout.split()
            pids += [int(p) for p in started]
        for pid in pids:
            self.assertFalse(alive(pid), f"process {pid} survived teardown")
        harness.assert_cgroups_gone(self, cgroups)
        self.assertFalse(os.path.exists(cluster.dir + "/cluster.json"))

    def test_exec_returns_status_and_errors(self):
        with harness.LoopCluster(2) as cluster:
            self.assertEqual(cluster.run("node1", "sh", "-c", "exit 7", check=False).returncode, 7)
            bad = cluster.run("node9", "true", check=False)
            self.assertEqual(bad.returncode, 1)
            self.assertIn("no node 'node9'", bad.stderr)

            cluster.kill("node2")
            dead = cluster.run("node2", "true", check=False)
            self.assertNotEqual(dead.returncode, 0)
            self.assertIn("not running", dead.stderr)
            # With its daemon gone, the commands on another node's socket say so clearly.
            env = dict(cluster.env(), HOMEWARD_CONTROL=cluster.node("node2")["control"])
            result = subprocess.run([harness.BUILD + "/noded/mosctl", "status"], env=env,
                                    capture_output=True, text=True)
            self.assertEqual(result.returncode, 1)
            self.assertIn("no node daemon is running", result.stderr)
            cluster.start("node2")
            self.assertIn("node2", cluster.run("node2", "mosctl", "status").stdout)

    def test_cpuset_gives_each_node_its_own_core(self):
        with harness.LoopCluster(2, cpuset=True) as cluster:
            ncpu = os.cpu_count()
            for i, node in enumerate(cluster.nodes):
                status = cluster.run(node, "cat", "/proc/self/status").stdout
                allowed = [l for l in status.splitlines() if l.startswith("Cpus_allowed_list")]
                self.assertEqual(allowed[0].split()[-1], str(i % ncpu))


def alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


if __name__ == "__main__":
    harness.main()
