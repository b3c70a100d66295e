#!/usr/bin/python3
"""Jobs of ordinary users move. A throwaway user (created here, removed afterwards) runs a
job at node1 with limits of its own; the job is moved to node2 by root and home again by
its user. On every node the job must run as that user with that user's limits, and its
output must be byte-identical to that of a run that never moved. And a user's job making
raw system calls that the shim traps loses none of them across sixteen moves.

Root on some machines (containers, this test machine) lacks CAP_SYS_RESOURCE, so the
daemon cannot read another user's limits with prlimit and stock CRIU 4.1.1 cannot dump
such a job ("Can't get rlimit"); see scripts/criu-patches."""

import json
import os
import pwd
import secrets
import shlex
import shutil
import subprocess
import unittest

import harness

# Limits the user sets before mosrun, different from what root and the daemons have:
# lowered only, as any user may (the soft stack limit, a hard limit on open files and
# core size, a CPU-time limit).
USER_LIMITS = "ulimit -H -n 4096; ulimit -S -n 1000; ulimit -S -s 6144; ulimit -H -c 2048; " \
              "ulimit -t 3600"

# Three phases; each prints who runs it and with which limits, then waits for the test
# to let it go on (after a move). Every line comes out the same wherever the job runs.
WORKLOAD = r"""
for phase in 1 2 3; do
  echo "phase $phase uid $(id -u) gid $(id -g) groups $(id -G) host $(hostname)"
  cat /proc/self/limits
  while [ ! -e go$phase ]; do sleep 0.05; done
done
echo done
"""


read = harness.read_text


def status_ids(pid, key):
    for line in read(f"/proc/{pid}/status").splitlines():
        if line.startswith(key + ":"):
            return [int(v) for v in line.split()[1:]]
    return []


def job_shells(uid):
    """The job's shells ("sh job.sh") of user `uid` on this host, with the daemon each
    runs under (every node's daemon adopts its jobs: it is a child subreaper)."""
    parents = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            ppid = status_ids(entry, "PPid")
            if ppid:
                parents[int(entry)] = ppid[0]
    shells = []
    for pid in parents:
        if read(f"/proc/{pid}/cmdline").split("\0")[:2] != ["sh", "job.sh"]:
            continue
        if status_ids(pid, "Uid")[:1] != [uid]:
            continue
        ancestors, at = [], pid
        while at in parents and at > 1:
            at = parents[at]
            ancestors.append(at)
        shells.append((pid, ancestors))
    # A subshell between its fork and exec looks the same: keep the outermost shells.
    outer = {pid for pid, _ in shells}
    return [(pid, ancestors) for pid, ancestors in shells
            if ancestors and ancestors[0] not in outer]


