#!/usr/bin/python3
"""Jobs started away from home (mosrun -r): they see the home's files, hostname and
working directory, not the node they run on; their stdio, signals and exit status come
back to mosrun; and real programs give byte-identical results to a plain run at home."""

import json
import time
import unittest

import harness

PROGRAMS = r"""
set -e
cd /data/work
printf 'pear\napple\nfig\n' > fruit
ls -l fruit | cut -d' ' -f1,5
sort fruit
sha256sum fruit
case $$ in *[!0-9]*|0*) echo "pid: not a pid: $$";; *) echo "pid: a number";; esac
echo hi | (read x; echo "pipeline: $x")
python3 -c 'open("py.txt", "w").write("written by python\n")'
cat py.txt
printf '#include <stdio.h>\nint main(void){puts("compiled and ran");return 0;}\n' > t.c
gcc -o t t.c
./t
"""


class RemoteJobTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.cluster = harness.LoopCluster(2, settings=["gossip.interval_ms=200"]).__enter__()
        c = cls.cluster
        c.run("node1", "sh", "-c", "echo home-marker > /data/marker; mkdir -p /data/work")
        c.run("node1", "sh", "-c", "cat > /data/work/programs.sh", input=PROGRAMS)
        c.run("node2", "sh", "-c", "echo node2-marker > /data/marker; "
                                   "echo secret > /data/only-on-node2")
        # node2 mounts node1's files once gossip has told it node1 is alive.
        c.wait_for(lambda: c.run("node2", "cat", "/mosix/home/node1/data/marker",
                                 check=False).stdout == "home-marker\n",
                   30, "node2 to mount node1's files")

    @classmethod
    def tearDownClass(cls):
        cls.cluster.__exit__(None, None, None)

    def sh(self, script, node="node1", **kwargs):
        return self.cluster.run(node, "sh", "-c", script, **kwargs)

    def test_guest_sees_its_home(self):
        view = "hostname; cat /data/marker; pwd; test -e /data/only-on-node2 && echo leak || echo sandboxed"
        away = self.sh(f"cd /data/work && mosrun -r node2 sh -c '{view}'").stdout
        self.assertEqual(away, "node1\nhome-marker\n/data/work\nsandboxed\n")
        self.assertEqual(self.sh(f"cd /data && {view}", node="node2").stdout,
                         "node2\nnode2-marker\n/data\nleak\n")

    def test_probe_sees_the_same_home_everywhere(self):
        probe = harness.BUILD + "/tests/probe"
        def view(prefix):
            # The probe prints `$$`-like ids too: each run has its own, so ids are checked
            # for consistency (libc and raw system calls agree), the rest for equality.
            out = self.sh(f"cd /data/work && {prefix} {probe}").stdout.splitlines()
            fields = dict(line.split("=", 1) for line in out if "=" in line)
            for name in ("getpid", "getppid", "gettid"):
                self.assertEqual(fields[name], fields["syscall." + name], (prefix, out))
            ids = {k: fields.pop(k) for k in list(fields) if "pid" in k or "tid" in k}
            return fields, ids
        plain, _ = view("")
        at_home, home_ids = view("mosrun")
        away, away_ids = view("mosrun -r node2")
        self.assertEqual(at_home, plain)
        self.assertEqual(away, plain)
        self.assertEqual(plain["gethostname"], "node1")
        self.assertEqual(plain["marker"], "home-marker")
        # Under mosrun the program is known by its mosrun's pid, at home and away alike.
        self.assertEqual(home_ids["getpid"], home_ids["gettid"])
        self.assertEqual(away_ids["getpid"], away_ids["gettid"])

    def test_real_programs_match_a_plain_run(self):
        plain = self.sh("sh /data/work/programs.sh")
        self.sh("rm -f /data/work/t /data/work/py.txt")
        away = self.sh("mosrun -r node2 sh /data/work/programs.sh")
        self.assertEqual(away.stdout, plain.stdout)
        self.assertIn("compiled and ran", away.stdout)
        self.assertEqual(self.sh("cat /data/work/py.txt").stdout, "written by python\n")

    def test_exit_statuses_and_stdin(self):
        self.assertEqual(self.sh("mosrun -r node2 sh -c 'exit 3'", check=False).returncode, 3)
        self.assertEqual(self.sh("mosrun -r node2 true", check=False).returncode, 0)
        self.assertEqual(self.sh("mosrun -r node2 sh -c 'kill -TERM $$'; echo $?").stdout,
                         "143\n")
        self.assertEqual(self.sh("printf 'b\\na\\n' | mosrun -r node2 sort").stdout, "a\nb\n")
        relayed = self.sh("head -c 3000000 /dev/urandom > /data/big && "
                          "mosrun -r node2 cat /data/big | sha256sum && "
                          "mosrun -r node2 sha256sum < /data/big && sha256sum < /data/big"
                          ).stdout.split("\n")
        # Output relayed from node2, input relayed to it, and the file at home.
        self.assertEqual(relayed[0], relayed[2], relayed)
        self.assertEqual(relayed[1], relayed[2], relayed)

    def test_listed_at_home_and_as_guest_and_killed_by_home_pid(self):
        script = ("mosrun -r node2 sleep 300 >/dev/null 2>&1 & pid=$!; "
                  "for i in $(seq 300); do mosps --json | grep -q '\"where\":\"node2\"' && break; "
                  "sleep 0.1; done; echo $pid; mosps --json")
        lines = self.sh(script).stdout.splitlines()
        pid = int(lines[0])
        home = json.loads(lines[1])["jobs"]
        self.assertEqual([(j["pid"], j["where"], j["home"]) for j in home],
                         [(pid, "node2", "node1")])
        # node2 takes the started job over on its loop a moment after its home records it.
        self.cluster.wait_for(
            lambda: [(j["pid"], j["home"], j["where"], j["guest"]) for j in
                     json.loads(self.sh("mosps --json", node="node2").stdout)["jobs"]]
            == [(pid, "node1", "node2", True)],
            20, "node2 to list the job as its guest")
        self.sh(f"kill -TERM {pid}")
        self.cluster.wait_for(
            lambda: json.loads(self.sh("mosps --json", node="node2").stdout)["jobs"] == [],
            20, "the guest to end")

    def test_static_programs_stay_home(self):
        static = self.cluster.run("node1", "sh", "-c",
                                  "printf 'int main(void){return 7;}' > /data/s.c && "
                                  "gcc -static -o /data/static /data/s.c && echo built",
                                  check=False)
        if "built" not in static.stdout:
            self.skipTest("no static C library here")
        refused = self.sh("mosrun /data/static", check=False)
        self.assertEqual(refused.returncode, 255)
        self.assertIn("/data/static is statically linked", refused.stderr)
        self.assertIn("mosrun -h", refused.stderr)
        self.assertEqual(self.sh("mosrun -h /data/static", check=False).returncode, 7)

    def test_unknown_and_dead_nodes_are_clear_errors(self):
        unknown = self.sh("mosrun -r node9 true", check=False)
        self.assertEqual(unknown.returncode, 255)
        self.assertIn("no node named 'node9' in the cluster (known: node1, node2)",
                      unknown.stderr)


if __name__ == "__main__":
    harness.main()
