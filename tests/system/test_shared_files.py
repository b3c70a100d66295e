#!/usr/bin/python3
"""Files shared between nodes behave as at home. On a 3-node loopback cluster, jobs of a
throwaway ordinary user run on node2 and node3 (mosrun -r) and beside them processes of
the same user at home (node1), all on the same files of node1's /data:

- appends: writers with O_APPEND on every node at once (`echo ... >> file` and write(2)
  of 57-byte lines, and write(2) of PIPE_BUF-sized records): every line whole, none over
  another, the counts exact, each writer's lines in its own order;
- close-to-open: a file rewritten and closed on node2 is read whole, as written, by an
  open that follows on node3, round after round (sizes changing and not);
- create-exclusive: O_CREAT|O_EXCL of the same names from three nodes at once: exactly
  one winner per name, EEXIST to the others;
- write-to-temp-then-rename: two nodes replacing one file in a loop while readers on
  another node and at home open and read it: every read is one whole version, and no
  open fails.

Every job starts its work when the test creates `go` (after each said it is ready), so
the writers really overlap."""

import hashlib
import os
import re
import secrets
import shlex
import shutil
import unittest

import harness

read = harness.read_text

# Waits for the test's `go`: every job of a round starts its work at once.
GATE_SH = 'touch "ready.$1"; until [ -e go ]; do sleep 0.01; done\n'
GATE_PY = r"""
import os, sys, time
def gate(name):
    open(f"ready.{name}", "w").close()
    while not os.path.exists("go"):
        time.sleep(0.01)
"""

# `echo LINE >> FILE`, N times: a new open, an O_APPEND write and a close each time.
ECHO_APPENDER = GATE_SH + r"""
i=1
while [ $i -le $2 ]; do
  echo "$1,$((1000000 + i)),$3" >> "$4" || { echo "append $i failed" >&2; exit 1; }
  i=$((i + 1))
done
"""

# write(2) of N records of SIZE bytes on one O_APPEND descriptor.
WRITE_APPENDER = GATE_PY + r"""
name, n, size, path = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
gate(name)
fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
for i in range(1, n + 1):
    head = f"{name},{1000000 + i},"
    line = (head + "x" * (size - len(head) - 1) + "\n").encode()
    if os.write(fd, line) != len(line):
        sys.exit(f"short write of record {i}")
os.close(fd)
"""

# Rewrites `shared` round after round and says so with `written.R`; waits for the
# reader's `read.R` before the next round.
C2O_WRITER = GATE_PY + r"""
rounds = int(sys.argv[1])
gate("writer")
for r in range(1, rounds + 1):
    with open("shared", "w") as f:
        f.write(content(r))
    open(f"written.{r}", "w").close()
    while not os.path.exists(f"read.{r}"):
        time.sleep(0.005)
"""

# Opens and reads `shared` once each `written.R` exists: it must be round R's whole.
C2O_READER = GATE_PY + r"""
rounds = int(sys.argv[1])
gate("reader")
with open("shared") as f:
    f.read()  # this node now has the file's pages and attributes cached
for r in range(1, rounds + 1):
    while not os.path.exists(f"written.{r}"):
        time.sleep(0.005)
    with open("shared") as f:
        seen = f.read()
    if seen != content(r):
        sys.exit(f"round {r}: read {len(seen)} bytes {seen[:40]!r}..., "
                 f"not the {len(content(r))} written")
    open(f"read.{r}", "w").close()
print("ok")
"""

# Round r's text: its length changes every other round only, so that half the rounds
# change the file without changing its size.
C2O_CONTENT = r"""
def content(r):
    return f"round {r:05d}\n" * (100 + 40 * ((r + 1) // 2))
"""

# Tries to create excl.0 ... excl.N-1 with O_CREAT|O_EXCL; prints what each try gave.
EXCL = GATE_PY + r"""
import errno
name, n, sets = sys.argv[1], int(sys.argv[2]), sys.argv[3].split(",")
gate(name)
for prefix in sets:
    results = []
    for k in range(n):
        try:
            fd = os.open(f"{prefix}.{k}", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except OSError as e:
            results.append("EEXIST" if e.errno == errno.EEXIST else f"E{e.errno}")
            continue
        os.write(fd, name.encode())
        os.close(fd)
        results.append("won")
    print(prefix, " ".join(results))
"""

# Write-to-temp-then-rename: N versions of `target`, each whole (a header, a body and the
# body's checksum).
RENAMER = GATE_PY + r"""
import hashlib
name, n = sys.argv[1], int(sys.argv[2])
gate(name)
for i in range(n):
    body = (f"{name} {i} " * 2000).encode()[: 20000 + 97 * i]
    data = f"{name} {i} {len(body)}\n".encode() + body + \
        ("\n" + hashlib.sha256(body).hexdigest() + "\n").encode()
    tmp = f"tmp.{name}.{i}"
    with open(tmp, "wb") as f:
        f.write(data)
    os.rename(tmp, "target")
open(f"done.{name}", "w").close()
"""

