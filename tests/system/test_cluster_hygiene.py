#!/usr/bin/python3
"""The test machinery leaves nothing behind and never shares a slot: a test program killed
as meson kills one past its timeout (SIGTERM to its process group, SIGKILL 0.5 s later)
has its guard take its cluster down and remove its throwaway user and its files; two
clusters started at once, even racing for one stale slot, get different slots."""

import importlib.machinery
import importlib.util
import json
import multiprocessing
import os
import pwd
import select
import signal
import subprocess
import sys
import tempfile
import threading
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


def load_loopcluster():
    loader = importlib.machinery.SourceFileLoader("loopcluster", harness.LOOPCLUSTER)
    spec = importlib.util.spec_from_loader("loopcluster", loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


def race_for_a_slot(role, slots, cluster_dir, checked, results, done):
    """One 'up' taking a slot, slowed so that, without a lock, the worst order happens: the
    second racer finds the stale slot stale, the first takes it over, then the second,
    on what it found, removes the first's claim and takes the slot too. With the lock the
    waits time out (3 s): the other racer waits for the lock, not at these points."""
    loopcluster = load_loopcluster()
    loopcluster.SLOTS = slots
    is_stale = loopcluster.slot_is_stale
    dead_pid = loopcluster.read(os.path.join(slots, "1", "pid"))

    def slow_stale(path):
        stale = is_stale(path)
        if role == 1:
            checked.wait(3)  # until the second racer has looked
            return stale
        checked.set()
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:  # until the first racer has claimed the slot
            if loopcluster.read(os.path.join(path, "pid")) not in ("", dead_pid):
                break
            time.sleep(0.01)
        return stale

    loopcluster.slot_is_stale = slow_stale
    results.put(loopcluster.take_slot(cluster_dir))
    done.wait(60)  # its 'up' runs on: its slot stays live until the test is done


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

    def test_two_racers_for_one_stale_slot_get_different_slots(self):
        slots = tempfile.mkdtemp(prefix="slots-", dir=harness.private_dir())
        # Slot 1 is stale: the 'up' that took it is gone and its cluster has no cluster.json.
        dead = subprocess.Popen(["true"])
        dead.wait()
        os.mkdir(os.path.join(slots, "1"))
        with open(os.path.join(slots, "1", "pid"), "w") as f:
            f.write(str(dead.pid))
        with open(os.path.join(slots, "1", "owner"), "w") as f:
            f.write(os.path.join(slots, "gone"))
        context = multiprocessing.get_context("fork")
        checked, results, done = context.Event(), context.Queue(), context.Event()
        racers = [context.Process(target=race_for_a_slot,
                                  args=(i, slots, os.path.join(slots, f"cluster{i}"), checked,
                                        results, done)) for i in (1, 2)]
        for racer in racers:
            racer.start()
        try:
            taken = sorted(results.get(timeout=60) for _ in racers)
        finally:
            done.set()
            for racer in racers:
                racer.join(60)
        self.assertEqual(len(set(taken)), 2, f"both racers took slot {taken[0]}")
        self.assertIn(1, taken)  # the stale slot was taken over, by one of them

    def test_two_clusters_started_at_once_get_different_slots(self):
        clusters = [harness.LoopCluster(1), harness.LoopCluster(1)]
        errors = []

        def up(cluster):
            try:
                cluster.__enter__()
            except BaseException as e:  # reported below, on the test's thread
                errors.append(e)

        threads = [threading.Thread(target=up, args=(c,)) for c in clusters]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        try:
            self.assertEqual(errors, [])
            slots = [c.info["slot"] for c in clusters]
            self.assertNotEqual(slots[0], slots[1])
            self.assertNotEqual(clusters[0].node("node1")["address"],
                                clusters[1].node("node1")["address"])
            for c in clusters:
                self.assertEqual(c.run("node1", "hostname").stdout, "node1\n")
        finally:
            for c in clusters:
                if getattr(c, "info", None) is not None:
                    c.__exit__(None, None, None)


if __name__ == "__main__":
    harness.main()
