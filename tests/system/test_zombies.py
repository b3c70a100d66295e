#!/usr/bin/python3
"""Every process has an owner: after many moves of a job between two nodes, and after
each way a restored job can fail to be taken over (a restore that fails, a node that
cannot adopt what CRIU restored, on arrival, on coming home and on continuing a frozen
job), no zombie is left under either daemon (each is a child subreaper, so every job's
init it does not reap stays a zombie)."""

import json
import os
import time
import unittest

import harness

# Moves of the quick-move test; HOMEWARD_ZOMBIE_MOVES may ask for fewer or more.
MOVES = int(os.environ.get("HOMEWARD_ZOMBIE_MOVES", "100"))
JOB = "i=0; while :; do i=$((i+1)); echo $i > /dev/null; sleep 0.05; done"


jobs = harness.jobs


def start_job(cluster):
    """Starts a small job at node1 in the background; returns its home pid."""
    cluster.run("node1", "sh", "-c", f"(mosrun sh -c '{JOB}' > /dev/null 2>&1 &) ; echo started")
    return cluster.wait_for(lambda: next((j["pid"] for j in jobs(cluster)
                                          if j["state"] == "running"), None),
                            20, "the job to start")


def end_job(cluster, pid):
    """Ends the job through its mosrun at home and waits until no node lists it."""
    cluster.run("node1", "kill", "-KILL", str(pid), check=False)
    cluster.wait_for(lambda: all(not jobs(cluster, n) for n in cluster.nodes), 30,
                     "the job to end everywhere")


def wait_for_home_mounts(cluster, nodes):
    cluster.wait_for(lambda: all(cluster.run(n, "test", "-d", "/mosix/home/node1/data",
                                             check=False).returncode == 0 for n in nodes),
                     30, "the nodes to mount node1's files")


class ZombieTest(unittest.TestCase):
    def assertNoZombies(self, cluster):
        # A job that has just ended is reaped on the daemon's next turn of its loop
        # (`zombies` gives that a moment), but a zombie that stays is a process nobody owns.
        left = {n: cluster.zombies(n) for n in cluster.nodes}
        self.assertFalse(any(left.values()), f"zombies left: {left}")

    def with_faults(self, faults):
        """A two-node cluster whose daemons hit the fault points `faults`."""
        return harness.LoopCluster(2, settings=["gossip.interval_ms=200"], faults=faults)

    def test_many_moves_leave_no_zombie(self):
        with harness.LoopCluster(2, settings=["gossip.interval_ms=200"]) as c:
            wait_for_home_mounts(c, ("node2",))
            pid = start_job(c)
            started = time.time()
            # Round trips in one command (one `loopcluster exec` per move would be slower
            # than the moves); it stops at the first move that fails, and says why.
            moves = c.run("node1", "sh", "-c",
                          f"n=0; while [ $n -lt {MOVES} ]; do "
                          f"if [ $((n % 2)) = 0 ]; then t=node2; else t=home; fi; "
                          f"mosmigrate {pid} $t >/dev/null || break; n=$((n+1)); done; echo $n",
                          timeout=540)
            self.assertEqual(moves.stdout.split()[-1], str(MOVES), moves.stderr)
            print(f"{MOVES} moves in {time.time() - started:.1f} s")
            job = next(j for j in jobs(c) if j["pid"] == pid)
            self.assertEqual(job["migrations"], MOVES)
            self.assertNoZombies(c)
            end_job(c, pid)
            self.assertNoZombies(c)

    def freeze_and_fail_to_continue(self, cluster, pid):
        """Freezes job `pid` and fails to continue it. The frozen job stays listed until
        the cluster goes: its mosrun's stream is not read while it is frozen, so mosrun's
        end is not seen before it continues (a known limit)."""
        cluster.run("node1", "mosmigrate", str(pid), "freeze")
        resumed = cluster.run("node1", "mosmigrate", str(pid), "continue", check=False)
        self.assertEqual(resumed.returncode, 1)
        self.assertIn(f"job {pid} stays frozen", resumed.stderr)
        self.assertNoZombies(cluster)

    def test_failed_restores_leave_no_zombie(self):
        # criu restores the job, then the step after it fails: the restore's own clean-up.
        with self.with_faults("restore-after-criu") as c:
            wait_for_home_mounts(c, ("node2",))
            pid = start_job(c)
            for _ in range(3):
                move = c.run("node1", "mosmigrate", str(pid), "node2", check=False)
                self.assertEqual(move.returncode, 1)
                self.assertIn(f"job {pid} stays on node1", move.stderr)
            self.assertNoZombies(c)
            self.freeze_and_fail_to_continue(c, pid)

    def test_restored_jobs_not_taken_over_leave_no_zombie(self):
        # criu restored the job, but the daemon cannot take it over: as a guest arriving,
        # as a job coming home, and as a frozen job continuing.
        with self.with_faults("adopt-restored") as c:
            wait_for_home_mounts(c, ("node2",))
            # The move itself succeeds (node2 restored the job and said so); node2 then
            # fails to take it over, and the job ends.
            pid = start_job(c)
            c.run("node1", "mosmigrate", str(pid), "node2", check=False)
            c.wait_for(lambda: not jobs(c), 30, "the job to end")
            self.assertNoZombies(c)
            # Started on node2 directly (no restore there), it cannot come home.
            c.run("node1", "sh", "-c",
                  f"(mosrun -r node2 sh -c '{JOB}' > /dev/null 2>&1 &) ; echo started")
            pid = c.wait_for(lambda: next((j["pid"] for j in jobs(c) if j["where"] == "node2"
                                           and j["state"] == "running"), None),
                             20, "the job to run on node2")
            back = c.run("node1", "mosmigrate", str(pid), "home", check=False)
            self.assertIn("cannot take back", back.stderr)
            c.wait_for(lambda: not jobs(c), 40, "the job to end")
            self.assertNoZombies(c)
            self.freeze_and_fail_to_continue(c, start_job(c))


if __name__ == "__main__":
    harness.main()
