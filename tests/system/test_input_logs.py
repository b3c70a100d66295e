#!/usr/bin/python3
"""A job's input log (<state_dir>/input-logs, see noded/jobs/input_log.h) lives as long as
something may restart the job from a checkpoint: a job that never had a checkpoint and
whose exit reached its mosrun has its log removed at once; the log of a job with a
checkpoint, or of a lost job, stays for `mosrun -R` while its checkpoint directory does; a
daemon starting removes the logs of jobs its journal does not know whose directory is gone
(and logs that name no directory)."""

import os
import shutil
import signal
import unittest

import harness

read = harness.read_text
jobs = harness.jobs

READER = r"""
while read n; do echo "read $n"; done
echo done
"""


class InputLogsTest(unittest.TestCase):
    def setUp(self):
        entry = harness.user_for(self, "hwil")
        self.user = entry.pw_name
        self.uid = entry.pw_uid

    def logs(self, c):
        """The user's input logs on node1 (their notes aside)."""
        directory = os.path.join(c.node("node1")["state"], "input-logs")
        try:
            names = os.listdir(directory)
        except FileNotFoundError:
            return []
        return sorted(os.path.join(directory, n) for n in names
                      if n.startswith(f"{self.uid}-") and not n.endswith(".dir"))

    def start(self, c, name):
        """Starts READER as the user at node1 with `-C ck`, its stdin a fifo the test
        writes; feeds it one line; returns the work directory, the writer and the job's pid."""
        work, writer, pid = harness.start_fed_job(self, c, self.user, name, READER, "-C ck",
                                                   known=self.pids)
        self.pids.append(pid)
        writer.write("1\n")
        writer.flush()
        c.wait_for(lambda: read(os.path.join(work, "out")) == "read 1\n", 60,
                   "the job to read its first line")
        return work, writer, pid

    def test_a_log_lives_while_a_restart_may_need_it(self):
        self.pids = []
        with harness.LoopCluster(1) as c:
            # A job that ends without a checkpoint: its log goes with it.
            work, writer, _ = self.start(c, "ends")
            self.assertEqual(len(self.logs(c)), 1)
            writer.close()
            c.wait_for(lambda: read(os.path.join(work, "status")) == "0\n", 60,
                       "the job to end")
            c.wait_for(lambda: self.logs(c) == [], 30, "its input log to be removed")
            self.assertEqual(os.listdir(os.path.join(c.node("node1")["state"], "input-logs")),
                             [])

            # One that ends after a checkpoint: a restart from it needs the log.
            done, writer, pid = self.start(c, "done")
            c.run("node1", "mosmigrate", str(pid), "checkpoint")
            writer.close()
            c.wait_for(lambda: read(os.path.join(done, "status")) == "0\n", 60,
                       "the job to end")
            [done_log] = self.logs(c)

            # Two jobs lost with their mosrun: their logs stay for a `mosrun -R`.
            kept, kept_writer, kept_pid = self.start(c, "kept")
            gone, gone_writer, gone_pid = self.start(c, "gone")
            logs = self.logs(c)
            self.assertEqual(len(logs), 3)
            for pid, writer in ((kept_pid, kept_writer), (gone_pid, gone_writer)):
                os.kill(pid, signal.SIGKILL)
                writer.close()
            c.wait_for(lambda: not [j for j in jobs(c) if j["user"] == self.user], 60,
                       "the lost jobs to be gone")
            self.assertEqual(self.logs(c), logs)

            # One's checkpoint directory is removed; a log left by an older daemon names
            # none. The daemon restarts: both of those go, the others stay.
            shutil.rmtree(os.path.join(gone, "ck"))
            stray = os.path.join(c.node("node1")["state"], "input-logs", f"{self.uid}-stray")
            with open(stray, "w") as f:
                f.write("left by an older daemon")
            c.kill("node1")
            c.start("node1")
            c.wait_for(lambda: len(self.logs(c)) == 2, 30, "the orphan logs to be removed")
            left = self.logs(c)
            self.assertIn(done_log, left)
            noted = set()
            for log in left:
                with open(log + ".dir") as f:
                    noted.add(f.read())
            self.assertEqual(noted, {"/data/done/ck", "/data/kept/ck"})
            self.assertIn("removed the input log", c.log("node1"))


if __name__ == "__main__":
    harness.main()