# Opens and reads `target` until both renamers are done: every read must be a whole
# version; prints how many reads and how many distinct versions it saw.
RENAME_READER = GATE_PY + r"""
import hashlib
name = sys.argv[1]
gate(name)
reads, versions = 0, set()
def check():
    global reads
    with open("target", "rb") as f:
        data = f.read()
    head, _, rest = data.partition(b"\n")
    who, i, size = head.decode().split()
    body, trailer = rest[: int(size)], rest[int(size):]
    if trailer != ("\n" + hashlib.sha256(body).hexdigest() + "\n").encode():
        sys.exit(f"read {reads}: a torn version of {who} {i} ({len(data)} bytes)")
    reads += 1
    versions.add((who, i))
while not (os.path.exists("done.node2") and os.path.exists("done.node3")):
    check()
check()
print(reads, len(versions))
"""


class SharedFilesTest(unittest.TestCase):
    maxDiff = 4000

    @classmethod
    def setUpClass(cls):
        if shutil.which("useradd") is None:
            raise unittest.SkipTest("no useradd")
        cls.user = f"hwshare{secrets.token_hex(3)}"
        entry = harness.add_user(cls.user)
        cls.uid, cls.gid = entry.pw_uid, entry.pw_gid
        cls.cluster = None
        try:
            cls.cluster = harness.LoopCluster(3, settings=["gossip.interval_ms=200",
                                                           "balance.automatic=false"])
            cls.cluster.__enter__()
            for node in ("node2", "node3"):
                cls.cluster.wait_for(
                    lambda: cls.cluster.run(node, "test", "-d", "/mosix/home/node1/data",
                                            check=False).returncode == 0,
                    30, f"{node} to mount node1's files")
        except BaseException:
            cls.tearDownClass()
            raise

    @classmethod
    def tearDownClass(cls):
        try:
            if cls.cluster is not None and cls.cluster.dir is not None:
                cls.cluster.__exit__(None, None, None)
        finally:
            harness.remove_user(cls.user)

    def workdir(self, name, programs):
        """node1's /data/NAME (its host path), the user's, holding `programs` (name: text)."""
        work = os.path.join(self.cluster.node("node1")["data"], name)
        os.makedirs(work)
        os.chown(work, self.uid, self.gid)
        for program, text in programs.items():
            with open(os.path.join(work, program), "w") as f:
                f.write(text)
        return work

    def start(self, name, tag, where, *command):
        """Starts `command` as the user in /data/NAME: a job on `where` (mosrun -r), or a
        plain process at home for where="home". Its output goes to out.TAG, err.TAG and
        its status to status.TAG."""
        argv = ["runuser", "-u", self.user, "--"]
        if where != "home":
            argv += ["mosrun", "-r", where]
        argv += list(command)
        self.cluster.run("node1", "sh", "-c",
                         f"cd /data/{name} && ({shlex.join(argv)} > out.{tag} 2> err.{tag}; "
                         f"echo $? > status.{tag}) >/dev/null 2>&1 & echo started")

    def run_together(self, name, work, jobs, timeout=300):
        """Starts every job (tag: (where, command...)), opens the gate once each is ready,
        waits for all to end; returns {tag: (status, out, err)}."""
        for tag, (where, *command) in jobs.items():
            self.start(name, tag, where, *command)
        self.cluster.wait_for(
            lambda: all(os.path.exists(os.path.join(work, f"ready.{tag}")) for tag in jobs),
            120, "every job to be ready")
        with open(os.path.join(work, "go"), "w"):
            pass
        self.cluster.wait_for(
            lambda: all(read(os.path.join(work, f"status.{tag}")) for tag in jobs),
            timeout, "every job to end")
        return {tag: (read(os.path.join(work, f"status.{tag}")).strip(),
                      read(os.path.join(work, f"out.{tag}")),
                      read(os.path.join(work, f"err.{tag}"))) for tag in jobs}

    def assert_ok(self, results):
        for tag, (status, out, err) in results.items():
            self.assertEqual((status, err), ("0", ""), f"{tag}: {out}")

    def check_lines(self, path, writers):
        """Every line of `path` is one whole record of one writer (name: (count, size)),
        each writer's in order, none missing or repeated."""
        with open(path, "rb") as f:
            data = f.read()
        self.assertEqual(len(data), sum(n * size for n, size in writers.values()),
                         "the file's size")
        lines = data.split(b"\n")
        self.assertEqual(lines.pop(), b"")
        pattern = re.compile(rb"([a-z0-9]+),(1\d{6}),x+")

        def whole(line):
            match = pattern.fullmatch(line)
            return match and len(line) == writers.get(match[1].decode(), (0, 0))[1] - 1

        seen = {name: [] for name in writers}
        torn = [line[:80] for line in lines if not whole(line)]
        self.assertEqual(torn[:5], [], f"{len(torn)} torn lines")
        for line in lines:
            name, number = pattern.fullmatch(line).groups()[:2]
            seen[name.decode()].append(int(number) - 1000000)
        for name, (count, _) in writers.items():
            self.assertEqual(seen[name], list(range(1, count + 1)), f"{name}'s lines")

    def test_appends_from_every_node_are_whole(self):
        n, size = 1000, 57
        work = self.workdir("appends", {"echo.sh": ECHO_APPENDER, "write.py": WRITE_APPENDER})

        def echo(name):
            pad = "x" * (size - 1 - len(name) - 9)
            return ["sh", "echo.sh", name, str(n), pad, "app.csv"]

        results = self.run_together("appends", work, {
            "node2": ("node2", *echo("node2")),
            "node3": ("node3", "python3", "write.py", "node3", str(n), str(size), "app.csv"),
            "home": ("home", *echo("home")),
        })
        self.assert_ok(results)
        self.check_lines(os.path.join(work, "app.csv"),
                         {"node2": (n, size), "node3": (n, size), "home": (n, size)})

    def test_pipe_buf_appends_are_whole(self):
        # PIPE_BUF-sized records from two nodes, and shorter ones at home, so that the
        # records do not start at page boundaries.
        writers = {"node2": (300, 4096), "node3": (300, 4096), "home": (300, 1000)}
        work = self.workdir("records", {"write.py": WRITE_APPENDER})
        results = self.run_together("records", work, {
            name: ("home" if name == "home" else name, "python3", "write.py", name, str(n),
                   str(size), "records") for name, (n, size) in writers.items()})
        self.assert_ok(results)
        self.check_lines(os.path.join(work, "records"), writers)

    def test_close_to_open_between_nodes(self):
        rounds = 60
        work = self.workdir("c2o", {"writer.py": C2O_CONTENT + C2O_WRITER,
                                    "reader.py": C2O_CONTENT + C2O_READER})
        with open(os.path.join(work, "shared"), "w") as f:
            f.write("before\n")
        os.chown(os.path.join(work, "shared"), self.uid, self.gid)
        results = self.run_together("c2o", work, {
            "writer": ("node2", "python3", "writer.py", str(rounds)),
            "reader": ("node3", "python3", "reader.py", str(rounds)),
        })
        self.assert_ok(results)
        self.assertEqual(results["reader"][1], "ok\n")

    def test_create_exclusive_has_one_winner(self):
        # The names excl.K are raced for by node2, node3 and the home; pair.K by node2 and
        # node3 alone (the home, a local call away, could win every excl.K).
        n = 150
        work = self.workdir("excl", {"excl.py": EXCL})
        results = self.run_together("excl", work, {
            name: (name, "python3", "excl.py", name, str(n), "excl,pair")
            for name in ("node2", "node3")
        } | {"home": ("home", "python3", "excl.py", "home", str(n), "excl")})
        self.assert_ok(results)
        tries = {}  # (set, tag): outcomes
        for tag, (_, out, _) in results.items():
            for line in out.splitlines():
                prefix, *outcomes = line.split()
                tries[prefix, tag] = outcomes
        for (prefix, tag), outcomes in tries.items():
            self.assertEqual(len(outcomes), n, (prefix, tag))
            self.assertEqual(set(outcomes) - {"won", "EEXIST"}, set(), (prefix, tag))
        for prefix, tags in (("excl", ("node2", "node3", "home")), ("pair", ("node2", "node3"))):
            for k in range(n):
                winners = [tag for tag in tags if tries[prefix, tag][k] == "won"]
                self.assertEqual(len(winners), 1, f"{prefix}.{k}: winners {winners}")
                self.assertEqual(read(os.path.join(work, f"{prefix}.{k}")), winners[0],
                                 f"{prefix}.{k}")
            # Every name was tried by all: the losers saw EEXIST from the home.
            self.assertEqual(sum(tries[prefix, t].count("EEXIST") for t in tags),
                             (len(tags) - 1) * n, prefix)

    def test_rename_replaces_whole_files(self):
        n = 150
        work = self.workdir("rename", {"renamer.py": RENAMER, "reader.py": RENAME_READER})
        body = b"first " * 1000
        with open(os.path.join(work, "target"), "wb") as f:
            f.write(f"init 0 {len(body)}\n".encode() + body +
                    ("\n" + hashlib.sha256(body).hexdigest() + "\n").encode())
        results = self.run_together("rename", work, {
            "node2": ("node2", "python3", "renamer.py", "node2", str(n)),
            "node3": ("node3", "python3", "renamer.py", "node3", str(n)),
            "reader2": ("node2", "python3", "reader.py", "reader2"),
            "reader3": ("node3", "python3", "reader.py", "reader3"),
            "readerhome": ("home", "python3", "reader.py", "readerhome"),
        })
        self.assert_ok(results)
        for tag in ("reader2", "reader3", "readerhome"):
            reads, versions = map(int, results[tag][1].split())
            self.assertGreater(reads, 0, tag)
        # No temporary file is left, and what an open on another node reads now is what
        # the home holds.
        self.assertEqual(sorted(f for f in os.listdir(work) if f.startswith("tmp.")), [])
        final = self.cluster.run("node1", "runuser", "-u", self.user, "--", "mosrun", "-r",
                                 "node3", "sha256sum", "/data/rename/target").stdout.split()[0]
        home = self.cluster.run("node1", "sha256sum", "/data/rename/target").stdout.split()[0]
        self.assertEqual(final, home)


if __name__ == "__main__":
    harness.main()
