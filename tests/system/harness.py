"""Whole-system test harness: loopback clusters that clean up after themselves.

Every test gets a fresh cluster from scripts/loopcluster and tears it down whether it
passed or not, then checks that no process, mount or cgroup of the cluster is left.
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import unittest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.realpath(__file__))))
LOOPCLUSTER = os.path.join(ROOT, "scripts", "loopcluster")
BUILD = os.environ.get("HOMEWARD_BUILD") or os.path.join(ROOT, "build")
SKIP = 77  # meson's exit code for a skipped test


def host_mounts():
    with open("/proc/self/mountinfo") as f:
        return sorted(line.split()[4] for line in f)


class LoopCluster:
    """A running loopback cluster: `with LoopCluster(3) as c: c.run("node1", "hostname")`."""

    def __init__(self, nodes, cpuset=False, settings=(), memory_mb=None):
        self.nodes = [f"node{i}" for i in range(1, nodes + 1)]
        self.cpuset = cpuset
        self.memory_mb = memory_mb
        self.settings = list(settings)
        self.dir = None

    def __enter__(self):
        self.mounts_before = host_mounts()
        self.dir = tempfile.mkdtemp(prefix="homeward-test-")
        args = [LOOPCLUSTER, "up", "--nodes", str(len(self.nodes)), "--dir", self.dir]
        if self.cpuset:
            args.append("--cpuset")
        if self.memory_mb is not None:
            args += ["--memory", str(self.memory_mb)]
        for setting in self.settings:
            args += ["--set", setting]
        try:
            result = subprocess.run(args, env=self.env(), capture_output=True, text=True,
                                    timeout=90)
            if result.returncode != 0:
                raise AssertionError(f"loopcluster up failed:\n{result.stderr}")
            assert result.stdout.split() == self.nodes, result.stdout
            with open(os.path.join(self.dir, "cluster.json")) as f:
                self.info = json.load(f)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc):
        result = subprocess.run([LOOPCLUSTER, "down", self.dir], env=self.env(),
                                capture_output=True, text=True, timeout=60)
        leftovers = []
        if result.returncode != 0:
            leftovers.append(f"loopcluster down failed: {result.stderr}")
        if os.path.exists(os.path.join(self.dir, "cluster.json")):
            leftovers.append("cluster.json still present")
        mounts_after = host_mounts()
        new_mounts = [m for m in mounts_after if m not in self.mounts_before]
        if new_mounts:
            leftovers.append(f"mounts left on the host: {new_mounts}")
        if exc[0] is None and os.environ.get("HOMEWARD_KEEP_LOGS") is None:
            shutil.rmtree(self.dir, ignore_errors=True)
        else:
            print(f"cluster files kept in {self.dir}", file=sys.stderr)
        if leftovers and exc[0] is None:
            raise AssertionError("; ".join(leftovers))
        return False

    @staticmethod
    def env():
        return dict(os.environ, HOMEWARD_BUILD=BUILD)

    def node(self, name):
        return next(n for n in self.info["nodes"] if n["name"] == name)

    def run(self, node, *command, check=True, input=None, timeout=60):
        """Runs `command` inside `node`; returns the CompletedProcess (text)."""
        result = subprocess.run([LOOPCLUSTER, "exec", self.dir, node, "--", *command],
                                env=self.env(), capture_output=True, text=True, input=input,
                                timeout=timeout)
        if check and result.returncode != 0:
            raise AssertionError(f"{node}: {' '.join(command)} exited "
                                 f"{result.returncode}:\n{result.stdout}{result.stderr}")
        return result

    def kill(self, node):
        subprocess.run([LOOPCLUSTER, "kill", self.dir, node], env=self.env(), check=True)

    def start(self, node):
        subprocess.run([LOOPCLUSTER, "start", self.dir, node], env=self.env(), check=True,
                       capture_output=True, timeout=60)

    def log(self, node):
        with open(self.node(node)["log"], errors="replace") as f:
            return f.read()

    def zombies(self, node):
        """The zombie processes (state Z) under `node`'s daemon: its children, which it
        must reap, and theirs (it is a child subreaper), as "pid comm" strings."""
        daemon = self.node(node)["pid"]
        parents, states = {}, {}
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat") as f:
                    stat = f.read()
            except OSError:
                continue  # gone meanwhile
            # "pid (comm) state ppid ...": comm may hold spaces and parentheses.
            comm = stat[stat.index("(") + 1:stat.rindex(")")]
            fields = stat[stat.rindex(")") + 2:].split()
            parents[int(entry)] = int(fields[1])
            states[int(entry)] = (fields[0], comm)
        found = []
        for pid, (state, comm) in states.items():
            ancestor = parents.get(pid)
            while ancestor and ancestor != daemon:
                ancestor = parents.get(ancestor)
            if ancestor == daemon and state == "Z":
                found.append(f"{pid} {comm}")
        return found

    def wait_for(self, predicate, timeout, what):
        """Polls `predicate` until it returns a true value; fails naming `what`."""
        deadline = time.time() + timeout
        last = None
        while time.time() < deadline:
            last = predicate()
            if last:
                return last
            time.sleep(0.2)
        raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


def main():
    """Runs the calling module's tests; skips (77) when not root, as they need namespaces."""
    if os.geteuid() != 0:
        print("whole-system tests need root (namespaces, mounts, cgroups): skipped")
        sys.exit(SKIP)
    if not os.path.exists(os.path.join(BUILD, "noded", "mosnoded")):
        print(f"no build at {BUILD}: set HOMEWARD_BUILD")
        sys.exit(1)
    unittest.main(module="__main__", verbosity=2)
