#!/usr/bin/python3
"""The daemon's core holds: an exception thrown in an event-loop callback stops at the
C-boundary guard (logged) and the daemon serves on; a fault point that does not exist is a
start-up error, not a failure test that silently fails nothing."""

import json
import os
import subprocess
import tempfile
import unittest

import harness


class DaemonCoreTest(unittest.TestCase):
    def test_throwing_loop_callback_is_logged_and_the_daemon_lives(self):
        with harness.LoopCluster(1, faults="loop-callback-throws") as c:
            c.wait_for(lambda: "stopped at the C boundary" in c.log("node1"), 30,
                       "the guard's log line")
            self.assertIn("completion of thread-pool work: fault point loop-callback-throws",
                          c.log("node1"))
            # The daemon still serves: requests, and a whole job through its loop.
            self.assertEqual(json.loads(c.run("node1", "mosps", "--json").stdout)["jobs"], [])
            result = c.run("node1", "sh", "-c", "echo hello | mosrun cat; echo $?")
            self.assertEqual(result.stdout, "hello\n0\n")

    def test_a_node_name_is_never_taken_for_a_verb(self):
        with harness.LoopCluster(1) as c:
            c.run("node1", "sh", "-c", "mosrun sleep 600 >/dev/null 2>&1 & echo started")
            pid = c.wait_for(lambda: next(
                (j["pid"] for j in json.loads(c.run("node1", "mosps", "--json").stdout)["jobs"]
                 if j["state"] == "running"), None), 30, "the job to run")
            # "freeze" named as a node is a move to a node of that name (there is none),
            # not the freeze verb: the job runs on, unfrozen.
            moved = c.run("node1", "mosmigrate", "--node", str(pid), "freeze", check=False)
            self.assertEqual(moved.returncode, 1, moved.stdout)
            self.assertIn("freeze", moved.stderr)
            self.assertNotIn("frozen", moved.stdout + moved.stderr)
            jobs = json.loads(c.run("node1", "mosps", "--json").stdout)["jobs"]
            self.assertEqual([(j["pid"], j["state"]) for j in jobs], [(pid, "running")])
            # The verb itself still freezes it; mosps --json shows the state by its name.
            c.run("node1", "mosmigrate", str(pid), "freeze", timeout=120)
            jobs = json.loads(c.run("node1", "mosps", "--json").stdout)["jobs"]
            self.assertEqual([(j["pid"], j["state"]) for j in jobs], [(pid, "frozen")])
            # Without a directory, checkpoint adds one to the job's own (mosrun -C): a
            # frozen job is not checkpointed.
            checkpoint = c.run("node1", "mosmigrate", str(pid), "checkpoint", check=False)
            self.assertEqual(checkpoint.returncode, 1)
            self.assertIn(f"job {pid} is frozen", checkpoint.stderr)

    def test_unknown_fault_point_is_a_start_up_error(self):
        daemon = os.path.join(harness.BUILD, "noded", "mosnoded")
        with tempfile.TemporaryDirectory(prefix="homeward-test-") as scratch:
            result = subprocess.run(
                [daemon, "--config", os.path.join(scratch, "no-such.toml")],
                env=dict(os.environ, HOMEWARD_FAULT="stream-mid,restore-crui"),
                capture_output=True, text=True, timeout=30)
        self.assertEqual(result.returncode, 2, result.stderr)
        self.assertIn("HOMEWARD_FAULT names an unknown fault point 'restore-crui'", result.stderr)
        self.assertIn("restore-criu", result.stderr)  # the known points are listed


if __name__ == "__main__":
    harness.main()
