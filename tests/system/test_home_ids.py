#!/usr/bin/python3
"""Ids are the home's everywhere. Small self-checking C programs (tests/homeview/ids_*.c),
each run by an ordinary user as a job with mosrun at node1, set up what must cross
migrations (children forked right after setsid and the other wrapped calls, a signalfd,
signal handlers, a lock holder, a socket pair), are moved node1 -> node2 -> node3, told
to check themselves there (SIGUSR1 sent at home to the job's home pid), moved home, and
told again. Each time every id they see must be one of the home's: fork/vfork/clone/
clone3/posix_spawn and wait results, siginfo senders (handlers, signalfd and its dup/
fcntl(F_DUPFD) copies read with read, readv and preadv2, sigwaitinfo, sigtimedwait,
waitid), F_GETLK owners on a local file, /proc status and stat fields (also opened with
openat relative to /proc or a /proc directory), and unix socket credentials (sendmsg,
recvmsg, sendmmsg, recvmmsg)."""

import json
import os
import pwd
import re
import shutil

import harness

PROGRAMS = ["fork", "siginfo", "lock", "proc", "cred", "raw"]
read = harness.read_text


class HomeIdsTest(harness.UserClusterTest):
    maxDiff = None
    user_prefix = "hwid"
    cluster_nodes = 3
    cluster_settings = ["gossip.interval_ms=200"]

    def as_user(self, *command):
        return ["runuser", "-u", self.user, "--", *command]

    def job_where(self, pid):
        return next((j for j in harness.jobs(self.c) if j["pid"] == pid), None)

    def start(self, name, rounds, label=None):
        """Starts ids_NAME as the user at node1 in /data/homeids/LABEL (NAME by default);
        returns the work directory (as the host sees it) and the job's home pid, from its
        "ready" line."""
        label = label or name
        user = pwd.getpwnam(self.user)
        top = os.path.join(self.c.node("node1")["data"], "homeids")
        os.makedirs(top, exist_ok=True)
        os.chmod(top, 0o755)
        work = os.path.join(top, label)
        os.makedirs(work)
        os.chown(work, user.pw_uid, user.pw_gid)
        program = os.path.join(work, f"ids_{name}")
        shutil.copy(os.path.join(harness.BUILD, "tests", "homeview", f"ids_{name}"), program)
        os.chmod(program, 0o755)
        inside = f"/data/homeids/{label}"
        command = (f"cd {inside} && (mosrun ./ids_{name} {rounds} > out 2> err; "
                   "echo $? > status) >/dev/null 2>&1 & echo started")
        self.c.run("node1", *self.as_user("sh", "-c", command))
        ready = self.c.wait_for(lambda: re.search(r"^ready (\d+)$", read(f"{work}/out"), re.M),
                                30, f"ids_{name} to be ready")
        pid = int(ready.group(1))
        job = self.c.wait_for(lambda: self.job_where(pid), 30, f"ids_{name} in mosps")
        self.assertEqual(job["user"], self.user)
        return work, pid

    def move(self, pid, target):
        where = "node1" if target == "home" else target
        moved = self.c.run("node1", "mosmigrate", str(pid), target, check=False, timeout=120)
        self.assertEqual(moved.returncode, 0, moved.stdout + moved.stderr)
        self.assertIn(f"now runs on {where}", moved.stdout)
        self.assertEqual(self.job_where(pid)["where"], where)

    def check_round(self, name, work, pid, round_):
        """Tells the job to check itself (a signal sent at home to its home pid, by its
        user) and waits for its verdict."""
        self.c.run("node1", *self.as_user("kill", "-USR1", str(pid)))
        self.c.wait_for(lambda: re.search(rf"^check {round_} ", read(f"{work}/out"), re.M)
                        or read(f"{work}/status"), 60, f"ids_{name}'s check {round_}")
        out = read(f"{work}/out")
        self.assertIn(f"check {round_} ok\n", out,
                      f"ids_{name}, check {round_}:\n{out}{read(f'{work}/err')}")

    def test_ids_are_the_homes_at_home_and_away(self):
        c = self.c
        c.wait_for(lambda: all(c.run(n, "test", "-d", "/mosix/home/node1/data",
                                     check=False).returncode == 0 for n in ("node2", "node3")),
                   30, "node2 and node3 to mount node1's files")
        started = {name: self.start(name, 2) for name in PROGRAMS}
        for name, (work, pid) in started.items():
            self.move(pid, "node2")
            self.move(pid, "node3")
            self.check_round(name, work, pid, 1)
            self.move(pid, "home")
            self.check_round(name, work, pid, 2)
        for name, (work, pid) in started.items():
            c.wait_for(lambda: read(f"{work}/status"), 60, f"ids_{name} to end")
            out = read(f"{work}/out")
            self.assertEqual(read(f"{work}/status"), "0\n",
                             f"ids_{name}:\n{out}{read(f'{work}/err')}")
            self.assertNotIn("FAIL", out)
            self.assertEqual(out, f"ready {pid}\ncheck 1 ok\ncheck 2 ok\n")
        self.assertEqual(json.loads(c.run("node1", "mosps", "--json").stdout)["jobs"], [])

    def test_a_job_that_never_moves_sees_the_same(self):
        # At home the job has the same view: one round without any move.
        for name in PROGRAMS:
            work, pid = self.start(name, 1, f"{name}-home")
            self.check_round(name, work, pid, 1)
            self.c.wait_for(lambda: read(f"{work}/status"), 60, f"ids_{name} to end")
            self.assertEqual(read(f"{work}/status"), "0\n", read(f"{work}/out"))


if __name__ == "__main__":
    harness.main()
