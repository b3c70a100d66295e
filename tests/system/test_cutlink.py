#!/usr/bin/python3
"""A cut link does not fail a program. A job of an ordinary user (created here, removed
afterwards) runs away from home (mosrun -r node2) and writes a line a second to a file at
home (through homefs) and to its stdout, while the link between node1 (home) and node2
is cut with iptables: every packet between the two nodes' addresses is dropped (nodes bind
their outgoing connections to their configured address, so a loopback cluster's nodes
can be told apart). The program must see no error, every line must reach home, and its
output must be byte for byte that of a run that was never cut.

The firewall rules carry a comment unique to this run and are removed in a `finally`
(and any left by a crash of this run are found by that comment)."""

import json
import os
import secrets
import shlex
import shutil
import signal
import subprocess
import time
import unittest

import harness

# Writes LINES lines, one every DELAY seconds, to stdout and appended to `lines` (a new
# open, write and close each time: lookups, opens, appends and releases all cross the
# link). Any failure is reported on stderr, which must stay empty.
WORKLOAD = r"""
i=1
while [ $i -le $LINES ]; do
  echo "line $i"
  echo "line $i" >> lines || echo "writing line $i failed" >&2
  i=$((i + 1))
  sleep $DELAY
done
"""


# The same in Python, which goes on after a call that the freeze interrupted (EINTR,
# retried as PEP 475 has it): a call caught waiting for the home when the guest is
# frozen ends with EINTR (see homefs in docs/ARCHITECTURE.md).
PY_WORKLOAD = r"""
import os, time
for i in range(1, int(os.environ["LINES"]) + 1):
    print(f"line {i}", flush=True)
    with open("lines", "a") as f:
        f.write(f"line {i}\n")
    time.sleep(float(os.environ["DELAY"]))
"""

MNT = "/mnt/homefs-cutlink"


read = harness.read_text


class Cut:
    """Drops every packet between two addresses, both ways, until `restore`."""

    def __init__(self, a, b):
        self.tag = f"homeward-cutlink-{secrets.token_hex(4)}"
        self.rules = [["-s", a, "-d", b], ["-s", b, "-d", a]]
        self.active = False

    def cut(self):
        self.active = True
        for rule in self.rules:
            subprocess.run(["iptables", "-I", "INPUT", *rule, "-j", "DROP", "-m", "comment",
                            "--comment", self.tag], check=True, capture_output=True)

    def restore(self):
        # A signal (meson's SIGTERM at a timeout) must not stop the rules' removal halfway.
        signals = {signal.SIGTERM, signal.SIGINT}
        signal.pthread_sigmask(signal.SIG_BLOCK, signals)
        try:
            self._restore()
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, signals)

    def _restore(self):
        if not self.active:
            return
        self.active = False
        # Every rule with this run's comment goes, however many were added.
        listing = subprocess.run(["iptables", "-S", "INPUT"], capture_output=True, text=True,
                                 check=True).stdout
        for line in listing.splitlines():
            if self.tag in line and line.startswith("-A INPUT "):
                subprocess.run(["iptables", "-D", "INPUT", *shlex.split(line)[2:]],
                               capture_output=True)
        left = subprocess.run(["iptables", "-S", "INPUT"], capture_output=True, text=True,
                              check=True).stdout
        if self.tag in left:
            raise AssertionError(f"firewall rules {self.tag} could not be removed:\n{left}")


