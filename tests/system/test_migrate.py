#!/usr/bin/python3
"""Migration, zdtm-shaped: a job at node1 counts, appends to a file in node1's /data,
keeps a file open at an offset and prints to stdout; it is moved to node2 while it runs,
and its stdout and file must be byte-identical to those of a run that never moved. A
failed move (a dead target, a stream cut halfway, a restore that fails) leaves the job
running where it was, and says why."""

import json
import os
import unittest

import harness

# Halfway, the job waits for the file "go": the test makes it once its moves are done, so
# that a slow machine cannot let the job end before the moves it is there to undergo.
WORKLOAD = r"""
exec 3>>/data/work/appended
exec 4</data/work/input
i=0
while [ $i -lt 30 ]; do
  read line <&4
  echo "step $i read $line host $(hostname)"
  echo "appended $i" >&3
  i=$((i+1))
  if [ $i = 15 ]; then until [ -e /data/work/go ]; do sleep 0.05; done; fi
  sleep 0.1
done
echo done
"""


def job_where(cluster, pid):
    jobs = json.loads(cluster.run("node1", "mosps", "--json").stdout)["jobs"]
    return next((j for j in jobs if j["pid"] == pid), None)


def wait_for_home_mounts(cluster, nodes):
    """Waits until every one of `nodes` has node1's files mounted (gossip, then homefs)."""
    cluster.wait_for(lambda: all(cluster.run(n, "test", "-d", "/mosix/home/node1/data",
                                             check=False).returncode == 0 for n in nodes),
                     30, "the nodes to mount node1's files")


def wait_for_job(cluster):
    """Waits for node1's first job to be listed; returns its home pid."""
    return cluster.wait_for(lambda: next(
        (j["pid"] for j in json.loads(cluster.run("node1", "mosps", "--json").stdout)["jobs"]),
        None), 20, "the job to start")


def commands_under(root):
    """The command lines of every process below `root` (a daemon: its jobs), from /proc."""
    parents = {}
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/stat") as f:
                parents[int(entry)] = int(f.read().rsplit(")", 1)[1].split()[1])
        except (ValueError, OSError, IndexError):
            continue
    below, frontier = [], [root]
    while frontier:
        pid = frontier.pop()
        children = [p for p, parent in parents.items() if parent == pid]
        below += children
        frontier += children
    commands = []
    for pid in below:
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                commands.append(f.read().replace(b"\0", b" ").decode(errors="replace").strip())
        except OSError:
            continue
    return commands


