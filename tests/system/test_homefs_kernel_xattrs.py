#!/usr/bin/python3
"""The extended attributes the kernel asks a FUSE file system for by itself: a file's
capabilities before every write to it (to drop them), its POSIX ACLs at permission checks.
homefs answers "none" from the home's last answer (until a change notice about the file,
attr_timeout, or an attribute set through the mount) rather than asking the home again
behind the writes it sent ahead, and the home drops a file's capabilities on any write
as a local write does.

As an ordinary user's process on node2, on a file of node1's through homefs:
- 100 writes of 64 KiB reach the home as about 100 requests (not a capability query
  before each), whole;
- capabilities that root at node1 then gives the file (at once, within a second of the
  writes: not taken for node2's own change) are seen from node2 within a few seconds,
  where the remembered "none" would hide them for 10;
- node2's next write drops them at the home, as a write on node1 would."""

import errno
import os
import struct
import unittest

import harness

WEB_PORT = 4792
WRITES = 100
# A version-2 security.capability: cap_net_raw, permitted and effective.
CAPS = struct.pack("<IIIII", 0x02000001, 1 << 13, 0, 0, 0)

WRITE = r"""
import os, sys
path, n = sys.argv[1], int(sys.argv[2])
fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
for i in range(n):
    os.write(fd, bytes([i % 251]) * 65536)
os.close(fd)
"""

SEE_CAPS = r"""
import os, sys, time
path = sys.argv[1]
start = time.monotonic()
while time.monotonic() - start < 8:
    try:
        print(os.getxattr(path, "security.capability").hex(), f"{time.monotonic() - start:.2f}")
        break
    except OSError:
        time.sleep(0.05)
else:
    print("none", f"{time.monotonic() - start:.2f}")
fd = os.open(path, os.O_WRONLY | os.O_APPEND)
os.write(fd, b"appended")
os.close(fd)
"""


class KernelXattrsTest(harness.UserClusterTest):
    user_prefix = "hwkx"
    cluster_settings = (f'web.listen="{{address}}:{WEB_PORT}"',)

    def test_writes_ask_nothing_more_and_capabilities_set_at_home_are_seen_and_dropped(self):
        c = self.c
        work = harness.user_work_dir(c, self.user, "xattrs")
        write = harness.readable_script("write.py", WRITE)
        see = harness.readable_script("see.py", SEE_CAPS)
        c.wait_for(lambda: c.run("node2", "test", "-d", "/mosix/home/node1/data/xattrs",
                                 check=False).returncode == 0, 30, "node2 to see node1's files")
        path = "/mosix/home/node1/data/xattrs/file"
        before = harness.file_requests_at(c, "node1", WEB_PORT)
        c.run("node2", "runuser", "-u", self.user, "--", "python3", write, path, str(WRITES),
              timeout=120)
        asked = harness.file_requests_at(c, "node1", WEB_PORT) - before
        at_home = os.path.join(work, "file")
        with open(at_home, "rb") as f:
            data = f.read()
        self.assertEqual(data, b"".join(bytes([i % 251]) * 65536 for i in range(WRITES)))
        # The writes, the create, the flush and release, one capability query (the first
        # write's): a query before each write would make it twice as many.
        self.assertGreaterEqual(asked, WRITES)
        self.assertLess(asked, 1.3 * WRITES, f"{asked:.0f} requests for {WRITES} writes")

        os.setxattr(at_home, "security.capability", CAPS)
        seen, after = c.run("node2", "runuser", "-u", self.user, "--", "python3", see, path,
                            timeout=60).stdout.split()
        self.assertEqual(seen, CAPS.hex(), f"capabilities not seen in {after} s")
        with self.assertRaises(OSError) as refused:
            os.getxattr(at_home, "security.capability")
        self.assertEqual(refused.exception.errno, errno.ENODATA)
        with open(at_home, "rb") as f:
            self.assertTrue(f.read().endswith(b"appended"))


if __name__ == "__main__":
    harness.main()
