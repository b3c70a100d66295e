#!/usr/bin/python3
"""Trust boundaries, tried as an unprivileged local user would: nothing the user sends
reaches a privileged process, paths the user names are used with the user's rights, root
alone administers the node, root from a peer is squashed, a flood of input costs the
daemon nothing, and a key file others may read is refused."""

import json
import os
import pwd
import subprocess
import tempfile
import time
import unittest

import harness

AUDIT_LIB = r"""
#include <fcntl.h>
#include <stdio.h>
#include <unistd.h>
/* An LD_AUDIT module: ld.so calls la_version first in every process that loads it. It
   leaves a file named after the uid it runs as. */
unsigned int la_version(unsigned int version) {
  char path[256];
  snprintf(path, sizeof path, "%s/ran-as-%d-%d", AUDIT_DIR, (int)getuid(), (int)getpid());
  int fd = open(path, O_CREAT | O_WRONLY, 0644);
  if (fd >= 0) close(fd);
  return version;
}
"""


class User:
    """A throwaway ordinary user, removed again whatever happens."""

    def __enter__(self):
        self.name = f"hwsec{os.getpid() % 100000}"
        subprocess.run(["userdel", "-r", self.name], capture_output=True)
        subprocess.run(["useradd", "--no-create-home", "--shell", "/bin/sh", self.name],
                       check=True, capture_output=True)
        entry = pwd.getpwnam(self.name)
        self.uid, self.gid = entry.pw_uid, entry.pw_gid
        return self

    def __exit__(self, *exc):
        harness.remove_user(self.name)
        return False

    def cmd(self, *command):
        return ["setpriv", f"--reuid={self.uid}", f"--regid={self.gid}", "--init-groups",
                "--", *command]


def rss_peak_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise AssertionError(f"no VmHWM for {pid}")


class SecurityTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.user = User().__enter__()
        # As a real cluster is by default: a peer's root is squashed.
        cls.cluster = harness.LoopCluster(2, settings=["files.trust_root=false"]).__enter__()

    @classmethod
    def tearDownClass(cls):
        try:
            cls.cluster.__exit__(None, None, None)
        finally:
            cls.user.__exit__(None, None, None)

    def as_user(self, node, script, **kwargs):
        return self.cluster.run(node, *self.user.cmd("sh", "-c", script), **kwargs)

    def test_user_environment_never_reaches_the_root_init(self):
        audit_dir = tempfile.mkdtemp(prefix="homeward-audit-")
        try:
            os.chmod(audit_dir, 0o1777)
            source = os.path.join(audit_dir, "audit.c")
            with open(source, "w") as f:
                f.write(AUDIT_LIB)
            library = os.path.join(audit_dir, "audit.so")
            subprocess.run(["cc", "-shared", "-fPIC", f'-DAUDIT_DIR="{audit_dir}"', "-o",
                            library, source], check=True)
            for where in ([], ["-r", "node2"]):
                self.as_user("node1", f"LD_AUDIT={library} GCONV_PATH=/nonexistent "
                                      f"mosrun {' '.join(where)} true")
            owners = {int(name.split("-")[2]) for name in os.listdir(audit_dir)
                      if name.startswith("ran-as-")}
            # The user's own processes may load it (mosrun, the program): as the user.
            self.assertIn(self.user.uid, owners)
            self.assertNotIn(0, owners, "LD_AUDIT ran as root inside the job's init")
        finally:
            subprocess.run(["rm", "-rf", audit_dir])

    def test_checkpoint_paths_are_the_users(self):
        scratch = tempfile.mkdtemp(prefix="homeward-ck-")
        job = None
        try:
            os.chown(scratch, self.user.uid, self.user.gid)
            job, pid = self.start_job("echo started; exec sleep 300")

            # Into /etc: the user may not create there, so neither may the daemon for them.
            denied = self.as_user("node1", f"mosmigrate {pid} checkpoint /etc/homeward-mine.d",
                                  check=False)
            self.assertNotEqual(denied.returncode, 0)
            self.assertIn("Permission denied", denied.stderr)
            self.assertFalse(os.path.exists("/etc/homeward-mine.d"))
            # Through a symlink the user planted to a place only root may write.
            os.symlink("/etc", os.path.join(scratch, "to-etc"))
            denied = self.as_user("node1", f"mosmigrate {pid} checkpoint {scratch}/to-etc/mine.d",
                                  check=False)
            self.assertNotEqual(denied.returncode, 0)
            self.assertFalse(os.path.exists("/etc/mine.d"))
            # A planted symlink where the directory is to be made is not followed.
            victim = tempfile.mkdtemp(prefix="homeward-victim-")
            with open(os.path.join(victim, "keep"), "w") as f:
                f.write("root's\n")
            os.symlink(victim, os.path.join(scratch, "ck"))
            denied = self.as_user("node1", f"mosmigrate {pid} checkpoint {scratch}/ck",
                                  check=False)
            self.assertNotEqual(denied.returncode, 0)
            self.assertEqual(os.listdir(victim), ["keep"])
            # A checkpoint where the user may write is the user's, and nothing next to it
            # (a planted "<dir>.work", once criu's scratch place) is used.
            os.symlink(victim, os.path.join(scratch, "ok.work"))
            self.as_user("node1", f"mosmigrate {pid} checkpoint {scratch}/ok", timeout=120)
            images = os.path.join(scratch, "ok")
            self.assertEqual(os.stat(images).st_uid, self.user.uid)
            self.assertIn("inventory.img", os.listdir(images))
            for name in os.listdir(images):
                self.assertEqual(os.lstat(os.path.join(images, name)).st_uid, self.user.uid, name)
            self.assertEqual(os.listdir(victim), ["keep"])
            subprocess.run(["rm", "-rf", victim])
        finally:
            if job:
                self.stop(job)
            subprocess.run(["rm", "-rf", scratch])

    def start_job(self, script):
        """Starts `script` as the user's job at home, kept there (-L), in the background;
        returns its process here and its pid, once it printed "started"."""
        job = subprocess.Popen(
            ["scripts/loopcluster", "exec", self.cluster.dir, "node1", "--",
             *self.user.cmd("mosrun", "-L", "sh", "-c", script)],
            cwd=harness.ROOT, env=self.cluster.env(), stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True)
        try:
            self.assertEqual(job.stdout.readline(), "started\n")
            return job, self.cluster.wait_for(lambda: self.job_pid(), 30, "the job in mosps")
        except BaseException:
            self.stop(job)
            raise

    def stop(self, job):
        """Ends a job started in the background: its mosrun (the user's), then the exec."""
        subprocess.run(["pkill", "-KILL", "-x", "mosrun", "-u", self.user.name])
        job.kill()
        job.communicate(timeout=60)

    def job_pid(self):
        jobs = json.loads(self.cluster.run("node1", "mosps", "--json").stdout)["jobs"]
        mine = [j for j in jobs if j["user"] == self.user.name and not j["guest"]]
        return mine[0]["pid"] if mine else None

    def test_only_root_administers_the_node(self):
        for command in (["mosctl", "home-unmount", "node1"],
                        ["mosctl", "home-mount", "node1", "127.0.0.1"],
                        ["mosctl", "block"], ["mosctl", "expel"]):
            result = self.cluster.run("node2", *self.user.cmd(*command), check=False)
            self.assertNotEqual(result.returncode, 0, command)
            self.assertIn("permission denied: only root may", result.stderr, command)
        # node1's files are still there for node2's guests.
        self.assertIn("node1", self.cluster.run("node2", "ls", "/mosix/home").stdout.split())

    def test_root_from_a_peer_is_squashed(self):
        self.cluster.run("node1", "sh", "-c", "echo secret > /data/root-only && "
                                              "chmod 600 /data/root-only")
        here = self.cluster.run("node1", "mosrun", "cat", "/data/root-only")
        self.assertEqual(here.stdout, "secret\n")
        away = self.cluster.run("node1", "mosrun", "-r", "node2", "cat", "/data/root-only",
                                check=False)
        self.assertNotEqual(away.returncode, 0)
        self.assertIn("Permission denied", away.stderr)

    def test_squashed_root_still_moves_a_jobs_private_files(self):
        """criu runs as root, which node2 squashes on node1's files: it restores a job's
        files with the job's user's rights, so a job writing a file only its user may open
        moves away and back; the user cannot write down rights for criu themselves."""
        private = os.path.join(self.cluster.node("node1")["data"], "private-" + self.user.name)
        os.makedirs(private)
        job = None
        try:
            os.chown(private, self.user.uid, self.user.gid)
            os.chmod(private, 0o700)
            out = f"/data/{os.path.basename(private)}/out"
            script = (f"umask 077; exec 3>>{out}; echo started; "
                      "i=0; while :; do i=$((i+1)); echo $i >&3; sleep 0.1; done")
            job, pid = self.start_job(script)
            written = os.path.join(private, "out")
            self.assertEqual(os.stat(written).st_mode & 0o777, 0o600)
            for target in ("node2", "node1"):
                moved = self.as_user("node1", f"mosmigrate {pid} {target}", check=False,
                                     timeout=120)
                self.assertEqual(moved.returncode, 0, f"to {target}: {moved.stderr}")
                size = os.path.getsize(written)
                self.cluster.wait_for(lambda: os.path.getsize(written) > size, 30,
                                      f"the job writing its file on {target}")
            counts = [int(line) for line in open(written).read().split()]
            self.assertEqual(counts, list(range(1, len(counts) + 1)))
            # Where criu's user is written down is root's alone.
            acting = os.path.join(self.cluster.node("node2")["state"], "criu-acting")
            st = os.stat(acting)
            self.assertEqual((st.st_uid, st.st_mode & 0o777), (0, 0o700))
            planted = self.cluster.run("node2", *self.user.cmd(
                "sh", "-c", f"echo 0 0 > {acting}/mnt-1"), check=False)
            self.assertNotEqual(planted.returncode, 0)
        finally:
            if job:
                self.stop(job)
            subprocess.run(["rm", "-rf", private])

    def test_a_flood_of_input_costs_the_daemon_nothing(self):
        for where in ("", "-r node2"):
            started = time.time()
            result = self.as_user("node1", f"yes | mosrun {where} sleep 5", timeout=60)
            self.assertEqual(result.returncode, 0, result.stderr)
            self.assertGreaterEqual(time.time() - started, 4.5)
        for node in ("node1", "node2"):
            pid = self.node_daemon(node)
            peak = rss_peak_kb(pid)
            self.assertLess(peak, 64 * 1024, f"{node}'s daemon peaked at {peak} kB")
        # Signals still reach a job whose stdin is full.
        job = subprocess.Popen(
            ["scripts/loopcluster", "exec", self.cluster.dir, "node1", "--",
             *self.user.cmd("sh", "-c", "yes | mosrun -r node2 sh -c 'echo ready; exec sleep 300'")],
            cwd=harness.ROOT, env=self.cluster.env(), stdout=subprocess.PIPE, text=True)
        try:
            self.assertEqual(job.stdout.readline(), "ready\n")
            pid = self.cluster.wait_for(lambda: self.job_pid(), 30, "the job in mosps")
            self.cluster.run("node1", "kill", "-TERM", str(pid))
            job.wait(timeout=30)
        finally:
            self.stop(job)

    def node_daemon(self, node):
        out = self.cluster.run(node, "mosctl", "status").stdout
        for line in out.splitlines():
            words = line.replace(":", " ").split()
            if words and words[0] == "pid":
                return int(words[1])
        raise AssertionError(f"mosctl status shows no pid:\n{out}")

    def test_a_key_file_others_may_read_is_refused(self):
        with tempfile.TemporaryDirectory() as tmp:
            key = os.path.join(tmp, "cluster.key")
            with open(key, "w") as f:
                f.write(os.urandom(32).hex() + "\n")
            os.chmod(key, 0o644)
            config = os.path.join(tmp, "node.toml")
            with open(config, "w") as f:
                f.write(f'[node]\nname = "loose"\naddress = "127.0.0.1"\n'
                        f'state_dir = "{tmp}/state"\n[cluster]\nkey_file = "{key}"\n')
            mosnoded = os.path.join(harness.BUILD, "noded", "mosnoded")
            result = subprocess.run([mosnoded, "--config", config], capture_output=True,
                                    text=True, timeout=30)
            self.assertNotEqual(result.returncode, 0)
            self.assertIn("may be read or changed by others", result.stdout + result.stderr)


if __name__ == "__main__":
    harness.main()
