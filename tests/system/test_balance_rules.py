#!/usr/bin/python3
"""Balancing that does not measure load, so it runs beside other tests (test_balance.py
holds what does, alone): a node short of memory ushers a job away, a move to a node
without the memory is refused, a guest busy with its home's files goes home, and mosctl
block, expel and bring move guests and jobs as asked. The nodes share the host's cores and
so publish the same load: no move here is for load."""

import unittest

import harness
from test_balance import SETTINGS, jobs, nodes, start_background, wait_for_jobs, wait_for_mounts


class BalanceRulesTest(unittest.TestCase):
    def test_node_short_of_memory_ushers_a_job_away(self):
        # Each node has 800 MB; two jobs of 300 MB leave node1 under the 256 MB it keeps free.
        hog = ("python3 -c \"import time; b=bytearray(300<<20); b[::4096]=bytes([1])*(len(b)//4096); "
               "print(1, flush=True); time.sleep(300)\"")
        with harness.LoopCluster(2, memory_mb=800, settings=SETTINGS) as c:
            wait_for_mounts(c, "node1", ["node2"])
            start_background(c, "node1", "hog1", command=hog)
            wait_for_jobs(c, 1)
            start_background(c, "node1", "hog2", command=hog)
            wait_for_jobs(c, 2)
            c.wait_for(lambda: sorted(j["where"] for j in jobs(c)) == ["node1", "node2"], 60,
                       "one of the jobs to be moved to node2 for memory")
            self.assertIn("memory move to node2", c.log("node1"))
            # node1 has room again: over the next rounds, nothing else moves.
            c.holds_for(5, lambda: (sorted(j["where"] for j in jobs(c)) == ["node1", "node2"]
                                    and sum(j["migrations"] for j in jobs(c)) == 1),
                        "the one memory move being the only one")

    def test_move_to_a_node_without_room_is_refused(self):
        hog = ("python3 -c \"import time; b=bytearray({mb}<<20); b[::4096]=bytes([1])*(len(b)//4096); "
               "print(1, flush=True); time.sleep(300)\"")
        with harness.LoopCluster(2, memory_mb=500, settings=("balance.automatic=false",)) as c:
            wait_for_mounts(c, "node1", ["node2"])
            # node2's own work takes 250 MB of its 500; the job needs 300.
            c.run("node2", "sh", "-c", f"({hog.format(mb=250)} >/dev/null 2>&1 &); echo")
            c.wait_for(lambda: nodes(c, "node2")["node2"]["mem_free_mb"] < 260, 30,
                       "node2's own work to fill half its memory")
            start_background(c, "node1", "big", command=hog.format(mb=300))
            c.wait_for(lambda: (jobs(c) or [{}])[0].get("where") == "node1", 30,
                       "the job to run at node1")
            c.wait_for(lambda: c.run("node1", "cat", "/data/out/big").stdout == "1\n", 30,
                       "the job to have allocated its memory")
            pid = jobs(c)[0]["pid"]
            result = c.run("node1", "mosmigrate", str(pid), "node2", check=False)
            self.assertNotEqual(result.returncode, 0)
            # Said before the dump, from the picture; or by node2 itself, from its own figures.
            self.assertRegex(result.stderr, "node node2 has [0-9]+ MB of free memory; the job "
                                            "uses [0-9]+ MB|are more than this node's free memory")
            self.assertEqual(jobs(c)[0]["where"], "node1")  # and it runs on

    def test_guest_busy_with_its_home_files_goes_home(self):
        with harness.LoopCluster(2, settings=SETTINGS) as c:
            wait_for_mounts(c, "node1", ["node2"])
            # Writes to a file at home, over and over: every byte crosses to node1.
            start_background(c, "node1", "writer", "-r", "node2",
                             command="while :; do dd if=/dev/zero of=/data/out/junk bs=64k "
                                     "count=256 2>/dev/null; done")
            c.wait_for(lambda: [j["where"] for j in jobs(c)] == ["node2"], 30,
                       "the job to run on node2")
            c.wait_for(lambda: [j["where"] for j in jobs(c)] == ["node1"], 60,
                       "the guest to come home for its I/O")
            self.assertIn("home I/O move to node1", c.log("node2"))

    def test_block_expel_and_bring(self):
        with harness.LoopCluster(3, settings=("balance.automatic=false",)) as c:
            wait_for_mounts(c, "node1", ["node2", "node3"])
            for k in range(2):
                start_background(c, "node1", f"guest{k}", "-r", "node2", command="sleep 120")
            c.wait_for(lambda: [j["where"] for j in jobs(c)] == ["node2", "node2"], 30,
                       "two jobs of node1 on node2")
            # node2 lists them as its guests once each has been taken there.
            c.wait_for(lambda: len(jobs(c, "node2")) == 2, 30, "node2 to list both guests")

            out = c.run("node2", "mosctl", "expel").stdout
            self.assertIn("2 moved, 0 stayed; this node accepts no guests", out)
            self.assertEqual(out.count("-> node1"), 2, out)
            self.assertEqual(jobs(c, "node2"), [])
            self.assertEqual([j["where"] for j in jobs(c)], ["node1", "node1"])
            c.wait_for(lambda: nodes(c)["node2"]["blocked"], 20, "node1 to learn node2 is blocked")

            # A blocked node refuses new guests and moves, and says so.
            result = c.run("node1", "mosrun", "-r", "node2", "true", check=False)
            self.assertNotEqual(result.returncode, 0)
            self.assertIn("accepts no guests", result.stdout + result.stderr)
            pid = jobs(c)[0]["pid"]
            result = c.run("node1", "mosmigrate", str(pid), "node2", check=False)
            self.assertNotEqual(result.returncode, 0)
            self.assertIn("accepts no guests", result.stderr)

            # bring: node1's jobs elsewhere come home.
            c.run("node2", "mosctl", "unblock")
            for job in jobs(c):
                c.run("node1", "mosmigrate", str(job["pid"]), "node3")
            self.assertEqual([j["where"] for j in jobs(c)], ["node3", "node3"])
            out = c.run("node1", "mosctl", "bring").stdout
            self.assertIn("2 moved, 0 stayed", out)
            self.assertEqual([j["where"] for j in jobs(c)], ["node1", "node1"])
            self.assertEqual(jobs(c, "node3"), [])
            self.assertIn("0 moved, 0 stayed", c.run("node1", "mosctl", "bring").stdout)
            # Only root administers a node.
            result = c.run("node1", "setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                           "mosctl", "block", check=False)
            self.assertIn("only root", result.stderr)



if __name__ == "__main__":
    harness.main()
