#!/usr/bin/python3
"""A job may use more of its home's files than the home's daemon may hold descriptors:
the kernel keeps every file a job looked up through homefs until memory runs short, and
the home's file service holds an O_PATH descriptor for each, so a build tree or a
dataset of tens of thousands of files once ended in EMFILE. Here node1's daemon may hold
only 1,024 descriptors, and an ordinary user's job on node2 creates 3,000 files there,
opens and reads every one back, renames some and removes them all, without an error;
the daemon never holds more than its limit allows."""

import json
import os
import shutil
import subprocess
import unittest

import harness

FILES = 3000
LIMIT = 1024

WORK = r"""
import json, os, sys
d, n = sys.argv[1], int(sys.argv[2])
errors = []
def attempt(what, call):
    try:
        return call()
    except OSError as e:
        errors.append(f"{what}: {e}")
for i in range(n):
    def create(i=i):
        fd = os.open(f"{d}/f{i}", os.O_CREAT | os.O_WRONLY, 0o644)
        os.write(fd, f"file {i}\n".encode())
        os.close(fd)
    attempt(f"create f{i}", create)
wrong = 0
for i in range(n):
    def read(i=i):
        with open(f"{d}/f{i}") as f:
            return f.read()
    if attempt(f"read f{i}", read) != f"file {i}\n":
        wrong += 1
for i in range(0, n, 10):
    attempt(f"rename f{i}", lambda i=i: os.rename(f"{d}/f{i}", f"{d}/g{i}"))
names = sorted(attempt("list", lambda: os.listdir(d)) or [])
for name in names:
    attempt(f"unlink {name}", lambda name=name: os.unlink(f"{d}/{name}"))
print(json.dumps({"errors": errors[:5], "error_count": len(errors), "wrong": wrong,
                  "listed": len(names), "left": len(os.listdir(d))}))
"""


class ManyFilesTest(harness.UserClusterTest):
    user_prefix = "hwmf"

    def test_more_files_than_the_home_may_hold_descriptors(self):
        if shutil.which("prlimit") is None:
            self.skipTest("no prlimit")
        c = self.c
        daemon = c.node("node1")["pid"]
        with open(f"/proc/{daemon}/comm") as f:
            self.assertEqual(f.read().strip(), "mosnoded")
        soft, hard = subprocess.run(["prlimit", f"--pid={daemon}", "--nofile", "--raw",
                                     "--noheadings", "--output=SOFT,HARD"], check=True,
                                    capture_output=True, text=True).stdout.split()
        # The soft limit only: root here may not raise a hard limit back.
        subprocess.run(["prlimit", f"--pid={daemon}", f"--nofile={LIMIT}:{hard}"], check=True)
        self.addCleanup(subprocess.run, ["prlimit", f"--pid={daemon}",
                                         f"--nofile={soft}:{hard}"], check=True)
        harness.user_work_dir(c, self.user, "many")
        script = os.path.join(harness.private_dir(), "many.py")
        with open(script, "w") as f:
            f.write(WORK)
        out = c.run("node2", "runuser", "-u", self.user, "--", "python3", script,
                    "/mosix/home/node1/data/many", str(FILES), timeout=600).stdout
        result = json.loads(out)
        self.assertEqual(result, {"errors": [], "error_count": 0, "wrong": 0,
                                  "listed": FILES, "left": 0})
        self.assertLess(len(os.listdir(f"/proc/{daemon}/fd")), LIMIT)


if __name__ == "__main__":
    harness.main()
