#!/usr/bin/python3
"""A node moved to another cluster at run time: its administrator points its node.toml at
the other cluster (name, key, seeds) and runs `mosctl reload`. Its guests go home and its
jobs away come home first; the daemon restarts in place in the new cluster, its jobs and
their mosrun kept; both clusters' gossip shows the change, and so does /mosix/home; every
job finishes whole. A reload of a file with a mistake, or of one that renames the node,
is refused and changes nothing. A node that joins a partner cluster keeps that cluster's
jobs it hosts: they run on, as guests of its own cluster now, while its old cluster's
guests go home."""

import json
import os
import re
import sys
import unittest

import harness

# Fast gossip, to see a node leave and join soon; no automatic moves: jobs stay where put.
SETTINGS = ["gossip.interval_ms=200", "gossip.suspect_ms=1000", "gossip.dead_ms=2500",
            "balance.automatic=false"]
WAIT_S = 60  # generous: the machine is shared and noisy


def rewrite_cluster(path, **fields):
    """Sets `fields` (TOML values, as text) in the [cluster] table of the node.toml at
    `path`, adding those it lacks."""
    with open(path) as f:
        lines = f.read().splitlines()
    out, section, left = [], None, dict(fields)
    for line in lines + ["[end]"]:
        header = re.match(r"^\[(.*)\]$", line)
        if header:
            if section == "cluster":
                out.extend(f"{k} = {v}" for k, v in left.items())
                left = {}
            section = header.group(1)
        elif section == "cluster":
            key = line.split("=", 1)[0].strip()
            if key in left:
                line = f"{key} = {left.pop(key)}"
        if line != "[end]":
            out.append(line)
    with open(path, "w") as f:
        f.write("\n".join(out) + "\n")


def clusters_seen(cluster, node):
    """{cluster name: [live nodes]} as `node`'s mosmon shows them."""
    return harness.alive_by_cluster(cluster, node)