class CutLinkTest(unittest.TestCase):
    maxDiff = None

    def setUp(self):
        for tool in ("useradd", "iptables"):
            if shutil.which(tool) is None:
                self.skipTest(f"no {tool}")
        probe = subprocess.run(["iptables", "-S", "INPUT"], capture_output=True, text=True)
        if probe.returncode != 0:
            self.skipTest(f"iptables does not work here: {probe.stderr.strip()}")
        self.user = f"hwcut{secrets.token_hex(4)}"
        entry = harness.add_user(self.user)
        self.addCleanup(harness.remove_user, self.user)
        self.uid, self.gid = entry.pw_uid, entry.pw_gid

    def start_job(self, c, name, lines, delay, python=False):
        """Starts the workload as the user, at home in node1's /data/NAME, away on node2;
        returns the directory (as the host sees it)."""
        work = os.path.join(c.node("node1")["data"], name)
        os.makedirs(work)
        os.chown(work, self.uid, self.gid)
        with open(os.path.join(work, "job"), "w") as f:
            f.write(PY_WORKLOAD if python else WORKLOAD)
        program = ["python3", "job"] if python else ["sh", "job"]
        mosrun = shlex.join(["runuser", "-u", self.user, "--", "env", f"LINES={lines}",
                             f"DELAY={delay}", "mosrun", "-r", "node2", *program])
        c.run("node1", "sh", "-c", f"cd /data/{name} && ({mosrun} > out 2> err; "
                                   "echo $? > status) >/dev/null 2>&1 & echo started")
        return work

    def finish(self, c, work, timeout):
        c.wait_for(lambda: read(os.path.join(work, "status")), timeout, "the job to end")
        return (read(os.path.join(work, "status")).strip(), read(os.path.join(work, "out")),
                read(os.path.join(work, "err")), read(os.path.join(work, "lines")))

    def job_where(self, c):
        jobs = [j for j in json.loads(c.run("node1", "mosps", "--json").stdout)["jobs"]
                if j["user"] == self.user]
        return jobs[0]["where"] if len(jobs) == 1 else None

    def test_a_cut_of_30s_loses_no_line(self):
        with harness.LoopCluster(2) as c:
            # The run that is never cut gives the output to compare with.
            reference = self.start_job(c, "reference", 40, 0)
            status, out, err, lines = self.finish(c, reference, 60)
            self.assertEqual((status, err), ("0", ""))
            self.assertEqual(lines, out)

            work = self.start_job(c, "cut", 40, 1)
            c.wait_for(lambda: read(os.path.join(work, "lines")).count("\n") >= 5, 60,
                       "the job to write 5 lines")
            self.assertEqual(self.job_where(c), "node2")
            cut = Cut(c.node("node1")["address"], c.node("node2")["address"])
            try:
                cut.cut()
                before = read(os.path.join(work, "lines")).count("\n")
                # The cut holds: nothing more reaches home (a line already on its way may).
                c.holds_for(30, lambda: read(os.path.join(work, "lines")).count("\n")
                            <= before + 1, "the cut (no line reaching home)")
            finally:
                cut.restore()
            status, out, err, lines = self.finish(c, work, 240)
            self.assertEqual(err, "")
            self.assertEqual(status, "0")
            self.assertEqual(out, read(os.path.join(reference, "out")))
            self.assertEqual(lines, out)
            log = c.log("node2")
            self.assertNotIn("homefs: connection to", log)

    def test_a_cut_longer_than_the_grace_freezes_the_guest(self):
        self.frozen_past_the_grace(go_home=False)

    def test_a_guest_frozen_past_the_grace_is_sent_home_when_so_set(self):
        self.frozen_past_the_grace(go_home=True)

    @staticmethod
    def grace_cluster(go_home):
        """Two nodes with a 3 s grace: a guest cut off from its home longer is frozen, then
        continued (or sent home, `go_home`) once the home is back."""
        settings = ["recovery.home_grace_s=3"]
        if go_home:
            settings.append('recovery.frozen_guests="home"')
        return harness.LoopCluster(2, settings=settings)

    def guest_writing_lines(self, c):
        """A job of the user on node2 that writes 20 lines, one a second, to its file at
        home, once it has written 3; returns the lines it must end with and its directory."""
        work = self.start_job(c, "frozen", 20, 1, python=True)
        c.wait_for(lambda: read(os.path.join(work, "lines")).count("\n") >= 3, 60,
                   "the job to write 3 lines")
        self.assertEqual(self.job_where(c), "node2")
        return "".join(f"line {i}\n" for i in range(1, 21)), work

    def frozen_past_the_grace(self, go_home):
        with self.grace_cluster(go_home) as c:
            expected, work = self.guest_writing_lines(c)
            cut = Cut(c.node("node1")["address"], c.node("node2")["address"])
            try:
                cut.cut()
                # Gossip declares the home dead, the grace runs out, the guest is frozen.
                c.wait_for(lambda: "frozen to" in c.log("node2"), 120, "the guest's freeze")
                guests = json.loads(c.run("node2", "mosps", "--json").stdout)["jobs"]
                self.assertEqual(guests, [])
                frozen = [d for d in os.listdir(os.path.join(c.node("node2")["state"], "frozen"))
                          if d.startswith("guest-node1-")]
                self.assertEqual(len(frozen), 1, frozen)
            finally:
                cut.restore()
            c.wait_for(lambda: "continues" in c.log("node2"), 120, "the guest to continue")
            if go_home:
                c.wait_for(lambda: "sent home to node1" in c.log("node2"), 120,
                           "the guest to be sent home")
                where = self.job_where(c)
                self.assertIn(where, ("node1", None))  # None: it ended at home already
                self.assertNotIn("cannot send it home", c.log("node2"))
            else:
                self.assertNotIn("sending it home", c.log("node2"))
            status, out, err, lines = self.finish(c, work, 240)
            self.assertEqual(err, "")
            self.assertEqual(status, "0")
            self.assertEqual(out, expected)
            self.assertEqual(lines, expected)
            self.assertEqual(os.listdir(os.path.join(c.node("node2")["state"], "frozen")), [])

    def test_ctrl_c_ends_a_call_waiting_for_a_cut_home(self):
        with harness.LoopCluster(2) as c:
            c.run("node1", "sh", "-c", "echo before > /data/f")
            home = c.node("node1")["address"]
            c.run("node2", "sh", "-c", f"mkdir -p {MNT} && mosmount {home} {MNT}")
            cut = Cut(home, c.node("node2")["address"])
            try:
                self.assertEqual(c.run("node2", "cat", f"{MNT}/data/f").stdout, "before\n")
                cut.cut()
                # A hard mount: the call waits; SIGINT (what Ctrl-C sends) ends it.
                started = time.monotonic()
                waited = c.run("node2", "timeout", "-s", "INT", "4", "cat", f"{MNT}/data/g",
                               check=False, timeout=60)
                self.assertEqual(waited.returncode, 124, waited.stderr)
                # Ended by the interrupt, soon after the signal at 4 s: not by a timeout
                # of the mount (a soft mount's 10 s) nor by the link coming back.
                self.assertLess(time.monotonic() - started, 9)
            finally:
                cut.restore()
            try:
                # And the mount works on once the link is back.
                c.wait_for(lambda: c.run("node2", "cat", f"{MNT}/data/f", check=False,
                                         timeout=120).stdout == "before\n", 120,
                           "the mount to answer again")
            finally:
                c.run("node2", "fusermount3", "-u", MNT, check=False, timeout=60)


if __name__ == "__main__":
    harness.main()
