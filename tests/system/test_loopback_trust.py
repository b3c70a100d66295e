#!/usr/bin/python3
"""Who may open a loopback connection at a job's home: only the node the job runs on.

A throwaway ordinary user runs a job of node1 on node2 (`mosrun -r node2`), and a second
job that stays at home. An echo server of that user listens at home on node1's address
(on a loopback cluster every node shares the host's 127.0.0.0/8; node1's address is
node1's alone) and logs whoever connects.
- The job on node2 reaches the echo server through its daemon and node1's (as
  test_localhost.py shows at length).
- `loopback_open` (tests/peer/loopback_open.cc) speaks the real peer handshake with the
  cluster key, as a guest's daemon does, from the address of the node it stands for:
  * from node2's address, for the job on node2: opened (the client itself works);
  * from node3's address, for that same job: refused (EPERM), it does not run on node3;
  * from node2's address, for the job at home: refused (EPERM);
  * from node2's address, for pid 1 (no job at all): refused (EPERM).
  The echo server sees none of the refused ones, and node1 logs why it refused each."""

import os
import shlex
import subprocess
import tempfile

import harness

JOB = r"""
import os, socket, sys, time
address, port = sys.argv[1].rsplit(":", 1)
while not os.path.exists("go"):
    time.sleep(0.05)
with socket.create_connection((address, int(port)), timeout=30) as s:
    s.sendall(b"from-the-job\n")
    print(s.makefile().readline().strip(), flush=True)
"""

# The echo server at home: logs each connection's peer to argv[3], echoes one line.
ECHO = harness.LISTENING_SERVER + r"""
def serve(conn):
    with conn:
        line = conn.makefile("rb").readline()
        conn.sendall(b"echo " + line)
while True:
    conn, peer = server.accept()
    with open(sys.argv[3], "a") as log:
        log.write(f"{peer}\n")
    threading.Thread(target=serve, args=(conn,), daemon=True).start()
"""

# A job that stays where it starts until the file "end" appears.
WAIT = "while [ ! -e end ]; do sleep 0.05; done"


class LoopbackTrustTest(harness.UserClusterTest):
    maxDiff = None
    cluster_nodes = 3

    def start_echo(self):
        work = tempfile.mkdtemp(prefix="echo-", dir=harness.private_dir())
        os.chmod(work, 0o777)
        path = os.path.join(work, "echo.py")
        with open(path, "w") as f:
            f.write(ECHO)
        ready = os.path.join(work, "echo.port")
        self.echo_log = os.path.join(work, "echo.log")
        server = subprocess.Popen(
            ["runuser", "-u", self.user, "--", "/usr/bin/python3", path,
             self.c.node("node1")["address"], ready, self.echo_log],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.addCleanup(server.wait)
        self.addCleanup(server.kill)
        return int(self.c.wait_for(lambda: harness.read_text(ready).strip(), 30,
                                   "the echo server to listen"))

    def echo_connections(self):
        return harness.read_text(self.echo_log).count("\n")

    def start_job(self, command, where, name):
        """Starts `command` (a shell command line run in the job's directory) as the user's
        job of node1 on `where`; returns its home pid once mosps shows it running there."""
        c = self.c
        mosrun = ["runuser", "-u", self.user, "--", "mosrun"]
        if where != "node1":
            mosrun += ["-r", where]
        line = shlex.join(mosrun + ["sh", "-c", command])
        c.run("node1", "sh", "-c", f"cd /data/trust && ({line} > {name}.out 2> {name}.err; "
                                   f"echo $? > {name}.status) >/dev/null 2>&1 & echo started")
        return c.wait_for(lambda: next((j["pid"] for j in harness.jobs(c)
                                        if j["user"] == self.user and name in j["cmd"]
                                        and j["where"] == where and j["state"] == "running"),
                                       None), 60, f"job {name} running on {where}")

    def open_as(self, node, home_pid, port):
        """loopback_open from `node`'s address to node1's peer port, for `home_pid`."""
        c = self.c
        client = os.path.join(harness.BUILD, "tests", "loopback_open")
        return subprocess.run(
            [client, c.node(node)["address"], c.node("node1")["address"], "4701",
             c.info["key_file"], str(home_pid), c.node("node1")["address"], str(self.port)],
            capture_output=True, text=True, timeout=60)

    def test_only_the_jobs_node_may_ask(self):
        c = self.c
        entry = __import__("pwd").getpwnam(self.user)
        self.work = os.path.join(c.node("node1")["data"], "trust")
        os.makedirs(self.work)
        os.chown(self.work, entry.pw_uid, entry.pw_gid)
        self.addCleanup(lambda: open(os.path.join(self.work, "end"), "w").close())
        self.addCleanup(lambda: open(os.path.join(self.work, "go"), "w").close())
        self.port = self.start_echo()
        with open(os.path.join(self.work, "job.py"), "w") as f:
            f.write(JOB)
        node1 = c.node("node1")["address"]
        away = self.start_job(f"python3 job.py {node1}:{self.port}; echo away-job", "node2",
                              "away-job")
        home = self.start_job(f"{WAIT}; echo home-job", "node1", "home-job")

        # The job on node2 reaches its home's echo server, as before.
        open(os.path.join(self.work, "go"), "w").close()
        out = os.path.join(self.work, "away-job.out")
        c.wait_for(lambda: harness.read_text(out).count("\n") >= 2, 60, "the away job's echo")
        self.assertEqual(harness.read_text(out), "echo from-the-job\naway-job\n",
                         harness.read_text(os.path.join(self.work, "away-job.err")))
        self.assertIn(f"job {away}: loopback connection from {c.node('node2')['address']}",
                      c.log("node1"))
        self.assertEqual(self.echo_connections(), 1)

        # The away job has ended; another one runs on node2 for the peers' requests.
        waiting = self.start_job(f"{WAIT}; echo waiting-job", "node2", "waiting-job")

        # From node2, where it runs: opened, as the job's user.
        opened = self.open_as("node2", waiting, self.port)
        self.assertEqual((opened.returncode, opened.stdout), (0, "opened\necho ping\n"),
                         opened.stderr)
        self.assertIn(f"(uid {entry.pw_uid})", c.log("node1"))
        self.assertEqual(self.echo_connections(), 2)

        # From node3, where it does not run: refused.
        node3 = c.node("node3")["address"]
        refused = self.open_as("node3", waiting, self.port)
        self.assertEqual(refused.returncode, 1, refused.stdout + refused.stderr)
        self.assertEqual(refused.stdout,
                         f"refused EPERM: job {waiting} runs on node2, not on the asking peer "
                         f"{node3}\n")
        self.assertIn(f"job {waiting}: loopback connection from {node3}:", c.log("node1"))

        # For the job at home, from node2 (a node that hosts jobs of this home): refused.
        for pid in (home, 1):
            refused = self.open_as("node2", pid, self.port)
            self.assertEqual(refused.returncode, 1, refused.stdout + refused.stderr)
            self.assertEqual(refused.stdout,
                             f"refused EPERM: job {pid} does not run away from this home (it "
                             f"is at home, frozen, ended, or no job of this home)\n")
        self.assertEqual(self.echo_connections(), 2)  # nothing refused reached the server

        open(os.path.join(self.work, "end"), "w").close()
        for name in ("home-job", "waiting-job"):
            status = os.path.join(self.work, f"{name}.status")
            c.wait_for(lambda: harness.read_text(status), 60, f"{name}'s end")
            self.assertEqual(harness.read_text(status).strip(), "0", name)


if __name__ == "__main__":
    harness.main()
