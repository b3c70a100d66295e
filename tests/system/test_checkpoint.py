#!/usr/bin/python3
"""Checkpoints and restart (mosrun -C, -A, -N, -S, -R; mosmigrate PID checkpoint).

A job that counts, with a gate it waits at, is checkpointed while it waits; the cluster is
then stopped whole (`loopcluster down`, as a reboot would) and started again, and
`mosrun -R` restarts the job: its count goes on from the checkpoint, byte for byte what an
unfaulted run prints from there. The job is an ordinary user's (made here, removed
afterwards), its checkpoints are the user's; a checkpoint the user changed is passed over.
A checkpoint directory on a full filesystem keeps its last good checkpoint, and a restart
from it works."""

import json
import os
import re
import shutil
import subprocess
import unittest

import harness

COUNTER = harness.COUNTER_JOB

# Counts to 99, asks for a checkpoint itself (mosrun -S USR1) and waits until it is
# there, counts on to 149, waits for `go`, counts on to 199.
ASKER = r"""
i=0
while [ $i -lt 100 ]; do echo $i; i=$((i+1)); done
kill -USR1 $$
while [ ! -e ck/ckpt-1 ]; do sleep 0.05; done
while [ $i -lt 150 ]; do echo $i; i=$((i+1)); done
while [ ! -e go ]; do sleep 0.05; done
while [ $i -lt 200 ]; do echo $i; i=$((i+1)); done
echo done
"""

# The same, asking once it was moved (the file `moved`), where it runs then.
ASKER_AWAY = r"""
i=0
while [ $i -lt 100 ]; do echo $i; i=$((i+1)); done
while [ ! -e moved ]; do sleep 0.05; done
kill -USR1 $$
while [ ! -e ck/ckpt-1 ]; do sleep 0.05; done
while [ $i -lt 200 ]; do echo $i; i=$((i+1)); done
echo done
"""


count = harness.count


def reboot(c):
    """Stops the whole cluster (every daemon and job) and starts it again in the same
    directory: its nodes keep their state and data directories, as after a reboot."""
    subprocess.run([harness.LOOPCLUSTER, "down", c.dir], env=c.env(), check=True,
                   capture_output=True, timeout=60)
    args = [harness.LOOPCLUSTER, "up", "--nodes", str(len(c.nodes)), "--dir", c.dir]
    for setting in c.settings:
        args += ["--set", setting]
    result = subprocess.run(args, env=c.daemon_env(), capture_output=True, text=True,
                            timeout=90)
    if result.returncode != 0:
        raise AssertionError(f"loopcluster up failed:\n{result.stderr}")
    c.reload()


def checkpoints(path):
    try:
        return sorted(os.listdir(path))
    except OSError:
        return []


