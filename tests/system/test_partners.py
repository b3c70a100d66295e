#!/usr/bin/python3
"""Partner clusters: two clusters that share a partnership key see each other's nodes in
mosmon, grouped by cluster, and learn of a partner node's death; a cluster that holds a
wrong key is never listed; jobs start only in their own cluster. loopcluster's --clusters
makes such partners in one command."""

import json
import os
import unittest

import harness

SETTINGS = ["gossip.interval_ms=200", "gossip.suspect_ms=1000", "gossip.dead_ms=2500"]
WAIT_S = 40  # generous: the machine is shared and noisy


class PartnersTest(unittest.TestCase):
    def test_partners_see_each_other_and_strangers_do_not(self):
        ab = harness.partnership_key("a-b.key")
        with harness.LoopCluster(2, prefix="a", settings=SETTINGS + ["cluster.name=a"],
                                 partners=[f"name=b,key_file={ab}"]) as a:
            a1 = a.node("a1")["address"]
            # b knows a's first node; a learns b's nodes from their gossip.
            with harness.LoopCluster(2, prefix="b", settings=SETTINGS + ["cluster.name=b"],
                                     partners=[f"name=a,key_file={ab},seeds={a1},"
                                               f"priority=50"]) as b, \
                    harness.LoopCluster(1, prefix="c", settings=SETTINGS + ["cluster.name=c"],
                                        partners=[f"name=a,key_file={harness.partnership_key('c.key')},"
                                                  f"seeds={a1}"]) as c:
                both = {"a": ["a1", "a2"], "b": ["b1", "b2"]}
                for cluster, node in ((a, "a1"), (a, "a2"), (b, "b1"), (b, "b2")):
                    cluster.wait_for(lambda: harness.alive_by_cluster(cluster, node) == both, WAIT_S,
                                     f"{node} to see both clusters")
                view = json.loads(a.run("a1", "mosmon", "--json").stdout)
                self.assertEqual([n["name"] for n in view["nodes"]], ["a1", "a2", "b1", "b2"])
                self.assertEqual(view["clusters"]["a"]["nodes"], 2)
                self.assertTrue(view["clusters"]["a"]["self"])
                self.assertEqual(view["clusters"]["b"]["alive"], 2)
                self.assertGreaterEqual(view["clusters"]["b"]["cpus"], 2)
                self.assertNotIn("self", view["clusters"]["b"])
                # The stranger's key opens nothing: it sees only itself, and nobody sees it.
                self.assertEqual(harness.alive_by_cluster(c, "c1"), {"c": ["c1"]})

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
                a.wait_for(lambda: harness.alive_by_cluster(a, "a1") == {"a": ["a1", "a2"],
                                                                 "b": ["b1"]},
                           WAIT_S, "a1 to learn that b2 died")

    def test_loopcluster_makes_two_partner_clusters(self):
        """`loopcluster up --clusters 2 --nodes 2`: c1 = node1, node2 and c2 = node3, node4,
        each with its own key and partners both ways; an ordinary user's job of node3 (c2),
        moved by hand to node1 (c1), runs there on its home's files and comes home."""
        user = harness.user_for(self, "hwpt").pw_name
        with harness.LoopCluster(2, clusters=2, settings=SETTINGS +
                                 ["balance.automatic=false"]) as c:
            both = {"c1": ["node1", "node2"], "c2": ["node3", "node4"]}
            for node in c.nodes:
                c.wait_for(lambda: harness.alive_by_cluster(c, node) == both, WAIT_S,
                           f"{node} to see both clusters")
            keys = {c.node(n)["key_file"] for n in c.nodes}
            self.assertEqual(len(keys), 2, keys)  # one key per cluster
            work, writer, pid = harness.start_fed_job(
                self, c, user, "fed", 'read line; echo "$line $(hostname)" > log\n', "",
                home="node3")
            c.wait_for(lambda: "node1" in c.run("node3", "ls", "/mosix/home").stdout.split(),
                       WAIT_S, "node1 to be listed on node3")
            moved = c.run("node3", "runuser", "-u", user, "--", "mosmigrate", str(pid),
                          "node1", check=False)
            self.assertEqual(moved.returncode, 0, moved.stderr)
            c.wait_for(lambda: [(j["where"], j["where_cluster"]) for j in harness.jobs(c, "node3")
                                if j["pid"] == pid] == [("node1", "c1")],
                       WAIT_S, "the job to run on node1 of c1")
            writer.write("fed\n")
            writer.close()
            c.wait_for(lambda: harness.read_text(os.path.join(work, "status")) == "0\n",
                       WAIT_S, "the job to end")
            self.assertEqual(harness.read_text(os.path.join(work, "log")), "fed node3\n")


if __name__ == "__main__":
    harness.main()