class ClusterChangeTest(unittest.TestCase):
    def finish(self, cluster, works):
        """Lets the jobs working in `works` end (each waits for its `go`); each must end
        with status 0 and its whole output."""
        for work in works:
            open(os.path.join(work, "go"), "w").close()
        for work in works:
            status = cluster.wait_for(lambda: harness.read_text(os.path.join(work, "status")),
                                      WAIT_S, f"the job in {work} to end")
            self.assertEqual(status, "0\n", harness.read_text(os.path.join(work, "err")))
            self.assertEqual(harness.read_text(os.path.join(work, "out")),
                             harness.count(0, 199) + "done\n")

    def test_a_node_moves_to_another_cluster_with_its_jobs(self):
        user = harness.user_for(self, "hwmove").pw_name
        with harness.LoopCluster(2, prefix="a", settings=SETTINGS + ["cluster.name=a"]) as a, \
                harness.LoopCluster(1, prefix="b", settings=SETTINGS + ["cluster.name=b"]) as b:
            a.wait_for(lambda: clusters_seen(a, "a2") == {"a": ["a1", "a2"]}, WAIT_S,
                       "a2 to see a1")
            for node, other in (("a1", "a2"), ("a2", "a1")):
                a.wait_for(lambda: a.run(node, "test", "-d", f"/mosix/home/{other}/data",
                                         check=False).returncode == 0,
                           WAIT_S, f"{node} to mount {other}'s files")
            # A guest of a1's on a2, a job of a2's away on a1, and one of a2's at home.
            guest, _, guest_pid = harness.start_fed_job(self, a, user, "guest",
                                                        harness.COUNTER_JOB, "", home="a1")
            a.run("a1", "mosmigrate", str(guest_pid), "a2")
            away, _, away_pid = harness.start_fed_job(self, a, user, "away",
                                                      harness.COUNTER_JOB, "", home="a2")
            a.run("a2", "mosmigrate", str(away_pid), "a1")
            stay, _, stay_pid = harness.start_fed_job(self, a, user, "stay", harness.COUNTER_JOB,
                                                      "", known=(away_pid,), home="a2")

            def where(node, pid):
                return next((j["where"] for j in harness.jobs(a, node) if j["pid"] == pid), None)

            self.assertEqual(where("a1", guest_pid), "a2")
            self.assertEqual(where("a2", away_pid), "a1")

            config = a.node("a2")["config"]
            with open(config) as f:
                original = f.read()
            # Refused, nothing changed: a file that does not parse, and a renamed node.
            with open(config, "w") as f:
                f.write(original + "[cluster\n")
            refused = a.run("a2", "mosctl", "reload", check=False)
            self.assertEqual(refused.returncode, 1, refused.stdout)
            self.assertIn("the node runs on as it was", refused.stderr)
            with open(config, "w") as f:
                f.write(original.replace('name = "a2"', 'name = "a9"', 1))
            refused = a.run("a2", "mosctl", "reload", check=False)
            self.assertEqual(refused.returncode, 1, refused.stdout)
            self.assertIn("node.name cannot change while the node runs", refused.stderr)
            self.assertEqual(where("a1", guest_pid), "a2")

            # To cluster b: its name, its key, one of its nodes to find it by.
            with open(config, "w") as f:
                f.write(original)
            rewrite_cluster(config, name='"b"', key_file=json.dumps(b.info["key_file"]),
                            seeds=json.dumps([b.node("b1")["address"]]))
            reloaded = a.run("a2", "mosctl", "reload", check=False, timeout=180)
            self.assertEqual(reloaded.returncode, 0, reloaded.stdout + reloaded.stderr)
            self.assertIn("node a2 runs again, in cluster b", reloaded.stdout)
            self.assertRegex(reloaded.stdout, rf"moved +job {guest_pid} \(home a1\) a2 -> a1")
            self.assertRegex(reloaded.stdout, rf"moved +job {away_pid} \(home a2\) a1 -> a2")
            self.assertIn("reload: restarting as node a2 of cluster b", a.log("a2"))

            # Both clusters' gossip, and each node's /mosix/home, show the change.
            b.wait_for(lambda: clusters_seen(b, "b1") == {"b": ["a2", "b1"]}, WAIT_S,
                       "b1 to see a2 in cluster b")
            a.wait_for(lambda: clusters_seen(a, "a2") == {"b": ["a2", "b1"]}, WAIT_S,
                       "a2 to see cluster b only")
            a.wait_for(lambda: clusters_seen(a, "a1") == {"a": ["a1"]}, WAIT_S,
                       "a1 to see a2 gone")
            a.wait_for(lambda: sorted(a.run("a2", "ls", "/mosix/home").stdout.split()) ==
                       ["a2", "b1"], WAIT_S, "a2 to list b1's files and not a1's")

            # Every job is where it belongs now and finishes whole.
            self.assertEqual(where("a1", guest_pid), "a1")
            try:
                a.wait_for(lambda: where("a2", away_pid) == "a2" and where("a2", stay_pid) == "a2",
                           WAIT_S, "a2's jobs listed at home by the restarted daemon")
            except AssertionError:
                for work in (away, stay):  # what their mosrun said
                    print(f"{work}/err: {harness.read_text(os.path.join(work, 'err'))!r}",
                          file=sys.stderr)
                raise
            self.finish(a, (guest, away, stay))
            self.assertEqual(a.zombies("a2"), [])

    def test_a_node_joins_the_cluster_of_its_partner_guests(self):
        user = harness.user_for(self, "hwjoin").pw_name
        ab = harness.partnership_key("a-b.key")
        with harness.LoopCluster(2, prefix="a", settings=SETTINGS + ["cluster.name=a"],
                                 partners=[f"name=b,key_file={ab}"]) as a:
            a1 = a.node("a1")["address"]
            with harness.LoopCluster(1, prefix="b", settings=SETTINGS + ["cluster.name=b"],
                                     partners=[f"name=a,key_file={ab},seeds={a1}"]) as b:
                a.wait_for(lambda: harness.alive_by_cluster(a, "a2") == {"a": ["a1", "a2"],
                                                                         "b": ["b1"]},
                           WAIT_S, "a2 to see a1 and b1")
                b.wait_for(lambda: harness.alive_by_cluster(b, "b1") == {"a": ["a1", "a2"],
                                                                         "b": ["b1"]},
                           WAIT_S, "b1 to see a1 and a2")
                a.wait_for(lambda: a.run("a2", "test", "-d", "/mosix/home/a1/data",
                                         check=False).returncode == 0,
                           WAIT_S, "a2 to mount a1's files")
                b.wait_for(lambda: "b1" in a.run("a2", "ls", "/mosix/home").stdout.split(),
                           WAIT_S, "b1's files to be listed on a2")
                # On a2: a guest of a1's, and a partner's guest of b1's.
                guest, _, guest_pid = harness.start_fed_job(self, a, user, "guest",
                                                            harness.COUNTER_JOB, "", home="a1")
                a.run("a1", "mosmigrate", str(guest_pid), "a2")
                partner, _, partner_pid = harness.start_fed_job(
                    self, b, user, "partner", harness.COUNTER_JOB, "", home="b1")
                moved = b.run("b1", "runuser", "-u", user, "--", "mosmigrate", str(partner_pid),
                              "a2", check=False)
                self.assertEqual(moved.returncode, 0, moved.stderr)

                def on(cluster, home, pid):
                    return next(((j["where"], j["where_cluster"]) for j in
                                 harness.jobs(cluster, home) if j["pid"] == pid), None)

                b.wait_for(lambda: on(b, "b1", partner_pid) == ("a2", "a"), WAIT_S,
                           "b1's job to run on a2, in cluster a")
                a.wait_for(lambda: sorted(j["home"] for j in harness.jobs(a, "a2")) ==
                           ["a1", "b1"], WAIT_S, "a2 to list both guests")

                # a2 joins cluster b: b's name, key and seeds, and a as its partner now.
                config = a.node("a2")["config"]
                with open(config) as f:
                    original = f.read()
                own, _ = original.split("[[partner]]", 1)
                with open(config, "w") as f:
                    f.write(own)
                rewrite_cluster(config, name='"b"', key_file=json.dumps(b.info["key_file"]),
                                seeds=json.dumps([b.node("b1")["address"]]))
                with open(config, "a") as f:
                    f.write(f'[[partner]]\nname = "a"\nkey_file = {json.dumps(ab)}\n'
                            f'seeds = {json.dumps([a1])}\n')
                reloaded = a.run("a2", "mosctl", "reload", check=False, timeout=180)
                self.assertEqual(reloaded.returncode, 0, reloaded.stdout + reloaded.stderr)
                self.assertIn("node a2 runs again, in cluster b", reloaded.stdout)
                self.assertRegex(reloaded.stdout, rf"moved +job {guest_pid} \(home a1\) a2 -> a1")
                self.assertNotIn(f"job {partner_pid} ", reloaded.stdout)

                # b's job ran on through a2's restart, on a2, now a node of its own cluster.
                b.wait_for(lambda: harness.alive_by_cluster(b, "b1").get("b") == ["a2", "b1"],
                           WAIT_S, "b1 to see a2 in cluster b")
                try:
                    b.wait_for(lambda: on(b, "b1", partner_pid) == ("a2", "b"), WAIT_S,
                               "b1's job to run on a2, in cluster b")
                    a.wait_for(lambda: [(j["home"], j["home_cluster"]) for j in
                                        harness.jobs(a, "a2")] == [("b1", "b")],
                               WAIT_S, "a2 to list b1's job as its only guest")
                except AssertionError:
                    print(f"a2's log:\n{a.log('a2')[-6000:]}", file=sys.stderr)
                    raise
                self.assertEqual(on(a, "a1", guest_pid), ("a1", "a"))
                self.assertIn("job {} taken back by node a2".format(partner_pid), b.log("b1"))

                self.finish(a, (guest, partner))
                self.assertEqual(a.zombies("a2"), [])


if __name__ == "__main__":
    harness.main()
