#!/usr/bin/python3
"""The home view of a job's own namespaces: System V IPC, clocks and /proc.

A throwaway ordinary user runs one job at node1 (`mosrun sh job.sh`) of three processes:
tests/homeview/ipc_check (a semaphore set, a message queue with messages and an attached
System V shared memory segment), tests/homeview/clock_check (CLOCK_MONOTONIC and
CLOCK_BOOTTIME read every 10 ms) and the shell, which runs `ps` and `pgrep`. The job is
moved node1 -> node2 -> node3 -> home while it runs, then frozen to disk at home and
continued, and after each step it is told (a file checkN) to check itself:
- the IPC objects are the same (by key) with the contents the last round left;
- neither clock ever went back, and no step forward came near the nodes' clock skew: the
  nodes run in time namespaces whose clocks are 100,000 s apart (loopcluster
  --clock-skew), as machines booted at different times, so a job taking each node's
  clocks would jump by that much at every move; seen from the host, the job is in a time
  namespace of its own (not its node daemon's, from its start at home), whose offset
  stays node1's wherever it runs;
- `ps -e` lists the job's processes only.
The job must not be pinned by its shared memory (it once was)."""

import os
import pwd
import re
import shlex

import harness

SKEW_S = 100000
# A move stops the job's clocks from its dump to its restore; a step forward between two
# readings is that much at most, far below the skew (a loaded machine may take seconds).
MAX_JUMP_MS = 60000

JOB = r"""
"$1" &
"$2" &
round=1
while [ $round -le 5 ]; do
  while [ ! -e check$round ]; do sleep 0.05; done
  ps -e -o pid=,comm= | sed "s/^/ps $round /"
  echo "pgrep $round $(pgrep -c -x ipc_check) $(pgrep -c -x clock_check)"
  round=$((round+1))
done
wait
echo "job done"
"""

# What `ps -e` may show inside the job: the job's init, its shell and their children.
JOB_COMMANDS = {"mosjob-init", "sh", "ipc_check", "clock_check", "ps", "sed", "sleep"}


