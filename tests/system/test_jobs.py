#!/usr/bin/python3
"""Jobs at home: mosrun relays stdio, signals and exit status, keeps the user's identity,
environment and working directory, and mosps lists the job by its home pid."""

import json
import unittest

import harness


class JobsAtHomeTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.cluster = harness.LoopCluster(1).__enter__()

    @classmethod
    def tearDownClass(cls):
        cls.cluster.__exit__(None, None, None)

    def sh(self, script, **kwargs):
        return self.cluster.run("node1", "sh", "-c", script, **kwargs)

    def test_exit_statuses(self):
        self.assertEqual(self.sh("mosrun true", check=False).returncode, 0)
        self.assertEqual(self.sh("mosrun sh -c 'exit 3'", check=False).returncode, 3)
        # Death by a signal comes back as the same death: the shell reports 128+15.
        self.assertEqual(self.sh("mosrun sh -c 'kill -TERM $$'; echo $?").stdout, "143\n")
        missing = self.sh("mosrun /no/such/program", check=False)
        self.assertEqual(missing.returncode, 127)
        self.assertIn("mosrun: cannot run /no/such/program: No such file or directory",
                      missing.stderr)

    def test_stdio_in_a_pipeline(self):
        result = self.sh("printf 'b\\na\\nc\\n' | mosrun sort | mosrun tr a-z A-Z")
        self.assertEqual(result.stdout, "A\nB\nC\n")
        result = self.sh("mosrun sh -c 'echo out; echo err >&2' 2>/dev/null")
        self.assertEqual(result.stdout, "out\n")
        result = self.sh("mosrun sh -c 'echo out; echo err >&2' 2>&1 >/dev/null")
        self.assertEqual(result.stdout, "err\n")

    def test_large_output_is_byte_identical(self):
        plain = self.sh("head -c 20000000 /dev/zero | tr '\\0' x | sha256sum").stdout
        relayed = self.sh("mosrun sh -c \"head -c 20000000 /dev/zero | tr '\\\\0' x\" "
                          "| sha256sum").stdout
        self.assertEqual(plain, relayed)
        # And through stdin too, with a slow reader at the end.
        relayed = self.sh("in=$(mktemp) && head -c 5000000 /dev/urandom > $in && "
                          "mosrun cat < $in | sha256sum && sha256sum < $in && "
                          "rm $in").stdout.splitlines()
        self.assertEqual(relayed[0], relayed[1])

    def test_identity_environment_and_directory(self):
        result = self.sh("mkdir -p /data/work && cd /data/work && umask 027 && "
                         "FOO=bar setpriv --reuid=65534 --regid=65534 --clear-groups "
                         "mosrun sh -c 'id -u; id -g; pwd; umask; echo $FOO; hostname'")
        self.assertEqual(result.stdout.split(), ["65534", "65534", "/data/work", "0027", "bar",
                                                 "node1"])
        # The user cannot do more inside the job than outside it.
        denied = self.sh("setpriv --reuid=65534 --regid=65534 --clear-groups "
                         "mosrun sh -c 'echo x > /root/forbidden'", check=False)
        self.assertNotEqual(denied.returncode, 0)
        self.assertIn("Permission denied", denied.stderr)

    def test_limits_are_kept(self):
        result = self.sh("ulimit -n 123; mosrun sh -c 'ulimit -n'")
        self.assertEqual(result.stdout, "123\n")

    def test_job_has_its_own_process_namespace(self):
        # Pid 1 of the job's namespace is the job's init; the program's /proc status shows
        # its home pid alone, the namespaces' pids hidden (the shim's home view).
        self.assertEqual(self.sh("mosrun cat /proc/1/comm").stdout, "mosjob-init\n")
        result = self.sh("mosrun sh -c 'echo $HOMEWARD_HOME_PID; exec grep NSpid /proc/self/status'")
        home_pid, nspid = result.stdout.splitlines()
        self.assertEqual(nspid.split(), ["NSpid:", home_pid])

    def test_kill_home_pid_and_mosps(self):
        # The job says "ready" once its trap is set: a signal sent before would kill it.
        script = ("out=$(mktemp); "
                  "mosrun sh -c 'trap \"echo got-usr1\" USR1; echo ready; "
                  "while :; do sleep 0.1; done' > $out & pid=$!; "
                  "for i in $(seq 300); do grep -q ready $out && break; sleep 0.1; done; "
                  "mosps --json; kill -USR1 $pid; "
                  "for i in $(seq 300); do grep -q got-usr1 $out && break; sleep 0.1; done; "
                  "kill $pid; wait $pid; echo status=$?; cat $out; rm -f $out")
        result = self.sh(script)
        lines = result.stdout.splitlines()
        listing = json.loads(lines[0])
        job = listing["jobs"][0]
        self.assertEqual(job["home"], "node1")
        self.assertEqual(job["where"], "node1")
        self.assertEqual(job["state"], "running")
        self.assertEqual(job["migrations"], 0)
        self.assertIn("while", job["cmd"])
        self.assertIn("status=143", lines)
        self.assertIn("got-usr1", lines)
        self.assertEqual(json.loads(self.sh("mosps --json").stdout), {"jobs": []})

    def test_pinned_jobs_say_why(self):
        listener = ("python3 -c 'import socket,time; s=socket.socket(); "
                    "s.bind((\"127.0.0.1\", 0)); s.listen(); print(s.getsockname()[1], "
                    "flush=True); time.sleep(60)'")
        script = (f"port=$(mktemp); mosrun {listener} > $port & pid=$!; "
                  "for i in $(seq 300); do [ -s $port ] && break; sleep 0.1; done; "
                  "mosps --json; mosmigrate $pid node2 2>&1; kill $pid; "
                  "mosrun -h sleep 60 & pid=$!; "
                  "for i in $(seq 300); do mosps --json | grep -q '\"cmd\":\"sleep 60' && break; "
                  "sleep 0.1; done; "
                  "mosps --json; mosmigrate $pid node2 2>&1; kill $pid; wait; cat $port; "
                  "rm -f $port")
        lines = self.sh(script).stdout.splitlines()
        port = lines[-1]
        listening = json.loads(lines[0])["jobs"][0]
        self.assertEqual(listening["pinned"], f"holds a listening socket (TCP port {port})")
        self.assertIn(f"cannot leave home: it holds a listening socket (TCP port {port})",
                      lines[1])
        # The listener's job may still be ending: pick the kept one by its command.
        kept = next(j for j in json.loads(lines[2])["jobs"] if j["cmd"].startswith("sleep"))
        self.assertEqual(kept["pinned"], "kept at home (mosrun -h)")
        self.assertIn("cannot leave home: it is kept at home (mosrun -h)", lines[3])

    def test_killing_mosrun_kills_the_job(self):
        # mosrun is killed once its job runs (its program is listed), not at a guess.
        script = ("mosrun sleep 987654 & pid=$!; "
                  "for i in $(seq 300); do mosps --json | grep -q 987654 && "
                  "pgrep -f '^sleep 987654$' >/dev/null && break; sleep 0.1; done; "
                  "kill -KILL $pid; wait $pid; "
                  "for i in $(seq 300); do [ \"$(mosps --json)\" = '{\"jobs\":[]}' ] && break; "
                  "sleep 0.1; done; mosps --json; pgrep -a -x sleep | grep -q ' sleep 987654$' && echo alive || echo no-sleep")
        lines = self.sh(script).stdout.splitlines()
        self.assertEqual(lines, ['{"jobs":[]}', "no-sleep"])

    def test_no_daemon_is_a_clear_error(self):
        result = self.sh("HOMEWARD_CONTROL=/nonexistent.sock mosrun true", check=False)
        self.assertEqual(result.returncode, 255)
        self.assertIn("no node daemon is running at /nonexistent.sock", result.stderr)

    def test_remote_start_is_refused_clearly_for_now(self):
        result = self.sh("mosrun -r node9 true", check=False)
        self.assertNotEqual(result.returncode, 0)
        self.assertIn("node9", result.stderr)


if __name__ == "__main__":
    harness.main()
