#!/usr/bin/python3
"""Placement and automatic balancing by load, on loopback clusters whose nodes each own
one core (--cpuset) and publish their own load: the balancer spreads a batch started on
one node, mosrun -b picks the idle node, -m refuses what no node has, -L jobs stay put,
and a busy cluster's jobs go to a partner's idle node and leave it for the partner's own
work. These tests run alone: other tests' processes on one core would make it the busier
node. What is balanced by memory, by home I/O, or by hand is in test_balance_rules.py,
which runs beside other tests."""

import contextlib
import json
import os
import subprocess
import time
import unittest

import harness

# About 15 s of one core here: long enough that moving pays, short enough for a test.
BUSY = "i=0; while [ $i -lt {n} ]; do i=$((i+1)); done; echo finished $i"
BUSY_ITERATIONS = 18_000_000

# Balancing rounds as in production, but a job may move again after 3 s.
SETTINGS = ("balance.min_residency_ms=3000",)
# Fast gossip, to see a node's load soon.
GOSSIP_FAST = ("gossip.interval_ms=200", "gossip.suspect_ms=1000", "gossip.dead_ms=2500")


jobs = harness.jobs


def nodes(cluster, node="node1"):
    return {n["name"]: n for n in json.loads(cluster.run(node, "mosmon", "--json").stdout)["nodes"]}


def start_background(cluster, node, tag, *mosrun_args, command):
    """Starts `mosrun ARGS sh -c COMMAND` on `node` in the background; its output and
    exit status go to private files in /data/out on that node."""
    cluster.run(node, "mkdir", "-p", "/data/out")
    cluster.run(node, "sh", "-c",
                f"(mosrun {' '.join(mosrun_args)} sh -c '{command}' > /data/out/{tag} 2>&1; "
                f"echo $? > /data/out/{tag}.status) >/dev/null 2>&1 & echo started")


def wait_for_jobs(cluster, count, node="node1"):
    return cluster.wait_for(lambda: len(jobs(cluster, node)) == count, 30,
                            f"{count} jobs on {node}")


def wait_for_mounts(cluster, home, others):
    cluster.wait_for(lambda: all(cluster.run(n, "test", "-d", f"/mosix/home/{home}/data",
                                             check=False).returncode == 0 for n in others),
                     30, f"the nodes to mount {home}'s files")