def job_clocks(uid):
    """The time namespace (its link) and monotonic offset, in seconds from the host's, of
    the user's clock_check, seen from the host."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or harness.read_text(f"/proc/{entry}/comm") != "clock_check\n":
            continue
        try:
            if os.stat(f"/proc/{entry}").st_uid != uid:
                continue
            ns = os.readlink(f"/proc/{entry}/ns/time")
        except OSError:
            continue
        for line in harness.read_text(f"/proc/{entry}/timens_offsets").splitlines():
            name, seconds, nanoseconds = line.split()
            if name == "monotonic":
                return ns, int(seconds) + int(nanoseconds) / 1e9
    return None


def uptime(c, node):
    """Seconds since boot as `node` sees them (its own time namespace)."""
    return float(c.run(node, "cat", "/proc/uptime").stdout.split()[0])


class HomeNamespacesTest(harness.UserClusterTest):
    maxDiff = None
    cluster_nodes = 3
    cluster_clock_skew = SKEW_S

    def test_nodes_clocks_differ(self):
        """The test cluster's nodes have clocks of their own, so that a move between them
        that took each node's clocks would jump."""
        first, second = uptime(self.c, "node1"), uptime(self.c, "node2")
        self.assertAlmostEqual(second - first, SKEW_S, delta=60)

    def test_ipc_clocks_and_proc_move_with_the_job(self):
        c = self.c
        entry = pwd.getpwnam(self.user)
        node1 = c.node("node1")
        work = os.path.join(node1["data"], "homens")
        os.makedirs(work)
        os.chown(work, entry.pw_uid, entry.pw_gid)
        with open(os.path.join(work, "job.sh"), "w") as f:
            f.write(JOB)
        ipc_check = os.path.join(harness.BUILD, "tests", "homeview", "ipc_check")
        clock_check = os.path.join(harness.BUILD, "tests", "homeview", "clock_check")
        mosrun = shlex.join(["runuser", "-u", self.user, "--", "mosrun", "sh", "job.sh",
                             ipc_check, clock_check])
        out = os.path.join(work, "out")
        self.addCleanup(lambda: open(os.path.join(work, "end"), "w").close())
        c.run("node1", "sh", "-c", f"cd /data/homens && ({mosrun} > out 2> err; "
                                   "echo $? > status) >/dev/null 2>&1 & echo started")
        pid = c.wait_for(lambda: next((j["pid"] for j in harness.jobs(c)
                                       if j["user"] == self.user), None), 30, "the job")
        c.wait_for(lambda: "ipc 0 " in harness.read_text(out) and
                   "clock 0 " in harness.read_text(out), 30, "the job's checkers to start")
        self.assertNotIn("FAIL", harness.read_text(out))
        job = next(j for j in harness.jobs(c) if j["pid"] == pid)
        self.assertEqual(job["pinned"], "", "System V IPC must not pin a job")

        where = "node1"
        offsets = []
        rounds = ((1, None), (2, "node2"), (3, "node3"), (4, "home"), (5, "freeze"))
        for round_, target in rounds:
            if target == "freeze":  # frozen to disk at home and continued: one more restore
                frozen = c.run("node1", "mosmigrate", str(pid), "freeze")
                self.assertIn(f"job {pid} is frozen to disk at home", frozen.stdout)
                resumed = c.run("node1", "mosmigrate", str(pid), "continue")
                self.assertIn("now runs on node1", resumed.stdout)
            elif target:
                command = ["mosmigrate", str(pid), target]
                if round_ % 2:  # its user moves it too, not only root
                    command = ["runuser", "-u", self.user, "--", *command]
                moved = c.run("node1", *command, check=False)
                where = "node1" if target == "home" else target
                self.assertEqual(moved.returncode, 0, moved.stdout + moved.stderr)
                self.assertIn(f"now runs on {where}", moved.stdout)
            job = next(j for j in harness.jobs(c) if j["pid"] == pid)
            self.assertEqual(job["where"], where)
            # The job's clocks are its own: a time namespace that is not its node's daemon's,
            # whose offset stays node1's (less the time the job stood frozen for its moves)
            # wherever it runs, not the offset of the node it runs on.
            ns, offset = c.wait_for(lambda: job_clocks(entry.pw_uid), 10, "the job's clocks")
            daemon = c.node(where)["pid"]
            self.assertNotEqual(ns, os.readlink(f"/proc/{daemon}/ns/time"), where)
            self.assertLessEqual(offset, SKEW_S)
            self.assertGreater(offset, SKEW_S - MAX_JUMP_MS / 1000, f"on {where}")
            offsets.append(offset)
            with open(os.path.join(work, f"check{round_}"), "w"):
                pass
            c.wait_for(lambda: all(f"{what} {round_} " in harness.read_text(out)
                                   for what in ("ipc", "clock", "pgrep")),
                       30, f"round {round_} of the job's checks on {where}")
            text = harness.read_text(out)
            self.assertIn(f"ipc {round_} ok", text, f"on {where}:\n{text}")
            self.assertIn(f"pgrep {round_} 1 1", text, f"on {where}:\n{text}")
            listed = [line.split()[3] for line in text.splitlines()
                      if line.startswith(f"ps {round_} ")]
            self.assertIn("ipc_check", listed)
            self.assertIn("clock_check", listed)
            self.assertLessEqual(set(listed), JOB_COMMANDS, f"ps on {where} lists: {listed}")
            print(f"\nps -e in the job on {where}: {' '.join(listed)}")

        with open(os.path.join(work, "end"), "w"):
            pass
        c.wait_for(lambda: harness.read_text(os.path.join(work, "status")), 60, "the job's end")
        text = harness.read_text(out)
        self.assertEqual(harness.read_text(os.path.join(work, "status")).strip(), "0",
                         text + harness.read_text(os.path.join(work, "err")))
        self.assertIn("ipc end ok", text)
        self.assertIn("clock end ok", text)
        self.assertIn("job done", text)

        clocks = {int(m[0]): (int(m[1]), int(m[2]), float(m[3]), float(m[4])) for m in
                  re.findall(r"clock (\d+) back_ns=(\d+) jump_ms=(\d+) mono_s=([\d.]+) "
                             r"boot_s=([\d.]+)", text)}
        start = re.search(r"clock 0 mono_s=([\d.]+) boot_s=([\d.]+)", text)
        self.assertEqual(sorted(clocks), [1, 2, 3, 4, 5], text)
        mono, boot = float(start[1]), float(start[2])
        for round_ in (1, 2, 3, 4, 5):
            back_ns, jump_ms, round_mono, round_boot = clocks[round_]
            self.assertEqual(back_ns, 0, f"a clock went back by round {round_}")
            self.assertLess(jump_ms, MAX_JUMP_MS, f"a clock jumped by round {round_}")
            self.assertGreaterEqual(round_mono, mono)
            self.assertLess(round_mono - mono, SKEW_S / 2, f"monotonic jumped by round {round_}")
            self.assertLess(round_boot - boot, SKEW_S / 2, f"boot time jumped by round {round_}")
            mono, boot = round_mono, round_boot
        # What was measured, for the record.
        print(f"\nclock steps: largest forward step {clocks[5][1]} ms; monotonic at each "
              f"round: {[clocks[r][2] for r in (1, 2, 3, 4, 5)]}; node1 {uptime(c, 'node1'):.1f} "
              f"s, node2 {uptime(c, 'node2'):.1f} s, node3 {uptime(c, 'node3'):.1f} s since "
              f"boot; the job's monotonic offset from the host's at each round: {offsets}")

    def test_posix_message_queue_pins(self):
        """CRIU carries no POSIX message queue: a job holding one stays at home and
        mosmigrate says why (rather than a failed dump)."""
        c = self.c
        entry = pwd.getpwnam(self.user)
        work = os.path.join(c.node("node1")["data"], "posixmq")
        os.makedirs(work)
        os.chown(work, entry.pw_uid, entry.pw_gid)
        self.addCleanup(lambda: open(os.path.join(work, "end"), "w").close())
        mosrun = shlex.join(["runuser", "-u", self.user, "--", "mosrun",
                             os.path.join(harness.BUILD, "tests", "homeview", "ipc_check"), "mq"])
        c.run("node1", "sh", "-c", f"cd /data/posixmq && ({mosrun} > out 2> err; "
                                   "echo $? > status) >/dev/null 2>&1 & echo started")
        out = os.path.join(work, "out")
        c.wait_for(lambda: "mq " in harness.read_text(out), 30, "the job to open its queue")
        self.assertIn("mq ok", harness.read_text(out))
        job = next(j for j in harness.jobs(c)
                   if j["user"] == self.user and j["cmd"].endswith(" mq"))
        self.assertIn("POSIX message queue", job["pinned"])
        moved = c.run("node1", "mosmigrate", str(job["pid"]), "node2", check=False)
        self.assertNotEqual(moved.returncode, 0, moved.stdout)
        self.assertIn("cannot leave home: it uses a POSIX message queue", moved.stderr)
        with open(os.path.join(work, "end"), "w"):
            pass
        c.wait_for(lambda: harness.read_text(os.path.join(work, "status")), 30, "the job's end")
        self.assertEqual(harness.read_text(os.path.join(work, "status")).strip(), "0")


if __name__ == "__main__":
    harness.main()
