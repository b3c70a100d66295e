#!/usr/bin/env python3
"""Partner clusters: two clusters that share a partnership key see each other's nodes in
mosmon, grouped by cluster, and learn of a partner node's death; a cluster that holds a
wrong key is never listed; jobs start only in their own cluster."""

import json
import os
import secrets
import unittest

import harness

SETTINGS = ["gossip.interval_ms=200", "gossip.suspect_ms=1000", "gossip.dead_ms=2500"]
WAIT_S = 40  # generous: the machine is shared and noisy


def key_file(name):
    path = os.path.join(harness.private_dir(), name)
    with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as f:
        f.write(secrets.token_hex(32) + "\n")
    return path


def monitor(cluster, node):
    result = cluster.run(node, "mosmon", "--json", check=False)
    if result.returncode != 0:
        return None
    return json.loads(result.stdout)


def alive_by_cluster(cluster, node):
    view = monitor(cluster, node) or {"nodes": []}
    groups = {}
    for n in view["nodes"]:
        if n["alive"]:
            groups.setdefault(n["cluster"], []).append(n["name"])
    return {name: sorted(names) for name, names in groups.items()}


class PartnersTest(unittest.TestCase):
    def test_partners_see_each_other_and_strangers_do_not(self):
        ab = key_file("a-b.key")
        with harness.LoopCluster(2, prefix="a", settings=SETTINGS + ["cluster.name=a"],
                                 partners=[f"name=b,key_file={ab}"]) as a:
            a1 = a.node("a1")["address"]
            # b knows a's first node; a learns b's nodes from their gossip.
            with harness.LoopCluster(2, prefix="b", settings=SETTINGS + ["cluster.name=b"],
                                     partners=[f"name=a,key_file={ab},seeds={a1},"
                                               f"priority=50"]) as b, \
                    harness.LoopCluster(1, prefix="c", settings=SETTINGS + ["cluster.name=c"],
                                        partners=[f"name=a,key_file={key_file('c.key')},"
                                                  f"seeds={a1}"]) as c:
                both = {"a": ["a1", "a2"], "b": ["b1", "b2"]}
                for cluster, node in ((a, "a1"), (a, "a2"), (b, "b1"), (b, "b2")):
                    cluster.wait_for(lambda: alive_by_cluster(cluster, node) == both, WAIT_S,
                                     f"{node} to see both clusters")
                view = monitor(a, "a1")
                self.assertEqual([n["name"] for n in view["nodes"]], ["a1", "a2", "b1", "b2"])
                self.assertEqual(view["clusters"]["a"]["nodes"], 2)
                self.assertTrue(view["clusters"]["a"]["self"])
                self.assertEqual(view["clusters"]["b"]["alive"], 2)
                self.assertGreaterEqual(view["clusters"]["b"]["cpus"], 2)
                self.assertNotIn("self", view["clusters"]["b"])
                # The stranger's key opens nothing: it sees only itself, and nobody sees it.
                self.assertEqual(alive_by_cluster(c, "c1"), {"c": ["c1"]})

                # Jobs start in their own cluster.
                refused = a.run("a1", "mosrun", "-r", "b1", "true", check=False)
                self.assertNotEqual(refused.returncode, 0)
                self.assertIn("node b1 is in partner cluster b", refused.stderr)
                self.assertEqual(a.run("a1", "mosrun", "-r", "a2", "echo", "here").stdout,
                                 "here\n")
                # A partner's nodes are listed where their jobs may run (a accepts b's).
                a.wait_for(lambda: sorted(a.run("a1", "ls", "/mosix/home").stdout.split()) ==
                           ["a1", "a2", "b1", "b2"], WAIT_S, "b's homes to be listed on a1")
                self.assertEqual(c.run("c1", "ls", "/mosix/home").stdout.split(), ["c1"])

                # A partner node's death is learned through the partnership's gossip.
                b.kill("b2")
                a.wait_for(lambda: alive_by_cluster(a, "a1") == {"a": ["a1", "a2"],
                                                                 "b": ["b1"]},
                           WAIT_S, "a1 to learn that b2 died")


if __name__ == "__main__":
    harness.main()