class BalancingTest(unittest.TestCase):
    def require_idle_core(self, cluster, node, ask="node1"):
        """Tests that move work to an idle node need that node's core idle. The host's own
        work on it is load too (another suite, stress-ng): then there is nothing to
        measure, and the test is skipped, saying so, rather than failed."""
        # Idle for a while, not at one moment: a node's first published loads, and a core
        # that the host's work visits now and then, read idle for a round or two. Asked
        # once a second: asking is work on the host too.
        def idle():
            return nodes(cluster, ask)[node]["load"] < 0.5
        try:
            cluster.wait_for(idle, 30, f"{node}'s core to be idle")
            for _ in range(6):
                time.sleep(1)
                if not idle():
                    raise AssertionError(f"{node}'s core busy again")
        except AssertionError:
            self.skipTest(f"the host's own work keeps {node}'s core busy: "
                          f"load {nodes(cluster, ask)[node]['load']:.2f}")

    def test_cpuset_nodes_publish_their_own_load(self):
        """Two nodes on one host with a core each: a busy loop on node1 loads node1 only.
        The host's own work on those cores is load too, so on a host too busy to leave
        them idle there is nothing to tell apart: the test is then skipped."""
        quiet = True
        with harness.LoopCluster(2, cpuset=True, memory_mb=512, settings=GOSSIP_FAST) as cluster:
            seen = []

            # Asked of node1, whose core the busy loop loads anyway: a question to node2
            # (a loopcluster exec and mosmon in node2's cgroup) would be work on node2's
            # core, the very load the test expects to stay ~0. Once a second: asking is
            # work on node1's core too, which must read idle first.
            def loads():
                time.sleep(0.8)
                listed = nodes(cluster, "node1")
                sample = {name: round(n["load"], 2) for name, n in listed.items()}
                seen.append(sample)
                return sample if len(sample) == 2 else None

            def both_idle():
                sample = loads()
                return sample if sample and max(sample.values()) <= 0.5 else None

            try:
                cluster.wait_for(both_idle, 20, "both cores to be idle")
            except AssertionError:
                quiet = False
            if quiet:
                # The loop stops by itself should the test die before 'down' kills it.
                busy = subprocess.Popen(
                    [harness.LOOPCLUSTER, "exec", cluster.dir, "node1", "--", "timeout", "120",
                     "sh", "-c", "while :; do :; done"], env=cluster.env(),
                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL)
                try:
                    def separated():
                        sample = loads()
                        if sample and sample["node1"] >= 0.75 and sample["node2"] <= 0.5:
                            return sample
                        return None

                    try:
                        sample = cluster.wait_for(separated, 40, "node1's load to rise "
                                                  "to ~1 and node2's to stay ~0")
                    except AssertionError as e:
                        raise AssertionError(f"{e}; loads seen: {seen[-20:]}") from None
                    self.assertLessEqual(sample["node1"], 2.0)  # one loop on one core, and noise
                finally:
                    busy.terminate()
                    busy.wait(timeout=30)
        if not quiet:
            self.skipTest(f"the host's own work keeps the nodes' cores busy: {seen[-3:]}")

    def test_balancer_spreads_four_jobs_over_two_cores(self):
        with harness.LoopCluster(2, cpuset=True, settings=SETTINGS) as c:
            wait_for_mounts(c, "node1", ["node2"])
            self.require_idle_core(c, "node2")
            for k in range(4):
                start_background(c, "node1", f"busy{k}", command=BUSY.format(n=BUSY_ITERATIONS))
            wait_for_jobs(c, 4)
            migrations = {}
            spread_seen = False
            deadline = time.time() + 240
            while time.time() < deadline:
                listing = jobs(c)
                if not listing:
                    break
                for job in listing:
                    migrations[job["pid"]] = max(migrations.get(job["pid"], 0), job["migrations"])
                # Spread as evenly as two nodes allow while most of the batch runs (2 and 2,
                # or 2 and 1 once a job that ran alone on node2 has finished: it runs at full
                # speed there while node1's load is still settling).
                places = [job["where"] for job in listing]
                here, there = places.count("node1"), places.count("node2")
                if len(listing) >= 3 and there >= 1 and abs(here - there) <= 1:
                    spread_seen = True
                time.sleep(0.5)
            self.assertEqual(jobs(c), [], "the batch did not finish in time")
            for k in range(4):
                self.assertEqual(c.run("node1", "cat", f"/data/out/busy{k}.status").stdout.strip(),
                                 "0")
                self.assertEqual(c.run("node1", "cat", f"/data/out/busy{k}").stdout.strip(),
                                 f"finished {BUSY_ITERATIONS}")
            self.assertTrue(spread_seen, f"the jobs never ran spread over both nodes: {migrations}")
            total = sum(migrations.values())
            self.assertGreaterEqual(total, 2)
            self.assertLessEqual(total, 4 + 2, f"too many migrations: {migrations}")

    def test_locked_jobs_stay_while_others_move(self):
        with harness.LoopCluster(2, cpuset=True, settings=SETTINGS) as c:
            wait_for_mounts(c, "node1", ["node2"])
            self.require_idle_core(c, "node2")
            busy = BUSY.format(n=BUSY_ITERATIONS * 10)
            start_background(c, "node1", "locked1", "-L", command=busy)
            start_background(c, "node1", "locked2", "-L", command=busy)
            wait_for_jobs(c, 2)
            start_background(c, "node1", "free", command=busy)
            wait_for_jobs(c, 3)
            free = next(j["pid"] for j in jobs(c) if not j["locked"])
            c.wait_for(lambda: any(j["pid"] == free and j["where"] == "node2" for j in jobs(c)),
                       60, "the unlocked job to move to the idle node")
            # Over more rounds, the locked ones stay (what must not happen has no event).
            c.holds_for(8, lambda: all((j["where"], j["migrations"]) == ("node1", 0)
                                       for j in jobs(c) if j["locked"]),
                        "the locked jobs staying at node1")
            listed = c.run("node1", "mosps").stdout
            self.assertIn("locked: mosrun -L", listed)

    @contextlib.contextmanager
    def partner_clusters(self):
        """Clusters a (a1) and b (b1), partners, a core each, each seeing the other, b1's
        core idle (else the test is skipped)."""
        ab = harness.partnership_key("a-b")
        fast = list(SETTINGS + GOSSIP_FAST)
        with harness.LoopCluster(1, cpuset=True, prefix="a", settings=fast + ["cluster.name=a"],
                                 partners=[f"name=b,key_file={ab}"]) as a:
            a1 = a.node("a1")["address"]
            with harness.LoopCluster(1, cpuset=True, first_cpu=1, prefix="b",
                                     settings=fast + ["cluster.name=b"],
                                     partners=[f"name=a,key_file={ab},seeds={a1}"]) as b:
                a.wait_for(lambda: nodes(a, "a1").get("b1", {}).get("alive"), 60,
                           "a1 to see b1")
                b.wait_for(lambda: "a1" in b.run("b1", "ls", "/mosix/home").stdout.split(), 60,
                           "a1's files to be listed on b1")
                self.require_idle_core(a, "b1", ask="a1")
                yield a, b

    def test_a_busy_cluster_sends_jobs_that_may_leave_to_a_partner(self):
        """Two busy jobs at a1, one started with mosrun -G: that one moves to b1, idle in
        the partner cluster; the other stays in its cluster. Both finish with their
        output."""
        with self.partner_clusters() as (a, b):
            busy = BUSY.format(n=BUSY_ITERATIONS * 2)
            start_background(a, "a1", "stay", command=busy)
            wait_for_jobs(a, 1, node="a1")
            [stay] = jobs(a, "a1")
            start_background(a, "a1", "leave", "-G", command=busy)
            wait_for_jobs(a, 2, node="a1")
            leave = next(j["pid"] for j in jobs(a, "a1") if j["pid"] != stay["pid"])
            a.wait_for(lambda: any(j["pid"] == leave and j["where"] == "b1"
                                   for j in jobs(a, "a1")),
                       90, "the job started with -G to move to b1")
            self.assertIn("balancer: load move to b1", a.log("a1"))
            listing = {j["pid"]: j for j in jobs(a, "a1")}
            if stay["pid"] in listing:
                self.assertEqual(listing[stay["pid"]]["where"], "a1")
                self.assertEqual(listing[stay["pid"]]["migrations"], 0)
            a.wait_for(lambda: jobs(a, "a1") == [], 240, "both jobs to finish")
            for tag in ("stay", "leave"):
                self.assertEqual(a.run("a1", "cat", f"/data/out/{tag}.status").stdout.strip(),
                                 "0")
                self.assertEqual(a.run("a1", "cat", f"/data/out/{tag}").stdout.strip(),
                                 f"finished {BUSY_ITERATIONS * 2}")

    def test_local_work_forces_a_partners_guest_out(self):
        """A job of a1 moved to b1 (a partner's guest there, of priority 100) leaves b1
        for its home once b1's own work wants the core, and finishes there."""
        with self.partner_clusters() as (a, b):
            busy = BUSY.format(n=BUSY_ITERATIONS * 2)
            start_background(a, "a1", "guest", command=busy)
            wait_for_jobs(a, 1, node="a1")
            [job] = jobs(a, "a1")
            a.run("a1", "mosmigrate", str(job["pid"]), "b1")
            a.wait_for(lambda: jobs(a, "a1")[0]["where"] == "b1", 60, "the job to run on b1")
            # b1's own work: a busy process of the node (no job), stopped by itself later.
            b.run("b1", "sh", "-c",
                  "(timeout 120 sh -c 'while :; do :; done' >/dev/null 2>&1 &); echo")
            try:
                a.wait_for(lambda: jobs(a, "a1")[0]["where"] == "a1", 60,
                           "the guest to be forced home")
                self.assertIn("balancer: priority move to a1", b.log("b1"))
            finally:
                b.run("b1", "pkill", "-f", "while :; do :; done", check=False)
            a.wait_for(lambda: jobs(a, "a1") == [], 240, "the job to finish")
            self.assertEqual(a.run("a1", "cat", "/data/out/guest.status").stdout.strip(), "0")
            self.assertEqual(a.run("a1", "cat", "/data/out/guest").stdout.strip(),
                             f"finished {BUSY_ITERATIONS * 2}")

    def test_a_groups_work_forces_another_groups_guest_out(self):
        """Nodes of a sub-cluster (node.group): a chemist's job and a physicist's, both
        moved to node2, a physics node with one core. The chemist's guest ranks below the
        physicist's there, so it leaves (to node1, which has room); the physicist's stays.
        Both finish with their output."""
        chemist = harness.user_for(self, "hwchem").pw_name
        physicist = harness.user_for(self, "hwphys").pw_name
        group = harness.group_for(self, "hwgrp", physicist)
        settings = list(SETTINGS + GOSSIP_FAST) + [f"node.group={group}"]
        with harness.LoopCluster(2, cpuset=True, settings=settings) as c:
            self.require_idle_core(c, "node2")
            self.assertEqual(nodes(c)["node2"]["group"], group)
            busy = BUSY.format(n=BUSY_ITERATIONS * 2)
            c.run("node1", "mkdir", "-m", "1777", "-p", "/data/out")
            pids = {}
            for user in (chemist, physicist):
                c.run("node1", "runuser", "-u", user, "--", "sh", "-c",
                      f"(mosrun sh -c '{busy}' > /data/out/{user} 2>&1; "
                      f"echo $? > /data/out/{user}.status) >/dev/null 2>&1 & echo started")
                pids[user] = c.wait_for(lambda: next((j["pid"] for j in jobs(c)
                                                      if j["user"] == user), None),
                                        30, f"{user}'s job to be listed")
                c.run("node1", "mosmigrate", str(pids[user]), "node2")

            def where(user):
                return next((j["where"] for j in jobs(c) if j["pid"] == pids[user]), None)

            c.wait_for(lambda: where(chemist) == "node1", 90,
                       "the chemist's guest to be forced out of node2")
            self.assertIn("balancer: priority move to node1", c.log("node2"))
            self.assertEqual(where(physicist), "node2")
            c.wait_for(lambda: jobs(c) == [], 240, "both jobs to finish")
            for user in (chemist, physicist):
                self.assertEqual(c.run("node1", "cat", f"/data/out/{user}.status").stdout.strip(),
                                 "0")
                self.assertEqual(c.run("node1", "cat", f"/data/out/{user}").stdout.strip(),
                                 f"finished {BUSY_ITERATIONS * 2}")

    def test_a_long_guest_leaves_a_node_for_short_jobs(self):
        """A node for short jobs (node.long_job_s): a guest that has run past the limit
        ranks below the node's own work there, so when node2's own process needs the
        core, the guest is forced out (home to node1, which has room) and finishes with
        its output."""
        user = harness.user_for(self, "hwlong").pw_name
        settings = list(SETTINGS + GOSSIP_FAST) + ["node.long_job_s=3"]
        with harness.LoopCluster(2, cpuset=True, settings=settings) as c:
            self.require_idle_core(c, "node2")
            self.assertEqual(nodes(c)["node2"]["long_job_s"], 3)
            c.run("node1", "mkdir", "-m", "1777", "-p", "/data/out")
            c.run("node1", "runuser", "-u", user, "--", "sh", "-c",
                  f"(mosrun sh -c '{BUSY.format(n=BUSY_ITERATIONS)}' > /data/out/long 2>&1; "
                  f"echo $? > /data/out/long.status) >/dev/null 2>&1 & echo started")
            pid = c.wait_for(lambda: next((j["pid"] for j in jobs(c) if j["user"] == user),
                                          None), 30, "the job to be listed")
            c.run("node1", "mosmigrate", str(pid), "node2")

            def where():
                return next((j["where"] for j in jobs(c) if j["pid"] == pid), None)

            self.assertEqual(where(), "node2")
            # node2's own work: a busy process that is not a job.
            c.run("node2", "sh", "-c",
                  "(timeout 60 sh -c 'while :; do :; done' >/dev/null 2>&1 &); echo")
            c.wait_for(lambda: where() == "node1", 90,
                       "the long guest to be forced out of node2")
            self.assertIn("balancer: priority move to node1", c.log("node2"))
            c.wait_for(lambda: jobs(c) == [], 240, "the job to finish")
            self.assertEqual(c.run("node1", "cat", "/data/out/long.status").stdout.strip(), "0")
            self.assertEqual(c.run("node1", "cat", "/data/out/long").stdout.strip(),
                             f"finished {BUSY_ITERATIONS}")

    def test_best_node_and_memory_placement(self):
        # No automatic moves here: where a job starts is what is tested.
        with harness.LoopCluster(2, cpuset=True,
                                 settings=("balance.automatic=false",)) as c:
            wait_for_mounts(c, "node1", ["node2"])
            self.require_idle_core(c, "node2")
            # Two busy processes of node1's own (not jobs) make it the busier node.
            for _ in range(2):
                c.run("node1", "sh", "-c",
                      "(timeout 120 sh -c 'while :; do :; done' >/dev/null 2>&1 &); echo")
            try:
                c.wait_for(lambda: nodes(c)["node1"]["load"] > 1.2
                           and nodes(c)["node2"]["load"] < 0.8, 30,
                           "node1 to be busier than node2")
            except AssertionError:
                if nodes(c)["node2"]["load"] >= 0.8:  # idle a moment ago, loaded again
                    self.skipTest(f"the host's own work keeps node2's core busy: "
                                  f"load {nodes(c)['node2']['load']:.2f}")
                raise
            start_background(c, "node1", "best", "-b", command="sleep 60")
            c.wait_for(lambda: [j["where"] for j in jobs(c)] == ["node2"], 30,
                       "mosrun -b to start the job on idle node2")

            most = max(n["mem_free_mb"] for n in nodes(c).values())
            result = c.run("node1", "mosrun", "-m", str(most * 4 + 1024), "true", check=False)
            self.assertNotEqual(result.returncode, 0)
            self.assertIn(f"no node has {most * 4 + 1024} MB of free memory", result.stderr)
            result = c.run("node1", "mosrun", "-r", "node2", "-m", str(most * 4 + 1024), "true",
                           check=False)
            self.assertIn("node node2 has", result.stderr)
            # A modest demand runs, and usage errors are named.
            self.assertEqual(c.run("node1", "mosrun", "-m", "16", "echo", "ok").stdout, "ok\n")
            result = c.run("node1", "mosrun", "-m", "lots", "true", check=False)
            self.assertEqual(result.returncode, 2)
            self.assertIn("-m takes a positive number", result.stderr)
            result = c.run("node1", "mosrun", "-b", "-r", "node2", "true", check=False)
            self.assertEqual(result.returncode, 2)


if __name__ == "__main__":
    harness.main()
