#!/usr/bin/env python3
"""The test machinery leaves nothing behind: a test program killed as meson kills one past
its timeout (SIGTERM to its process group, SIGKILL 0.5 s later), or killed outright, has
its guard take its cluster down and remove its throwaway user and its files."""

import json
import os
import pwd
import select
import signal
import subprocess
import sys
import time
import unittest

import harness

HERE = os.path.dirname(os.path.realpath(__file__))

# A test program that makes a throwaway user and a cluster, says what it made, and waits
# to be killed.
KILLED_PROGRAM = r"""
import json, os, signal, sys, time
sys.path.insert(0, sys.argv[1])
import harness
signal.signal(signal.SIGTERM, harness._interrupted)
harness.add_user(sys.argv[3])
with harness.LoopCluster(1) as c:
    made = {"guard": harness.guard_pid(), "dir": c.dir, "private": harness.private_dir(),
            "daemon": c.node("node1")["pid"]}
    with open(sys.argv[2] + ".new", "w") as f:
        json.dump(made, f)
    os.rename(sys.argv[2] + ".new", sys.argv[2])
    time.sleep(600)
"""


class ClusterHygieneTest(unittest.TestCase):
    def run_and_kill(self, gently):
        """Starts a test program that makes a user and a cluster, and kills it: as meson does
        (`gently`: SIGTERM to its process group, SIGKILL 0.5 s later), or with SIGKILL at
        once. Returns what it had made, once its guard is done."""
        user = f"hwk{os.urandom(4).hex()}"
        made_file = os.path.join(harness.private_dir(), f"made-{user}.json")
        program = os.path.join(harness.private_dir(), "k.py")
        with open(program, "w") as f:
            f.write(KILLED_PROGRAM)
        # Its private directory beside ours, not in it: a control socket's path must stay
        # short (108 bytes).
        env = dict(os.environ, TMPDIR=os.path.dirname(harness.private_dir()))
        child = subprocess.Popen([sys.executable, program, HERE, made_file, user],
                                 start_new_session=True, env=env)
        try:
            deadline = time.monotonic() + 120
            while not os.path.exists(made_file):
                self.assertIsNone(child.poll(), "the program ended before it was killed")
                self.assertLess(time.monotonic(), deadline, "the program never got going")
                time.sleep(0.1)
            with open(made_file) as f:
                made = json.load(f)
            made["user"] = user
            guard = os.pidfd_open(made["guard"])
            if gently:
                # What meson does to a test past its timeout (mtest.py, TestSubprocess._kill).
                os.killpg(child.pid, signal.SIGTERM)
                try:
                    child.wait(timeout=0.5)
                except subprocess.TimeoutExpired:
                    pass
            if child.poll() is None:
                os.killpg(child.pid, signal.SIGKILL)
            child.wait()
        finally:
            if child.poll() is None:
                os.killpg(child.pid, signal.SIGKILL)
                child.wait()
        ready, _, _ = select.select([guard], [], [], 180)
        self.assertTrue(ready, "the guard did not finish")
        return made

    def assert_nothing_left(self, made):
        stat = harness.read_text(f"/proc/{made['daemon']}/stat")
        self.assertIn(stat.rsplit(")", 1)[-1].split()[:1], ([], ["Z"]), "the daemon runs on")
        self.assertEqual([m for m in harness.host_mounts() if m.startswith(made["dir"])], [])
        with self.assertRaises(KeyError):
            pwd.getpwnam(made["user"])
        self.assertFalse(os.path.exists(made["private"]), "the program's files are left")
        self.assertFalse(os.path.exists(made["private"] + ".guard"), "the guard's ledger is left")
        daemons = subprocess.run(["pgrep", "-fa", "mosnoded"], capture_output=True, text=True)
        self.assertNotIn(made["dir"], daemons.stdout)

    def test_a_program_killed_as_meson_kills_it_leaves_nothing(self):
        self.assert_nothing_left(self.run_and_kill(gently=True))

    def test_a_program_killed_outright_leaves_nothing(self):
        self.assert_nothing_left(self.run_and_kill(gently=False))


if __name__ == "__main__":
    harness.main()
