#!/usr/bin/python3
"""A directory made through homefs is known whole on the node that made it: until a
change notice about it (or entry_timeout, 10 s), a lookup of a name it does not hold is
answered "absent" there without asking the home, so a job filling a directory it made
(an archive unpacked, a build's output) asks the home nothing before each new name.

- An ordinary user's process on node2 makes a directory of node1's through homefs and
  creates 300 files in it: node1's file service answers about two requests per file (the
  create and the close's release; /metrics' homeward_file_requests_total), not three
  with a lookup of each name first.
- It looks a name up that is not there; a process at node1 then makes that name: node2
  finds it within a few seconds (the home's notice ends what node2 knew, and drops the
  kernel's negative entry), as it finds a name made by anyone else, where waiting out
  entry_timeout would take 10; and then a name node2 never asked for, also made at
  node1, is asked of the home, not answered from what node2 made."""

import os
import unittest

import harness

WEB_PORT = 4791
FILES = 300

MAKE = r"""
import os, sys
d, n = sys.argv[1], int(sys.argv[2])
os.mkdir(d)
for i in range(n):
    os.close(os.open(f"{d}/f{i}", os.O_CREAT | os.O_WRONLY, 0o644))
print(len(os.listdir(d)), os.path.exists(f"{d}/from-home"))
"""

FIND = r"""
import os, sys, time
path = sys.argv[1]
start = time.monotonic()
while not os.path.exists(path) and time.monotonic() - start < 8:
    time.sleep(0.05)
print(f"{os.path.exists(path)} {time.monotonic() - start:.2f}")
"""


class MadeDirectoryTest(harness.UserClusterTest):
    user_prefix = "hwmd"
    cluster_settings = (f'web.listen="{{address}}:{WEB_PORT}"',)

    def test_names_made_here_are_known_and_a_home_change_is_seen(self):
        c = self.c
        work = harness.user_work_dir(c, self.user, "made")
        made = harness.readable_script("make.py", MAKE)
        find = harness.readable_script("find.py", FIND)
        directory = "/mosix/home/node1/data/made/dir"
        c.wait_for(lambda: c.run("node2", "test", "-d", "/mosix/home/node1/data/made",
                                 check=False).returncode == 0, 30, "node2 to see node1's files")
        before = harness.file_requests_at(c, "node1", WEB_PORT)
        out = c.run("node2", "runuser", "-u", self.user, "--", "python3", made, directory,
                    str(FILES), timeout=120).stdout
        asked = harness.file_requests_at(c, "node1", WEB_PORT) - before
        self.assertEqual(out.split(), [str(FILES), "False"])
        # The mkdir, a create and a release per file (releases may still be on their way),
        # the listing: no lookup per name.
        self.assertGreaterEqual(asked, FILES)
        self.assertLess(asked, 2.5 * FILES, f"{asked:.0f} requests for {FILES} new files")
        self.assertEqual(len(os.listdir(os.path.join(work, "dir"))), FILES)

        # A name node2 was told is absent, then made at home by a local process.
        c.run("node1", "runuser", "-u", self.user, "--", "touch", "/data/made/dir/from-home")
        found = c.run("node2", "runuser", "-u", self.user, "--", "python3", find,
                      f"{directory}/from-home", timeout=60).stdout.split()
        self.assertEqual(found[0], "True", f"not seen in {found[1]} s")

        # A name node2 never looked up, made at home: asked of the home, not answered
        # from what node2 made (the notice above ended that).
        c.run("node1", "runuser", "-u", self.user, "--", "touch", "/data/made/dir/later")
        found = c.run("node2", "runuser", "-u", self.user, "--", "python3", find,
                      f"{directory}/later", timeout=60).stdout.split()
        self.assertEqual(found[0], "True", f"not seen in {found[1]} s")


if __name__ == "__main__":
    harness.main()
