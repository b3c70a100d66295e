#!/usr/bin/python3
"""Close-to-open on its own. The home's change notices usually reach a node before its
next open, which hides whether the open itself revalidates; here the home's daemon sends
none (the no-file-notices fault point). A job of a throwaway user on node2 rewrites a
file of node1 round after round (its size changing every other round, not in between)
and closes it; a job on node3, which has the file cached, opens and reads it after each
round: it must read that round's text whole, with no notice to help.
Known gap: this test still passes with homefs's own revalidation at open (Fs::Opened) cut
out; a root process on node2 that stats the file, then opens and reads it after the home
rewrote it longer, does read the old size then (checked by hand), but the jobs here get
fresh attributes from elsewhere (not found yet). So it does not yet fail on the code
before close-to-open.
Renames: a job on node3 writes its version of a file and renames it over the name; a job
on node2 at once renames its own over it; node3's next open must find node2's, although
node3 made and named its own a moment ago (an open right after a lookup or create was
once not checked)."""

import contextlib
import os
import pwd
import shlex
import unittest

import harness

read = harness.read_text

# Both jobs wait by listing a directory of signs (a name looked up in vain would be
# remembered as absent for entry_timeout, with no notice to say otherwise); not the
# shared file's own directory, whose listing would bring the file's new attributes along.
COMMON = r"""
import os, sys, time
def wait_for(name):
    while name not in os.listdir("signs"):
        time.sleep(0.005)
def sign(name):
    open(f"signs/{name}", "w").close()
def content(r):
    return f"round {r:05d}\n" * (100 + 40 * ((r + 1) // 2))
rounds = int(sys.argv[1])
"""

WRITER = COMMON + r"""
wait_for("go")
for r in range(1, rounds + 1):
    with open("shared", "w") as f:
        f.write(content(r))
    sign(f"written.{r}")
    wait_for(f"read.{r}")
"""

READER = COMMON + r"""
with open("shared") as f:
    f.read()  # node3 now has the file's pages and attributes cached
sign("ready")
for r in range(1, rounds + 1):
    wait_for(f"written.{r}")
    with open("shared") as f:
        seen = f.read()
    if seen != content(r):
        sys.exit(f"round {r}: read {len(seen)} bytes {seen[:14]!r}..., "
                 f"not the {len(content(r))} written")
    sign(f"read.{r}")
print("ok")
"""

# node3: its own version of `target`, then node2's renamed over it; it must open node2's.
RENAMER = COMMON + r"""
for r in range(1, rounds + 1):
    with open(f"tmp.mine.{r}", "w") as f:
        f.write(f"mine {r}\n")
    os.rename(f"tmp.mine.{r}", "target")
    sign(f"mine.{r}")
    wait_for(f"theirs.{r}")
    with open("target") as f:
        seen = f.read()
    if seen != f"theirs {r}\n":
        sys.exit(f"round {r}: opened {seen!r} after node2 renamed its own over it")
print("ok")
"""

OVERWRITER = COMMON + r"""
for r in range(1, rounds + 1):
    wait_for(f"mine.{r}")
    with open(f"tmp.theirs.{r}", "w") as f:
        f.write(f"theirs {r}\n")
    os.rename(f"tmp.theirs.{r}", "target")
    sign(f"theirs.{r}")
"""


class CloseToOpenTest(unittest.TestCase):
    def setUp(self):
        entry = harness.user_for(self, "hwc2o")
        self.user = entry.pw_name

    def start(self, c, tag, node, *program):
        mosrun = shlex.join(["runuser", "-u", self.user, "--", "mosrun", "-r", node, *program])
        c.run("node1", "sh", "-c", f"cd /data/c2o && ({mosrun} > {tag}.out 2> {tag}.err; "
                                   f"echo $? > {tag}.status) >/dev/null 2>&1 & echo started")

    @contextlib.contextmanager
    def cluster(self, programs):
        """A cluster whose home sends no notices, and node1's /data/c2o of the user with
        `programs` (name: text) and an empty `signs`; yields (cluster, host path)."""
        settings = ["gossip.interval_ms=200", "balance.automatic=false"]
        with harness.LoopCluster(3, settings=settings, faults="no-file-notices") as c:
            for node in ("node2", "node3"):
                c.wait_for(lambda: c.run(node, "test", "-d", "/mosix/home/node1/data",
                                         check=False).returncode == 0,
                           30, f"{node} to mount node1's files")
            entry = pwd.getpwnam(self.user)
            work = os.path.join(c.node("node1")["data"], "c2o")
            os.makedirs(os.path.join(work, "signs"))
            os.chown(os.path.join(work, "signs"), entry.pw_uid, entry.pw_gid)
            for name, text in programs.items():
                with open(os.path.join(work, name), "w") as f:
                    f.write(text)
                os.chown(os.path.join(work, name), entry.pw_uid, entry.pw_gid)
            os.chown(work, entry.pw_uid, entry.pw_gid)
            yield c, work

    def wait_ok(self, c, work, tag):
        c.wait_for(lambda: read(os.path.join(work, f"{tag}.status")), 240, f"the {tag} to end")
        self.assertEqual((read(os.path.join(work, f"{tag}.status")).strip(),
                          read(os.path.join(work, f"{tag}.err"))), ("0", ""))

    def test_an_open_revalidates_without_notices(self):
        rounds = 30
        programs = {"writer.py": WRITER, "reader.py": READER, "shared": "before\n"}
        with self.cluster(programs) as (c, work):
            self.start(c, "reader", "node3", "python3", "reader.py", str(rounds))
            c.wait_for(lambda: os.path.exists(os.path.join(work, "signs", "ready")) or
                       read(os.path.join(work, "reader.status")), 60, "the reader to be ready")
            self.start(c, "writer", "node2", "python3", "writer.py", str(rounds))
            with open(os.path.join(work, "signs", "go"), "w"):
                pass
            self.wait_ok(c, work, "reader")
            self.assertEqual(read(os.path.join(work, "reader.out")), "ok\n")
            # The writer waits for every round's read: it ends once the reader has all.
            self.wait_ok(c, work, "writer")

    def test_an_open_finds_a_rename_over_its_own(self):
        rounds = 20
        with self.cluster({"renamer.py": RENAMER, "overwriter.py": OVERWRITER}) as (c, work):
            self.start(c, "renamer", "node3", "python3", "renamer.py", str(rounds))
            self.start(c, "overwriter", "node2", "python3", "overwriter.py", str(rounds))
            self.wait_ok(c, work, "renamer")
            self.assertEqual(read(os.path.join(work, "renamer.out")), "ok\n")
            self.wait_ok(c, work, "overwriter")

if __name__ == "__main__":
    unittest.main()
