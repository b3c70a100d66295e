#!/usr/bin/python3
"""mosctl leave: node1 leaves the cluster. Its guest (a job of node2) goes home, and its
jobs running on node2, one more than node1 has cores, come home: as many as there are
cores run, the last one waits frozen to disk (mosps: frozen) rather than overload the
home, and continues by itself once a job has ended and freed a core. Each job is an
ordinary user's, fed on its standard input; every line it was fed is in its output, once
and in order. While node1 is out its jobs stay home; mosctl join takes it back."""

import json
import os
import unittest

import harness

# Moves by hand (and by leave) only: the balancers would spread the jobs by themselves.
SETTINGS = ["gossip.interval_ms=200", "balance.automatic=false"]
WAIT_S = 90  # generous: the machine is shared and noisy

READER = harness.LINE_LOGGER


class LeaveTest(unittest.TestCase):
    def test_leave_sends_guests_home_and_brings_jobs_home_frozen_when_full(self):
        user = harness.user_for(self, "hwlv").pw_name
        with harness.LoopCluster(2, settings=SETTINGS) as c:
            harness.wait_until_meshed(c)
            cores = next(n["cpus"] for n in json.loads(c.run("node1", "mosmon", "--json").stdout)
                         ["nodes"] if n["name"] == "node1")
            jobs = {}  # name -> [work, writer, pid, lines fed]
            for i in range(cores + 1):
                name = f"job{i}"
                work, writer, pid = harness.start_fed_job(
                    self, c, user, name, READER, "-r node2", home="node1",
                    known=[j[2] for j in jobs.values()])
                jobs[name] = [work, writer, pid, []]
            guest_work, guest_writer, guest_pid = harness.start_fed_job(
                self, c, user, "guest", READER, "-r node1", home="node2")

            def states():
                return {j["pid"]: (j["where"], j["state"]) for j in harness.jobs(c, "node1")}

            def feed(name, line, where):
                work, writer, pid, fed = jobs[name]
                fed.append(f"{line} node1")
                writer.write(line + "\n")
                writer.flush()
                c.wait_for(lambda: harness.read_text(os.path.join(work, "log")) ==
                           "".join(f + "\n" for f in fed), WAIT_S, f"{name} to log {line!r}")
                self.assertEqual(states()[pid][0], where)

            c.wait_for(lambda: all(states().get(j[2]) == ("node2", "running")
                                   for j in jobs.values()), WAIT_S, "the jobs to run on node2")
            for name in jobs:
                feed(name, "away", "node2")

            left = c.run("node1", "mosctl", "leave", check=False)
            self.assertEqual(left.returncode, 0, left.stdout + left.stderr)
            self.assertIn(f"moved    job {guest_pid} (home node2) node1 -> node2", left.stdout)
            for name, (_, _, pid, _) in jobs.items():
                self.assertIn(f"moved    job {pid} (home node1) node2 -> node1", left.stdout)
            self.assertIn("this node has left the cluster", left.stdout)

            # As many run at home as it has cores; the last one brought waits frozen.
            c.wait_for(lambda: sorted(s for s in states().values()) ==
                       sorted([("node1", "running")] * cores + [("node1", "frozen")]),
                       WAIT_S, "one job to wait frozen at home")
            frozen = next(n for n, j in jobs.items() if states()[j[2]][1] == "frozen")
            running = [n for n in jobs if n != frozen]
            self.assertIn(f"job {jobs[frozen][2]} came home to no room", c.log("node1"))
            for name in running:
                feed(name, "home", "node1")
            # While out, node1's jobs stay home.
            refused = c.run("node1", "runuser", "-u", user, "--", "mosrun", "-r", "node2",
                            "true", check=False)
            self.assertNotEqual(refused.returncode, 0)
            self.assertIn("node1 has left the cluster", refused.stderr)

            # One job ends: its core goes to the frozen one, which continues at home.
            first = running[0]
            jobs[first][1].close()
            c.wait_for(lambda: states().get(jobs[frozen][2]) == ("node1", "running"),
                       WAIT_S, "the frozen job to continue")
            self.assertIn(f"job {jobs[frozen][2]} continues: a core is free here",
                          c.log("node1"))
            feed(frozen, "continued", "node1")

            joined = c.run("node1", "mosctl", "join", check=False)
            self.assertEqual(joined.returncode, 0, joined.stdout + joined.stderr)
            self.assertNotIn("has left", joined.stdout)
            for name, (work, writer, pid, fed) in jobs.items():
                if not writer.closed:
                    writer.close()
                c.wait_for(lambda: harness.read_text(os.path.join(work, "status")) == "0\n",
                           WAIT_S, f"{name} to end")
                self.assertEqual(harness.read_text(os.path.join(work, "log")),
                                 "".join(f + "\n" for f in fed) + "done\n")
            # The guest went home, and ends there.
            self.assertEqual([(j["pid"], j["where"]) for j in harness.jobs(c, "node2")],
                             [(guest_pid, "node2")])
            guest_writer.close()
            c.wait_for(lambda: harness.read_text(os.path.join(guest_work, "status")) == "0\n",
                       WAIT_S, "the guest to end")


if __name__ == "__main__":
    harness.main()
