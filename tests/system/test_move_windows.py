#!/usr/bin/python3
"""A home killed in a move's small windows neither loses the job nor runs it twice.

- Between Arrived and Migrated: the target has restored the job and said so, and the home's
  daemon dies (the fault point kill-after-arrived) before it journals the job as away on
  the target. The home's journal has the target's word (`departure arrived node2`, written
  as soon as it came), so the next daemon keeps its stopped copy stopped and waits for
  node2, whose copy attaches again: node2 takes the job over, the copy at home is killed,
  and the job finishes there once, its whole output an unfaulted run's.

Every job runs as a throwaway ordinary user (made here, removed afterwards)."""

import os

import harness
import test_fencing

read = harness.read_text
jobs = harness.jobs
count = harness.count
alive = test_fencing.alive
journal_init = test_fencing.journal_init

WAITING = test_fencing.WAITING


# Its setUp (a throwaway user) and helpers; its own cases are not run again here.
class MoveWindowsTest(test_fencing.FencingTest):
    def home_killed_by(self, c, fault):
        """Waits for node1's daemon to hit `fault` (it kills itself) and to be gone."""
        c.wait_for(lambda: f"fault point {fault}" in c.log("node1"), 60,
                   f"node1's daemon to hit {fault}")
        home = c.node("node1")["address"]
        c.wait_for(lambda: "node1\tdown" in self.status(c).replace(f"\t{home}\t", "\t"),
                   60, "node1's daemon to be gone")

    def test_a_home_killed_between_arrived_and_migrated(self):
        with harness.LoopCluster(2, settings=["gossip.interval_ms=200"],
                                 faults="kill-after-arrived") as c:
            # Waits with shell builtins only: on node2 while its home is down, a program
            # loaded from the home's files would wait for it.
            work, inside, pid = self.job_at_its_gate(c, "arrived", test_fencing.BUILTIN_COUNTER)
            entry = os.path.join(c.node("node1")["state"], "jobs", str(pid))
            old_init = journal_init(entry)
            self.assertGreater(old_init, 0, read(entry))
            c.run("node1", "sh", "-c", f"mosmigrate {pid} node2 > {inside}/move 2>&1 &")
            self.home_killed_by(c, "kill-after-arrived")
            # The journal names the handover, with its target; the copy at home is stopped.
            self.assertIn("departure arrived node2", read(entry))
            self.assertTrue(alive(old_init))
            c.wait_for(lambda: WAITING in read(os.path.join(work, "err")), 30,
                       "mosrun to say it waits for its daemon")
            c.start("node1")
            c.wait_for(lambda: f"job {pid}: node node2 took it over" in c.log("node1"), 90,
                       "node2 to take the job over")
            self.assertIn(f"job {pid}: its move was cut by the restart", c.log("node1"))
            self.assertNotIn(f"job {pid}: node2 did not take it over", c.log("node1"))
            # One copy, on node2: the stopped one at home is gone, with its keeper.
            c.wait_for(lambda: not alive(old_init), 30, "the copy at home to be killed")
            here = c.wait_for(lambda: [j for j in jobs(c) if j["user"] == self.user
                                       and j["where"] == "node2"], 30,
                              "the home to list the job on node2")
            self.assertEqual(len(here), 1, here)
            self.assertEqual(len([j for j in jobs(c, "node2") if j["user"] == self.user]), 1)
            err = self.finish(c, work)
            self.assertEqual(err, WAITING)
            # Every line once: nothing of the copy at home ran after the dump.
            self.assertEqual(read(os.path.join(work, "out")), count(0, 199) + "done\n")
            self.assertEqual(self.user_processes(c, "node2"), [])
            self.assert_nothing_left(c, ("node1", "node2"))

    def test_a_home_killed_while_a_job_comes_home(self):
        """The job comes home from node2 while node2 still sends the output it owed mosrun,
        and the home's daemon dies (the fault point kill-after-homecoming) with the job
        journaled home, where its output starts not known yet (`base pending`). The next
        daemon takes the job back, and mosrun's offsets say where its output here starts:
        the job finishes at home, its whole output an unfaulted run's. node2 holds its
        last word (the fault point movedon-hold) so that the window is open whatever the
        timing: it hears the job arrived as soon as node1 restored it, and could otherwise
        have its word in before node1 has taken the job back."""
        with harness.LoopCluster(2, settings=["gossip.interval_ms=200"],
                                 faults="kill-after-homecoming,movedon-hold") as c:
            work, inside, pid = self.job_at_its_gate(c, "homecoming", test_fencing.BUILTIN_COUNTER)
            c.run("node1", "mosmigrate", str(pid), "node2")
            c.run("node1", "sh", "-c", f"mosmigrate {pid} node1 > {inside}/move 2>&1 &")
            self.home_killed_by(c, "kill-after-homecoming")
            self.assertIn("fault point movedon-hold", c.log("node2"))
            entry = os.path.join(c.node("node1")["state"], "jobs", str(pid))
            self.assertIn("base pending", read(entry))
            self.assertNotIn("away ", read(entry))
            c.wait_for(lambda: WAITING in read(os.path.join(work, "err")), 30,
                       "mosrun to say it waits for its daemon")
            c.start("node1")
            c.wait_for(lambda: f"job {pid}: its output here starts after mosrun's bytes"
                       in c.log("node1"), 60, "mosrun to come back to the restarted daemon")
            self.assertEqual([j["where"] for j in jobs(c) if j["user"] == self.user], ["node1"])
            err = self.finish(c, work)
            self.assertEqual(err, WAITING)
            self.assertEqual(read(os.path.join(work, "out")), count(0, 199) + "done\n")
            self.assert_nothing_left(c, ("node1", "node2"))


for name in [n for n in dir(test_fencing.FencingTest) if n.startswith("test_")]:
    setattr(MoveWindowsTest, name, None)

if __name__ == "__main__":
    harness.main()
