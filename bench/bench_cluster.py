"""A loopback cluster for the benchmarks, its files on tmpfs (as the floors' images)."""

import json
import os
import shutil
import subprocess
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.realpath(__file__)))
BUILD = os.path.realpath(os.environ.get("HOMEWARD_BUILD") or os.path.join(ROOT, "build"))
LOOPCLUSTER = os.path.join(ROOT, "scripts", "loopcluster")


class BenchCluster:
    """`nodes` nodes with `settings` (SECTION.FIELD=VALUE each), up for a `with` block;
    `ready(cluster)` runs once it is up (and raises if it is not ready)."""

    def __init__(self, nodes, settings=(), name="bench", timeout=120):
        self.nodes = [f"node{i}" for i in range(1, nodes + 1)]
        self.settings = list(settings)
        self.name = name
        self.timeout = timeout

    def ready(self):
        pass

    def __enter__(self):
        self.dir = tempfile.mkdtemp(prefix=f"homeward-{self.name}-", dir="/dev/shm")
        settings = [arg for setting in self.settings for arg in ("--set", setting)]
        try:
            subprocess.run([LOOPCLUSTER, "up", "--nodes", str(len(self.nodes)), "--dir",
                            self.dir, *settings], env=self.env(), check=True,
                           capture_output=True, text=True, timeout=self.timeout)
            with open(os.path.join(self.dir, "cluster.json")) as f:
                self.info = {n["name"]: n for n in json.load(f)["nodes"]}
            self.ready()
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc):
        subprocess.run([LOOPCLUSTER, "down", self.dir], env=self.env(), capture_output=True,
                       timeout=self.timeout)
        shutil.rmtree(self.dir, ignore_errors=True)

    @staticmethod
    def env():
        env = dict(os.environ, HOMEWARD_BUILD=BUILD)
        env.pop("HOMEWARD_FAULT", None)
        return env

    def command(self, node, *command):
        return [LOOPCLUSTER, "exec", self.dir, node, "--", *command]

    def run(self, node, *command, check=True, timeout=600):
        result = subprocess.run(self.command(node, *command), env=self.env(),
                                capture_output=True, text=True, timeout=timeout)
        if check and result.returncode != 0:
            raise RuntimeError(f"{node}: {' '.join(command)}: {result.stderr.strip()}")
        return result

    @staticmethod
    def wait_for(predicate, what, timeout=120):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = predicate()
            if value:
                return value
            time.sleep(0.2)
        raise RuntimeError(f"timed out waiting for {what}")