class UserJobTest(unittest.TestCase):
    maxDiff = None

    def setUp(self):
        if shutil.which("useradd") is None:
            self.skipTest("no useradd")
        self.user = f"hwjob{secrets.token_hex(4)}"
        harness.add_user(self.user)
        self.addCleanup(self.remove_user)
        entry = pwd.getpwnam(self.user)
        self.uid, self.gid = entry.pw_uid, entry.pw_gid

    def remove_user(self):
        # The cluster is down by now (its jobs with it); --force in case a process of the
        # user outlived a failure, which then does not keep the account.
        harness.remove_user(self.user)
        subprocess.run(["groupdel", self.user], capture_output=True)

    def as_user(self, *command):
        return ["runuser", "-u", self.user, "--", *command]

    def run_job(self, c, name, moves):
        """Runs the workload as the user at node1 in /data/NAME, moving it by `moves`
        (target, who) after the first and second phases; returns (output, status, pid)."""
        node1 = c.node("node1")
        work = os.path.join(node1["data"], name)
        os.makedirs(work)
        os.chown(work, self.uid, self.gid)
        with open(os.path.join(work, "job.sh"), "w") as f:
            f.write(WORKLOAD)
        mosrun = shlex.join(self.as_user("sh", "-c", USER_LIMITS + "; exec mosrun sh job.sh"))
        c.run("node1", "sh", "-c", f"cd /data/{name} && ({mosrun} > out 2> err; "
                                   "echo $? > status) >/dev/null 2>&1 & echo started")
        pid = c.wait_for(lambda: next(
            (j["pid"] for j in json.loads(c.run("node1", "mosps", "--json").stdout)["jobs"]
             if j["user"] == self.user), None), 30, "the user's job to start")
        where = "node1"
        for phase in (1, 2, 3):
            c.wait_for(lambda: read(os.path.join(work, "out")).count("Max realtime timeout")
                       >= phase, 30, f"phase {phase} of the job")
            self.check_job_on(c, where, pid)
            if phase <= len(moves):
                target, who = moves[phase - 1]
                command = ["mosmigrate", str(pid), target]
                if who == "user":
                    command = self.as_user(*command)
                moved = c.run("node1", *command, check=False)
                where = "node1" if target == "home" else target
                self.assertEqual(moved.returncode, 0, moved.stderr)
                self.assertIn(f"now runs on {where}", moved.stdout)
            with open(os.path.join(work, f"go{phase}"), "w"):
                pass
        c.wait_for(lambda: read(os.path.join(work, "status")), 30, "the job to end")
        return read(os.path.join(work, "out")), read(os.path.join(work, "status")), pid

    def check_job_on(self, c, where, pid):
        """The job runs on `where`, as the user, with the user's limits, seen from the
        host: its shell's ids and /proc/PID/limits."""
        jobs = [j for j in json.loads(c.run("node1", "mosps", "--json").stdout)["jobs"]
                if j["pid"] == pid]
        self.assertEqual(len(jobs), 1, jobs)
        self.assertEqual(jobs[0]["where"], where)
        self.assertEqual(jobs[0]["user"], self.user)
        if where != "node1":
            guests = json.loads(c.run(where, "mosps", "--json").stdout)["jobs"]
            self.assertEqual([(j["pid"], j["user"]) for j in guests], [(pid, self.user)])
        daemon = c.node(where)["pid"]
        shells = [shell for shell, ancestors in job_shells(self.uid) if daemon in ancestors]
        self.assertEqual(len(shells), 1, f"the job's shell under {where}'s daemon: "
                                         f"{job_shells(self.uid)}")
        shell = shells[0]
        self.assertEqual(status_ids(shell, "Uid"), [self.uid] * 4)
        self.assertEqual(status_ids(shell, "Gid"), [self.gid] * 4)
        self.assertEqual(read(f"/proc/{shell}/limits"), self.user_limits)

    def test_user_job_moves_with_its_identity_and_limits(self):
        # No automatic moves: where the job runs is what the test says.
        with harness.LoopCluster(3, settings=["gossip.interval_ms=200",
                                              "balance.automatic=false"]) as c:
            c.wait_for(lambda: c.run("node2", "test", "-d", "/mosix/home/node1/data",
                                     check=False).returncode == 0,
                       30, "node2 to mount node1's files")
            # The user's limits, as its own shell has them before mosrun.
            self.user_limits = c.run("node1", *self.as_user(
                "sh", "-c", USER_LIMITS + "; cat /proc/self/limits")).stdout
            self.assertRegex(self.user_limits, r"Max open files +1000 +4096 ")

            plain, plain_status, _ = self.run_job(c, "plain", [])
            moved, moved_status, _ = self.run_job(
                c, "moved", [("node2", "root"), ("home", "user")])

            self.assertEqual(plain_status, "0\n")
            self.assertEqual(moved_status, "0\n")
            expected = "".join(
                f"phase {phase} uid {self.uid} gid {self.gid} groups {self.gid} host node1\n"
                + self.user_limits for phase in (1, 2, 3)) + "done\n"
            self.assertEqual(plain, expected)
            self.assertEqual(moved, plain)  # byte for byte
            job = json.loads(c.run("node1", "mosps", "--json").stdout)["jobs"]
            self.assertEqual(job, [])
            self.assertEqual(json.loads(c.run("node2", "mosps", "--json").stdout)["jobs"], [])


# Raw system calls the shim traps (ctypes' syscall(), as a program or a library making the
# call itself does), made without pause, so that a move's dump often stops the job between
# a trap and the shim's handler. Until its input ends; then how many came back wrong.
TRAPPED_CALLS = """
import ctypes, os, select, sys
libc = ctypes.CDLL(None)
home_pid = os.getpid()  # libc's getpid, which the shim answers directly
calls = lost = 0
while not select.select([sys.stdin], [], [], 0)[0]:
    for _ in range(1000):
        lost += libc.syscall(39) != home_pid  # SYS_getpid, trapped: the same answer
    calls += 1000
print(f"calls {calls} lost {lost}")
"""


class TrappedCallsTest(harness.UserClusterTest):
    """No move loses a trapped call of an ordinary user's job: criu's parasite met a
    pending SIGSYS in place of its own SIGTRAP and dropped it (CRIU patch 0015), and the
    call came back as its own number (39 for getpid; a shell's fork would return 56)."""
    user_prefix = "hwtrap"
    cluster_settings = ("balance.automatic=false",)  # the test makes every move itself

    def test_moves_lose_no_trapped_call(self):
        c = self.c
        work, writer, pid = harness.start_fed_job(
            self, c, self.user, "trapped", f"exec python3 -c {shlex.quote(TRAPPED_CALLS)}\n", "")
        for _ in range(8):
            for target, where in (("node2", "node2"), ("home", "node1")):
                moved = c.run("node1", "mosmigrate", str(pid), target, check=False)
                self.assertEqual(moved.returncode, 0, moved.stderr)
                self.assertIn(f"now runs on {where}", moved.stdout)
        writer.close()
        c.wait_for(lambda: read(os.path.join(work, "status")), 60, "the job to end")
        self.assertEqual(read(os.path.join(work, "status")), "0\n", read(os.path.join(work, "err")))
        calls, lost = map(int, read(os.path.join(work, "out")).split()[1::2])
        self.assertGreater(calls, 0)
        self.assertEqual(lost, 0, f"{lost} of {calls} trapped calls lost in 16 moves")


if __name__ == "__main__":
    harness.main()
