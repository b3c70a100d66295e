#!/usr/bin/python3
"""A restart from a checkpoint gives the job again the input it had after that checkpoint.

A throwaway ordinary user's job reads numbered lines from its stdin and sums them. It is
checkpointed halfway through what it was given, reads on, and is then lost (its mosrun
killed with SIGKILL, so the daemon kills the job as on a hangup). `mosrun -R` restarts it
from the checkpoint with the rest of the lines on its own stdin: the job reads again the
lines it had read after the checkpoint (from its home's input log) and then the new ones,
and its sum is exact. Without the log it would miss the lines in between.

The same for a job checkpointed by the node it was moved to: that node measures where the
job stood in its input and tells the home, which trims its log there."""

import os
import re
import signal
import unittest

import harness

read = harness.read_text
jobs = harness.jobs

SUMMER = r"""
sum=0
while read n; do
  sum=$((sum+n))
  echo "read $n sum $sum"
done
echo "total $sum"
"""


def lines(first, last):
    return "".join(f"{i}\n" for i in range(first, last + 1))


def summed(first, last):
    """What SUMMER prints reading `first` to `last` after 1 to first-1."""
    out, total = "", sum(range(1, first))
    for i in range(first, last + 1):
        total += i
        out += f"read {i} sum {total}\n"
    return out


class CheckpointInputTest(unittest.TestCase):
    maxDiff = 8000

    def setUp(self):
        entry = harness.user_for(self, "hwin")
        self.user = entry.pw_name
        self.uid = entry.pw_uid

    def as_user(self, shell):
        return ["runuser", "-u", self.user, "--", "sh", "-c", shell]

    def start(self, c, name, options=""):
        """Starts SUMMER as the user at node1 with `-C ck`, its stdin a fifo the test
        writes; returns the work directory, the fifo's writing end and mosrun's pid."""
        work, writer, pid = harness.start_fed_job(self, c, self.user, name, SUMMER,
                                                   f"-L -C ck {options}")
        return work, writer, pid

    def feed(self, c, work, writer, first, last):
        writer.write(lines(first, last))
        writer.flush()
        c.wait_for(lambda: read(os.path.join(work, "out")) == summed(1, last), 60,
                   f"the job to read up to {last}")

    def lose(self, c, work, writer, pid):
        """Kills the job's mosrun outright: the daemon kills the job."""
        os.kill(pid, signal.SIGKILL)
        writer.close()
        c.wait_for(lambda: not [j for j in jobs(c) if j["user"] == self.user], 60,
                   "the job to be gone")

    def restart(self, c, name, first, last):
        """Restarts the job from its newest checkpoint with lines `first` to `last` on the
        new mosrun's stdin; returns its stdout and stderr."""
        work = os.path.join(c.node("node1")["data"], name)
        with open(os.path.join(work, "more"), "w") as f:
            f.write(lines(first, last))
        result = c.run("node1", *self.as_user(f"cd /data/{name} && mosrun -R ck < more"),
                       timeout=120)
        return result.stdout, result.stderr

    def test_a_restart_replays_the_input_read_after_the_checkpoint(self):
        with harness.LoopCluster(1) as c:
            work, writer, pid = self.start(c, "home")
            self.feed(c, work, writer, 1, 50)
            c.run("node1", "mosmigrate", str(pid), "checkpoint")
            at = len(lines(1, 50))
            c.wait_for(lambda: re.search(rf"job {pid}: checkpoint 1 written to "
                                         rf"/data/home/ck/ckpt-1 .*, at input byte {at}\)",
                                         c.log("node1")), 30, "the checkpoint's input place")
            self.feed(c, work, writer, 51, 80)
            self.lose(c, work, writer, pid)
            out, err = self.restart(c, "home", 81, 100)
            self.assertEqual(out, summed(51, 100) + "total 5050\n", err)
            given = len(lines(51, 80))
            self.assertRegex(err, r"^mosrun: job restarted from checkpoint 1 of /data/home/ck, "
                                  rf"taken .* UTC, with the {given} bytes of input it was given "
                                  r"after it\n$")
            self.assertEqual(c.zombies("node1"), [])

    def test_a_second_checkpoint_trims_the_log_and_a_restart_goes_on_from_it(self):
        with harness.LoopCluster(1) as c:
            work, writer, pid = self.start(c, "twice")
            self.feed(c, work, writer, 1, 20)
            c.run("node1", "mosmigrate", str(pid), "checkpoint")
            self.feed(c, work, writer, 21, 40)
            c.run("node1", "mosmigrate", str(pid), "checkpoint")
            c.wait_for(lambda: re.search(rf"checkpoint 2 written .*, at input byte "
                                         rf"{len(lines(1, 40))}\)", c.log("node1")), 30,
                       "the second checkpoint's input place")
            self.feed(c, work, writer, 41, 60)
            self.lose(c, work, writer, pid)
            out, err = self.restart(c, "twice", 61, 100)
            self.assertEqual(out, summed(41, 100) + "total 5050\n", err)
            self.assertIn(f"with the {len(lines(41, 60))} bytes of input", err)
            # Restarted again from the same checkpoint: it reads again what the first
            # restart had after it too.
            out, err = self.restart(c, "twice", 101, 101)
            self.assertEqual(out, summed(41, 101) + f"total {sum(range(1, 102))}\n", err)

    def test_a_checkpoint_a_node_away_takes_is_placed_in_the_input(self):
        with harness.LoopCluster(2) as c:
            c.wait_for(lambda: c.run("node2", "test", "-d", "/mosix/home/node1/data",
                                     check=False).returncode == 0,
                       30, "node2 to mount node1's files")
            work, writer, pid = self.start(c, "away")
            self.feed(c, work, writer, 1, 30)
            c.run("node1", "mosmigrate", str(pid), "node2")
            c.wait_for(lambda: [j["where"] for j in jobs(c) if j["user"] == self.user] ==
                       ["node2"], 60, "the job to run on node2")
            self.feed(c, work, writer, 31, 50)
            c.run("node1", "mosmigrate", str(pid), "checkpoint")
            c.wait_for(lambda: "written by node node2" in c.log("node1"), 30,
                       "node2's checkpoint")
            self.feed(c, work, writer, 51, 70)
            self.lose(c, work, writer, pid)
            out, err = self.restart(c, "away", 71, 100)
            self.assertEqual(out, summed(51, 100) + "total 5050\n", err)
            self.assertIn(f"with the {len(lines(51, 70))} bytes of input", err)


if __name__ == "__main__":
    harness.main()