class CheckpointTest(unittest.TestCase):
    def setUp(self):
        if shutil.which("useradd") is None:
            self.skipTest("no useradd")
        self.user = "hwckpt" + str(os.getpid() % 100000)
        harness.add_user(self.user)
        self.addCleanup(harness.remove_user, self.user)
        self.uid = int(subprocess.run(["id", "-u", self.user], capture_output=True, text=True,
                                      check=True).stdout)
        # Another ordinary user, who must not restart the first one's job.
        self.other = "hwother" + str(os.getpid() % 100000)
        harness.add_user(self.other)
        self.addCleanup(harness.remove_user, self.other)

    def as_user(self, command):
        return ["runuser", "-u", self.user, "--", "sh", "-c", command]

    def job_pid(self, c):
        def find():
            jobs = json.loads(c.run("node1", "mosps", "--json").stdout)["jobs"]
            return jobs[0]["pid"] if jobs else None
        return c.wait_for(find, 60, "the job to be listed")

    def test_periodic_checkpoints_survive_a_reboot_and_restart(self):
        with harness.LoopCluster(1) as c:
            data = c.node("node1")["data"]
            work = os.path.join(data, "u")
            os.makedirs(work)
            os.chown(work, self.uid, self.uid)
            with open(os.path.join(work, "counter.sh"), "w") as f:
                f.write(COUNTER)
            # An unfaulted run, for what the restarted one must print.
            c.run("node1", *self.as_user("cd /data/u && touch go && mosrun sh counter.sh "
                                         "> plain && rm go"))
            c.run("node1", *self.as_user(
                "cd /data/u && (mosrun -C ckpts -A 0.05 -N 2 sh counter.sh > out1 2> err1; "
                "echo $? > status1) > /dev/null 2>&1 & echo started"))
            pid = self.job_pid(c)
            c.wait_for(lambda: open(os.path.join(work, "out1")).read() == count(0, 99), 60,
                       "the job to wait at its gate")
            ckpts = os.path.join(work, "ckpts")
            c.wait_for(lambda: "ckpt-3" in checkpoints(ckpts), 120, "a third checkpoint")
            # -N 2: the oldest go; every one is the user's, complete and sealed.
            c.wait_for(lambda: "ckpt-1" not in checkpoints(ckpts), 30, "ckpt-1 to be removed")
            for name in checkpoints(ckpts):
                if name.startswith("ckpt-"):
                    st = os.stat(os.path.join(ckpts, name))
                    self.assertEqual(st.st_uid, self.uid, name)
            # One more on demand, into the job's own directory.
            # (It may meet a periodic one under way: "try again".)
            demand = c.wait_for(lambda: c.run("node1", *self.as_user(
                f"mosmigrate {pid} checkpoint"), check=False).stdout, 60, "a checkpoint on demand")
            self.assertRegex(demand, r"its checkpoint is in /data/u/ckpts/ckpt-\d+")
            with open(os.path.join(work, "out1")) as f:
                self.assertEqual(f.read(), count(0, 99))

            reboot(c)
            # A checkpoint the user changed (newer than the real ones) is passed over:
            # the daemon restores only what it sealed.
            newest = max((n for n in checkpoints(ckpts) if n.startswith("ckpt-")),
                         key=lambda n: int(n[5:]))
            c.run("node1", *self.as_user(
                f"cd /data/u/ckpts && cp -r {newest} ckpt-999 && "
                "for f in ckpt-999/pstree.img; do printf x | dd of=$f bs=1 seek=20 "
                "conv=notrunc 2>/dev/null; done"))
            # Another user who can read them (the owner made them readable) cannot restart
            # them: the daemon restores only a job of the caller's own. (A partial one the
            # reboot cut short is root's until the next checkpoint there removes it.)
            c.run("node1", *self.as_user("chmod a+rX /data/u/ckpts && "
                                         "chmod -R a+rX /data/u/ckpts/ckpt-*"))
            stolen = c.run("node1", "runuser", "-u", self.other, "--", "sh", "-c",
                           "cd /tmp && mosrun -R /data/u/ckpts", check=False, timeout=120)
            self.assertEqual(stolen.returncode, 255, stolen.stdout + stolen.stderr)
            self.assertIn(f"it is a job of uid {self.uid}", stolen.stderr)
            self.assertEqual(stolen.stdout, "")
            c.run("node1", "touch", "/data/u/go")
            restarted = c.run("node1", *self.as_user("cd /data/u && mosrun -R ckpts"),
                              timeout=120)
            self.assertIn("mosrun: job restarted from checkpoint", restarted.stderr)
            self.assertNotIn("checkpoint 999", restarted.stderr)
            self.assertIn("ckpt-999 passed over", c.log("node1"))
            self.assertEqual(restarted.stdout, count(100, 199) + "done\n")
            with open(os.path.join(work, "plain")) as f:
                self.assertEqual(count(0, 99) + restarted.stdout, f.read())
            restart_work = os.path.join(c.node("node1")["state"], "restart")
            self.assertEqual(os.listdir(restart_work), [])
            self.assertEqual(c.zombies("node1"), [])

    def test_job_asks_for_a_checkpoint_and_a_full_directory_keeps_the_last_one(self):
        with harness.LoopCluster(1) as c:
            data = c.node("node1")["data"]
            work = os.path.join(data, "small")
            os.makedirs(work)
            # A small filesystem of its own, inside the node (its mount namespace goes
            # with the cluster; it is unmounted here all the same).
            c.run("node1", "mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", "/data/small")
            self.addCleanup(lambda: subprocess.run(
                [harness.LOOPCLUSTER, "exec", c.dir, "node1", "--", "umount", "/data/small"],
                env=c.env(), capture_output=True))
            c.run("node1", "sh", "-c", f"cat > /data/small/asker.sh <<'EOF'\n{ASKER}EOF")
            c.run("node1", "sh", "-c",
                  "cd /data/small && (mosrun -C ck -S USR1 sh asker.sh > out1 2> err1; "
                  "echo $? > /data/small.status) > /dev/null 2>&1 & echo started")
            pid = self.job_pid(c)
            out1 = lambda: c.run("node1", "cat", "/data/small/out1").stdout
            c.wait_for(lambda: out1().endswith("149\n"), 120, "the job to ask for a checkpoint")
            self.assertEqual(out1(), count(0, 149))
            self.assertEqual(c.run("node1", "ls", "/data/small/ck").stdout, "ckpt-1\n")
            # The filesystem fills up: the next checkpoint fails and leaves nothing; the
            # one before stays good.
            c.run("node1", "sh", "-c", "dd if=/dev/zero of=/data/small/filler bs=1M "
                                       "2>/dev/null; true")
            full = c.run("node1", "mosmigrate", str(pid), "checkpoint", check=False)
            self.assertEqual(full.returncode, 1, full.stdout)
            self.assertIn("checkpoint failed", full.stderr)
            self.assertRegex(full.stderr, "No space left|ENOSPC|space")
            self.assertEqual(c.run("node1", "ls", "-A", "/data/small/ck").stdout, "ckpt-1\n")
            # The job is lost (its mosrun killed); it restarts from the checkpoint it has.
            c.run("node1", "kill", "-9", str(pid))
            # (Its status goes outside the full filesystem.)
            c.wait_for(lambda: c.run("node1", "cat", "/data/small.status",
                                     check=False).stdout, 60, "the job to end")
            c.run("node1", "touch", "/data/small/go")
            restarted = c.run("node1", "sh", "-c", "cd /data/small && mosrun -R ck",
                              timeout=120)
            self.assertIn("job restarted from checkpoint 1 of /data/small/ck", restarted.stderr)
            self.assertEqual(restarted.stdout, count(100, 199) + "done\n")
            self.assertEqual(c.zombies("node1"), [])

    def test_restart_then_move_to_a_node(self):
        with harness.LoopCluster(2) as c:
            c.wait_for(lambda: c.run("node2", "test", "-d", "/mosix/home/node1/data",
                                     check=False).returncode == 0, 30,
                       "node2 to mount node1's files")
            c.run("node1", "sh", "-c", f"mkdir -p /data/r && cat > /data/r/counter.sh "
                                       f"<<'EOF'\n{COUNTER}EOF")
            c.run("node1", "sh", "-c", "cd /data/r && (mosrun -C ck sh counter.sh > out1; "
                                       "echo $? > status1) > /dev/null 2>&1 & echo started")
            pid = self.job_pid(c)
            c.wait_for(lambda: c.run("node1", "cat", "/data/r/out1").stdout == count(0, 99),
                       60, "the job to wait at its gate")
            c.wait_for(lambda: c.run("node1", "mosmigrate", str(pid), "checkpoint",
                                     check=False).returncode == 0, 60, "a checkpoint")
            c.run("node1", "kill", "-9", str(pid))
            c.wait_for(lambda: c.run("node1", "cat", "/data/r/status1", check=False).stdout,
                       60, "the job to end")
            c.run("node1", "sh", "-c", "cd /data/r && (mosrun -R ck -r node2 > out2 2> err2; "
                                       "echo $? > status2) > /dev/null 2>&1 & echo started")
            def on_node2():
                jobs = json.loads(c.run("node1", "mosps", "--json").stdout)["jobs"]
                return jobs and jobs[0]["where"] == "node2"
            c.wait_for(on_node2, 60, "the restarted job to run on node2")
            c.run("node1", "touch", "/data/r/go")
            status = c.wait_for(lambda: c.run("node1", "cat", "/data/r/status2",
                                              check=False).stdout, 60, "the job to end")
            self.assertEqual(status, "0\n", c.run("node1", "cat", "/data/r/err2").stdout)
            self.assertEqual(c.run("node1", "cat", "/data/r/out2").stdout,
                             count(100, 199) + "done\n")

    def test_a_job_away_asks_for_a_checkpoint(self):
        with harness.LoopCluster(2) as c:
            c.run("node1", "sh", "-c", f"mkdir -p /data/aw && cat > /data/aw/asker.sh "
                                       f"<<'EOF'\n{ASKER_AWAY}EOF")
            c.run("node1", "sh", "-c", "cd /data/aw && (mosrun -C ck -S USR1 sh asker.sh > out; "
                                       "echo $? > status) > /dev/null 2>&1 & echo started")
            pid = self.job_pid(c)
            c.wait_for(lambda: c.run("node1", "cat", "/data/aw/out").stdout == count(0, 99),
                       60, "the job to wait at its gate")
            c.wait_for(lambda: c.run("node1", "mosmigrate", str(pid), "node2",
                                     check=False).returncode == 0, 60, "the job to move")
            c.run("node1", "touch", "/data/aw/moved")
            status = c.wait_for(lambda: c.run("node1", "cat", "/data/aw/status",
                                              check=False).stdout, 60, "the job to end")
            self.assertEqual(status, "0\n")
            self.assertEqual(c.run("node1", "cat", "/data/aw/out").stdout,
                             count(0, 199) + "done\n")
            # node2's report reaches the home on its own, after the checkpoint is in place.
            c.wait_for(lambda: "checkpoint /data/aw/ck/ckpt-1 written by node node2"
                       in c.log("node1"), 60, "node2's report of the checkpoint")

    def test_a_lost_nodes_job_restarts_at_home_from_its_checkpoint(self):
        settings = ["gossip.interval_ms=200", "gossip.suspect_ms=600", "gossip.dead_ms=1500"]
        with harness.LoopCluster(2, settings=settings) as c:
            cgroups = c.node("node2").get("cgroups") or []
            if not cgroups:
                self.skipTest("node2 has no cgroup: its jobs cannot be told from the host's")
            c.run("node1", "sh", "-c", f"mkdir -p /data/lost && cat > /data/lost/counter.sh "
                                       f"<<'EOF'\n{COUNTER}EOF")
            c.run("node1", "sh", "-c", "cd /data/lost && touch go && mosrun sh counter.sh "
                                       "> plain && rm go")
            c.run("node1", "sh", "-c",
                  "cd /data/lost && (mosrun -C ck -A 0.05 sh counter.sh > out 2> err; "
                  "echo $? > status) > /dev/null 2>&1 & echo started")
            pid = self.job_pid(c)
            c.wait_for(lambda: c.run("node1", "cat", "/data/lost/out").stdout == count(0, 99),
                       60, "the job to wait at its gate")
            # A checkpoint taken from here on holds the job at its gate.
            before = c.run("node1", "ls", "/data/lost/ck").stdout.split()
            c.wait_for(lambda: set(c.run("node1", "ls", "/data/lost/ck").stdout.split()) -
                       set(before), 120, "a checkpoint of the job at its gate")
            # Moved by hand, or by the balancer first (the host's other work is load too),
            # after which mosmigrate refuses a move to where it already is.
            def on_node2():
                moved = c.run("node1", "mosmigrate", str(pid), "node2", check=False)
                return moved.returncode == 0 or any(
                    j["pid"] == pid and j["where"] == "node2" for j in harness.jobs(c))
            c.wait_for(on_node2, 60, "the job to move")
            # Away, it is checkpointed by node2, which writes into its directory at home
            # through homefs, as the job's user; on demand too.
            away = re.compile(r"checkpoint /data/lost/ck/ckpt-(\d+) written by node node2")
            c.wait_for(lambda: away.search(c.log("node1")), 120, "a checkpoint taken on node2")
            demand = c.wait_for(lambda: c.run("node1", "mosmigrate", str(pid), "checkpoint",
                                              check=False).stdout, 60, "a checkpoint on demand")
            self.assertRegex(demand, r"its checkpoint is in /data/lost/ck/ckpt-\d+")
            # node2 is lost whole: its daemon and every process in its cgroup. The daemon
            # goes first, as in a crash: killed after the job, it would report the job's
            # death by SIGKILL home, as any job's end.
            c.kill("node2")
            deadline = harness.time.time() + 20
            while True:
                pids = set()
                for cgroup in cgroups:
                    try:
                        with open(os.path.join(cgroup, "cgroup.procs")) as f:
                            pids.update(int(p) for p in f.read().split())
                    except OSError:
                        pass
                if not pids:
                    break
                self.assertLess(harness.time.time(), deadline, f"{pids} survive SIGKILL")
                for p in pids:
                    try:
                        os.kill(p, 9)
                    except ProcessLookupError:
                        pass
                harness.time.sleep(0.05)
            c.run("node1", "touch", "/data/lost/go")
            status = c.wait_for(lambda: c.run("node1", "cat", "/data/lost/status",
                                              check=False).stdout, 120, "the job to end")
            err = c.run("node1", "cat", "/data/lost/err").stdout
            self.assertEqual(status, "0\n", err)
            restarted = re.search(r"mosrun: job restarted from checkpoint (\d+) of /data/lost/ck, "
                                  r"taken .* UTC, at home \(lost contact with node node2", err)
            self.assertTrue(restarted, err)
            # From the newest, one node2 wrote.
            written = [int(n) for n in away.findall(c.log("node1"))]
            self.assertGreaterEqual(int(restarted.group(1)), max(written))
            self.assertEqual(c.run("node1", "cat", "/data/lost/out").stdout,
                             c.run("node1", "cat", "/data/lost/plain").stdout)
            self.assertEqual(c.zombies("node1"), [])


if __name__ == "__main__":
    harness.main()