class MigrationTest(unittest.TestCase):
    def run_workload(self, cluster, moves, expect_failure=None):
        c = cluster
        c.run("node1", "sh", "-c", "mkdir -p /data/work && cd /data/work && "
                                   "rm -f appended out err status go && "
                                   "seq 100 > /data/work/input")
        c.run("node1", "sh", "-c", "cat > /data/work/workload.sh", input=WORKLOAD)
        # Start the job in the background; its stdout goes to a file at home.
        c.run("node1", "sh", "-c", "cd /data/work && "
                                   "(mosrun sh workload.sh > out 2>err; echo $? > status) "
                                   ">/dev/null 2>&1 & echo started")
        pid = wait_for_job(c)
        messages = []
        for target in moves:
            result = c.run("node1", "mosmigrate", str(pid), target, check=False)
            messages.append(result)
            if expect_failure is None:
                where = "node1" if target == "home" else target
                self.assertEqual(result.returncode, 0, result.stderr)
                self.assertIn(f"now runs on {where}", result.stdout)
                self.assertEqual(job_where(c, pid)["where"], where)
        c.run("node1", "touch", "/data/work/go")
        c.wait_for(lambda: c.run("node1", "cat", "/data/work/status", check=False).stdout,
                   60, "the job to end")
        out = c.run("node1", "cat", "/data/work/out").stdout
        appended = c.run("node1", "cat", "/data/work/appended").stdout
        status = c.run("node1", "cat", "/data/work/status").stdout
        return out, appended, status, messages, pid

    def test_move_keeps_output_files_and_offsets(self):
        with harness.LoopCluster(3, settings=["gossip.interval_ms=200"]) as c:
            wait_for_home_mounts(c, ("node2", "node3"))
            plain = self.run_workload(c, [])
            # node1 -> node2 -> node3 -> home, with a file open for appending and another
            # read at an offset all the way.
            moved = self.run_workload(c, ["node2", "node3", "home"])
            self.assertEqual(moved[0], plain[0])  # stdout, byte for byte
            self.assertEqual(moved[1], plain[1])  # the appended file
            self.assertEqual(moved[2], "0\n")
            self.assertIn("host node1", moved[0])
            self.assertEqual(json.loads(c.run("node1", "mosps", "--json").stdout)["jobs"], [])
            self.assertEqual(json.loads(c.run("node2", "mosps", "--json").stdout)["jobs"], [])
            # Nothing of the move is left behind on either node.
            for node in ("node1", "node2"):
                images = os.path.join(c.node(node)["state"], "images")
                self.assertEqual(os.listdir(images) if os.path.isdir(images) else [], [])

    def test_move_around_the_cluster_and_back_home(self):
        # A job whose only descriptors are its stdio: node1 -> node2 -> node3 -> home.
        # Halfway it waits for /data/hops.go, made once the moves are done. A hostname
        # that fails says how in its line, and the job's stderr is kept for the report.
        counter = ("i=0; while [ $i -lt 40 ]; do "
                   "echo \"$i $(hostname || echo hostname ended $?) $$\"; i=$((i+1)); "
                   "if [ $i = 20 ]; then until [ -e /data/hops.go ]; do sleep 0.05; done; fi; "
                   "sleep 0.1; done")
        with harness.LoopCluster(3, settings=["gossip.interval_ms=200"]) as c:
            wait_for_home_mounts(c, ("node2", "node3"))
            c.run("node1", "sh", "-c",
                  f"(mosrun sh -c '{counter}' > /data/hops 2> /data/hops.err; "
                  "echo $? > /data/hops.status) >/dev/null 2>&1 & echo started")
            pid = wait_for_job(c)
            for target, where in (("node2", "node2"), ("node3", "node3"), ("home", "node1")):
                result = c.run("node1", "mosmigrate", str(pid), target, check=False)
                self.assertEqual(result.returncode, 0, result.stderr)
                self.assertIn(f"now runs on {where}", result.stdout)
                job = job_where(c, pid)
                self.assertEqual(job["where"], where)
            self.assertEqual(job_where(c, pid)["migrations"], 3)
            c.run("node1", "touch", "/data/hops.go")
            c.wait_for(lambda: c.run("node1", "cat", "/data/hops.status", check=False).stdout,
                       60, "the job to end")
            self.assertEqual(c.run("node1", "cat", "/data/hops.status").stdout, "0\n")
            lines = c.run("node1", "cat", "/data/hops").stdout.splitlines()
            # Every line, in order, with the home's name and the job's home pid throughout.
            self.maxDiff = None  # a failure shows every line
            self.assertEqual(lines, [f"{i} node1 {pid}" for i in range(40)],
                             "the job's stderr: " + c.run("node1", "cat", "/data/hops.err").stdout)
            for node in ("node2", "node3"):
                self.assertEqual(json.loads(c.run(node, "mosps", "--json").stdout)["jobs"], [])

    def test_move_to_a_dead_or_unknown_node_leaves_the_job_running(self):
        with harness.LoopCluster(3, settings=["gossip.interval_ms=200", "gossip.suspect_ms=600",
                                              "gossip.dead_ms=1500"]) as c:
            c.kill("node3")
            # Dead, or already forgotten: either way node1 no longer counts on it.
            c.wait_for(lambda: not any(n["name"] == "node3" and n["alive"] for n in
                                       json.loads(c.run("node1", "mosmon", "--json").stdout)
                                       ["nodes"]),
                       60, "node1 to see node3 dead")
            plain = self.run_workload(c, [])
            failed = self.run_workload(c, ["node3", "node9"], expect_failure=True)
            self.assertEqual(failed[0], plain[0])
            self.assertEqual(failed[1], plain[1])
            dead, unknown = failed[3]
            self.assertEqual(dead.returncode, 1)
            self.assertRegex(dead.stderr, r"node node3 is dead|no node named 'node3'")
            self.assertIn("no node named 'node9'", unknown.stderr)

    def test_freeze_continue_and_checkpoint(self):
        with harness.LoopCluster(1) as c:
            plain = self.run_workload(c, [])
            c.run("node1", "sh", "-c", "cd /data/work && rm -rf appended out err status go ckpt && "
                                       "(mosrun sh workload.sh > out 2>err; echo $? > status) "
                                       ">/dev/null 2>&1 & echo started")
            pid = wait_for_job(c)
            checkpoint = c.run("node1", "sh", "-c", f"cd /data/work && mosmigrate {pid} "
                                                    "checkpoint ckpt && ls ckpt | grep -c img")
            self.assertIn("its checkpoint is in ckpt", checkpoint.stdout)
            self.assertGreater(int(checkpoint.stdout.split()[-1]), 0)
            daemon = c.node("node1")["pid"]
            self.assertIn("sh workload.sh", commands_under(daemon))
            frozen = c.run("node1", "mosmigrate", str(pid), "freeze")
            self.assertIn(f"job {pid} is frozen to disk at home", frozen.stdout)
            self.assertEqual(job_where(c, pid)["state"], "frozen")
            # Frozen to disk: none of its processes is left to write, so its output stands.
            before = c.run("node1", "cat", "/data/work/out").stdout
            self.assertNotIn("sh workload.sh", commands_under(daemon))
            self.assertEqual(c.run("node1", "cat", "/data/work/out").stdout, before)
            resumed = c.run("node1", "mosmigrate", str(pid), "continue")
            self.assertIn("now runs on node1", resumed.stdout)
            self.assertEqual(job_where(c, pid)["state"], "running")
            c.run("node1", "touch", "/data/work/go")
            c.wait_for(lambda: c.run("node1", "cat", "/data/work/status", check=False).stdout,
                       60, "the job to end")
            self.assertEqual(c.run("node1", "cat", "/data/work/out").stdout, plain[0])
            self.assertEqual(c.run("node1", "cat", "/data/work/appended").stdout, plain[1])
            self.assertEqual(c.run("node1", "cat", "/data/work/status").stdout, "0\n")
            frozen_dir = os.path.join(c.node("node1")["state"], "frozen")
            self.assertEqual(os.listdir(frozen_dir), [])

    def test_a_frozen_job_whose_mosrun_dies_ends(self):
        # Frozen, the job reads nothing of its mosrun: the home still sees it go, ends the
        # job and removes its images.
        with harness.LoopCluster(1) as c:
            c.run("node1", "sh", "-c", "(mosrun sh -c 'while :; do sleep 0.1; done' "
                                       ">/dev/null 2>&1 &) ; echo started")
            pid = wait_for_job(c)
            c.run("node1", "mosmigrate", str(pid), "freeze")
            frozen_dir = os.path.join(c.node("node1")["state"], "frozen")
            self.assertEqual(os.listdir(frozen_dir), [f"job-{pid}"])
            c.run("node1", "kill", "-9", str(pid))
            c.wait_for(lambda: json.loads(c.run("node1", "mosps", "--json").stdout)["jobs"] == [],
                       60, "the frozen job to be dropped")
            self.assertEqual(os.listdir(frozen_dir), [])
            self.assertIn(f"job {pid}: its mosrun is gone; ending it and removing its frozen "
                          "images", c.log("node1"))

    def test_pipeline_moves_as_one_and_a_hundred_moves_leak_nothing(self):
        # Three processes joined by pipes, counting until told to stop.
        pipeline = ("i=0; while [ ! -e /data/stop ]; do echo $i; i=$((i+1)); sleep 0.02; done "
                    "| tr 0-9 a-j | cat")
        with harness.LoopCluster(2, settings=["gossip.interval_ms=200"]) as c:
            wait_for_home_mounts(c, ("node2",))
            daemons = [c.node(n)["pid"] for n in ("node1", "node2")]
            fds_before = None
            c.run("node1", "sh", "-c", "rm -f /data/stop")
            c.run("node1", "sh", "-c", f"(mosrun sh -c '{pipeline}' > /data/piped; echo $? > "
                                       "/data/piped.status) >/dev/null 2>&1 & echo started")
            pid = wait_for_job(c)
            # 50 round trips in one command: a hundred moves.
            moves = c.run("node1", "sh", "-c",
                          f"n=0; for i in $(seq 50); do mosmigrate {pid} node2 >/dev/null && "
                          f"mosmigrate {pid} home >/dev/null && n=$((n+2)); "
                          f"[ $i = 3 ] && echo $(( $(ls /proc/{daemons[0]}/fd | wc -l) + "
                          f"$(ls /proc/{daemons[1]}/fd | wc -l) )) > /data/fds.early; "
                          "done; echo $n", timeout=400)
            self.assertEqual(moves.stdout.split()[-1], "100", moves.stderr)
            # The file service holds what the job's nodes looked up (a cache its clients
            # release) by the third round trip; the moves after it must add nothing.
            fds_before = int(c.run("node1", "cat", "/data/fds.early").stdout)
            fds_after = sum(len(os.listdir(f"/proc/{pid}/fd")) for pid in daemons)
            self.assertLessEqual(fds_after, fds_before + 4, "a daemon leaks descriptors")
            self.assertEqual(job_where(c, pid)["migrations"], 100)
            c.run("node1", "touch", "/data/stop")
            c.wait_for(lambda: c.run("node1", "cat", "/data/piped.status", check=False).stdout,
                       60, "the pipeline to end")
            self.assertEqual(c.run("node1", "cat", "/data/piped.status").stdout, "0\n")
            lines = c.run("node1", "cat", "/data/piped").stdout.splitlines()
            table = str.maketrans("0123456789", "abcdefghij")
            self.assertEqual(lines, [str(i).translate(table) for i in range(len(lines))])
            self.assertGreater(len(lines), 100)
            for node in ("node1", "node2"):
                images = os.path.join(c.node(node)["state"], "images")
                self.assertEqual(os.listdir(images) if os.path.isdir(images) else [], [])

    def test_target_dying_mid_move_leaves_the_job_running(self):
        # The target's daemon is killed while the move is under way: the fault point
        # stream-hold stops the images halfway, says so in the log, and waits for the
        # target to hang up.
        hog = ("python3 -c 'import sys,time\nb=bytearray(64<<20)\nfor i in range(0,len(b),4096): "
               "b[i]=1\nfor i in range(40):\n print(i, flush=True); time.sleep(0.25)'")
        with harness.LoopCluster(2, settings=["gossip.interval_ms=200"],
                                 faults="stream-hold") as c:
            wait_for_home_mounts(c, ("node2",))
            c.run("node1", "sh", "-c", f"(mosrun sh -c \"{hog}\" > /data/hog; echo $? > "
                                       "/data/hog.status) >/dev/null 2>&1 & echo started")
            pid = wait_for_job(c)
            c.wait_for(lambda: c.run("node1", "cat", "/data/hog").stdout.startswith("0"),
                       30, "the job to fill its memory")
            c.run("node1", "sh", "-c", f"mosmigrate {pid} node2 > /data/move.out 2>&1 &")
            c.wait_for(lambda: "fault point stream-hold: holding" in c.log("node1"), 60,
                       "the move to be halfway through its images")
            c.kill("node2")
            c.wait_for(lambda: c.run("node1", "cat", "/data/hog.status", check=False).stdout,
                       90, "the job to end")
            c.wait_for(lambda: f"job {pid} stays on node1" in
                       c.run("node1", "cat", "/data/move.out").stdout, 60,
                       "mosmigrate to say the job stays")
            self.assertEqual(c.run("node1", "cat", "/data/hog.status").stdout, "0\n")
            self.assertEqual(c.run("node1", "cat", "/data/hog").stdout,
                             "".join(f"{i}\n" for i in range(40)))

    def fails_at(self, fault, step, target_logs=()):
        """A move whose stream or target-side step fails (by a fault point in every
        daemon) leaves the job running at home with all of its output. `target_logs`:
        what the target's log must say, where the sender cannot know why."""
        with harness.LoopCluster(2, settings=["gossip.interval_ms=200"], faults=fault) as c:
            wait_for_home_mounts(c, ("node2",))
            out, appended, status, messages, pid = self.run_workload(
                c, ["node2"], expect_failure=True)
            self.assertEqual(messages[0].returncode, 1)
            self.assertIn(f"job {pid} stays on node1", messages[0].stderr)
            self.assertIn(step, messages[0].stderr)
            for line in target_logs:
                self.assertIn(line, c.log("node2"))
            self.assertEqual(status, "0\n")
            self.assertEqual(out.count("\n"), 31)
            self.assertNotIn("host node2", out)
            self.assertEqual(json.loads(c.run("node2", "mosps", "--json").stdout)["jobs"], [])

    def test_failed_restore_leaves_the_job_running(self):
        # criu fails at its post-restore step, after restoring the job (its log names the
        # failing script), and kills what it restored.
        self.fails_at("restore-criu", "fault-post-restore")

    def test_failed_dump_leaves_the_job_running(self):
        # criu fails at its post-dump step, with the images written, and thaws the job.
        self.fails_at("dump-criu", "fault-post-dump")

    def test_cut_stream_leaves_the_job_running(self):
        self.fails_at("stream-mid", "send the images")

    def test_damaged_stream_leaves_the_job_running(self):
        # The stream is sealed in records: the fault alters one after sealing it, and the
        # target refuses it as tampered (its connection ends, so the sender only sees the
        # target hang up).
        self.fails_at("stream-corrupt", "node2",
                      ("receive the images failed on node2", "failed to authenticate"))


if __name__ == "__main__":
    harness.main()
