#!/usr/bin/python3
"""homefs: the same script of file operations gives the same results and errnos on a
node's own tree and through homefs from another node; real work (extract, build) gives
the same checksums; many writers at once lose nothing; a peer without the key gets
nothing; a killed home makes calls on a soft mount fail with EIO, and the mount works
again when it returns."""

import json
import os
import pwd
import socket
import subprocess
import time
import unittest

import harness

HERE = os.path.dirname(os.path.realpath(__file__))
MNT = "/mnt/homefs-test"

PROJECT = {
    "Makefile": "all: app\napp: main.o util.o\n\t$(CC) -o $@ $^\n%.o: %.c util.h\n"
                "\t$(CC) -O2 -c -o $@ $<\n",
    "util.h": "int square(int x);\n",
    "util.c": '#include "util.h"\nint square(int x) { return x * x; }\n',
    "main.c": '#include <stdio.h>\n#include "util.h"\n'
              'int main(void) { printf("%d\\n", square(7)); return 0; }\n',
}


class HomefsTest(unittest.TestCase):
    def mount(self, cluster, timeout="3"):
        home = cluster.node("node1")["address"]
        cluster.run("node2", "sh", "-c", f"mkdir -p {MNT} && mosmount -o timeout={timeout} "
                    f"{home} {MNT}")

    def unmount(self, cluster):
        cluster.run("node2", "fusermount3", "-u", MNT)

    def test_conformance_and_real_work(self):
        with harness.LoopCluster(2) as cluster:
            script = os.path.join(cluster.dir, "homefs_ops.py")
            with open(os.path.join(HERE, "homefs_ops.py")) as src, open(script, "w") as dst:
                dst.write(src.read())
            cluster.run("node1", "mkdir", "-p", "/data/local", "/data/remote")
            # A rename to another mount fails with EXDEV: the cluster's directory is not
            # on /data's mount (a bind mount), at home or through homefs.
            xdev = os.path.join(cluster.dir, "xdev")
            os.mkdir(xdev)
            local = json.loads(cluster.run("node1", "python3", script, "/data/local",
                                           xdev, timeout=300).stdout)
            self.mount(cluster)
            try:
                remote = json.loads(cluster.run("node2", "python3", script,
                                                f"{MNT}/data/remote", f"{MNT}{xdev}",
                                                timeout=300).stdout)
                self.assertEqual(len(local), len(remote))
                for mine, theirs in zip(local, remote):
                    self.assertEqual(mine, theirs, f"step {mine[0]}")
                # The same through the daemon's own mount of every home, as jobs see it.
                cluster.run("node1", "mkdir", "-p", "/data/remote-tree")
                tree = json.loads(cluster.run("node2", "python3", script,
                                              "/mosix/home/node1/data/remote-tree",
                                              f"/mosix/home/node1{xdev}", timeout=300).stdout)
                self.assertEqual(len(local), len(tree))
                for mine, theirs in zip(local, tree):
                    self.assertEqual(mine, theirs, f"step {mine[0]} through /mosix/home")

                # Real work: a source tarball extracted and built at home and through homefs.
                src = os.path.join(cluster.dir, "project")
                os.makedirs(src)
                for name, text in PROJECT.items():
                    with open(os.path.join(src, name), "w") as f:
                        f.write(text)
                tarball = os.path.join(cluster.dir, "project.tar")
                subprocess.run(["tar", "-C", cluster.dir, "-cf", tarball, "project"], check=True)
                build = ("cd {0} && tar -xf {1} && make -C project >/dev/null && "
                         "project/app && sha256sum project/*.o project/app project/*.c "
                         "| cut -c1-64")
                at_home = cluster.run("node1", "sh", "-c", build.format("/data/local", tarball))
                away = cluster.run("node2", "sh", "-c", build.format(f"{MNT}/data/remote",
                                                                     tarball))
                self.assertEqual(at_home.stdout, away.stdout)
                self.assertTrue(at_home.stdout.startswith("49\n"))

                # Many writers at once, each its own file; the home sees every byte.
                writers = ("for i in $(seq 1 8); do (head -c 4000000 /dev/urandom > "
                           "{0}/w$i.tmp && sha256sum < {0}/w$i.tmp | cut -c1-64 > "
                           "{0}/w$i.sum) & done; wait")
                cluster.run("node2", "sh", "-c", writers.format(f"{MNT}/data/remote"))
                for i in range(1, 9):
                    check = cluster.run("node1", "sh", "-c",
                                        f"sha256sum < /data/remote/w{i}.tmp | cut -c1-64; "
                                        f"cat /data/remote/w{i}.sum")
                    ours, theirs = check.stdout.split()
                    self.assertEqual(ours, theirs, f"writer {i}")
            finally:
                self.unmount(cluster)
            self.assertNotIn(MNT, cluster.run("node2", "cat", "/proc/self/mountinfo").stdout)
            self.assertIn("node1", cluster.run("node1", "ls", "/mosix/home").stdout)

    def test_the_daemons_mount_reads_ahead_4_mib(self):
        """A FUSE mount's bdi reads ahead 128 KiB unless told; homefs asks for 4 MiB, so a
        sequential reader keeps several 1 MiB reads to the home in flight."""
        with harness.LoopCluster(2) as cluster:
            cluster.wait_for(lambda: cluster.run("node2", "test", "-d", "/mosix/home/node1/data",
                                                 check=False).returncode == 0,
                             60, "node2 to see node1's files")
            dev = int(cluster.run("node2", "stat", "-c", "%d", "/mosix/home/node1/data").stdout)
            with open(f"/sys/class/bdi/{os.major(dev)}:{os.minor(dev)}/read_ahead_kb") as f:
                self.assertEqual(f.read().strip(), "4096")

    def test_locks_as_at_home(self):
        """POSIX, OFD and flock locks through homefs behave as on the home's own tree (the
        same script, the same results), and they are the home's: a lock taken through the
        mount excludes a process at home and the other way round."""
        with harness.LoopCluster(2) as cluster:
            script = os.path.join(cluster.dir, "homefs_lock_ops.py")
            with open(os.path.join(HERE, "homefs_lock_ops.py")) as src, open(script, "w") as dst:
                dst.write(src.read())
            cluster.run("node1", "mkdir", "-p", "/data/locks-local", "/data/locks-remote")
            local = json.loads(cluster.run("node1", "python3", script, "/data/locks-local",
                                           timeout=120).stdout)
            self.mount(cluster)
            try:
                remote = json.loads(cluster.run("node2", "python3", script,
                                                f"{MNT}/data/locks-remote", timeout=120).stdout)
                self.assertEqual(len(local), len(remote))
                for mine, theirs in zip(local, remote):
                    self.assertEqual(mine, theirs, f"step {mine[0]}")
                # The same through the daemon's own mount of every home, as jobs see it.
                cluster.run("node1", "mkdir", "-p", "/data/locks-tree")
                tree = json.loads(cluster.run("node2", "python3", script,
                                              "/mosix/home/node1/data/locks-tree",
                                              timeout=120).stdout)
                self.assertEqual(len(local), len(tree))
                for mine, theirs in zip(local, tree):
                    self.assertEqual(mine, theirs, f"step {mine[0]} through /mosix/home")

                # Across the link: held through the mount, refused at home; and back.
                cluster.run("node1", "sh", "-c", "echo 0 > /data/shared")
                held = subprocess.Popen(
                    [harness.LOOPCLUSTER, "exec", cluster.dir, "node2", "--", "flock",
                     f"{MNT}/data/shared", "sh", "-c", "echo held; read line"],
                    env=cluster.env(), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
                try:
                    self.assertEqual(held.stdout.readline(), "held\n")
                    refused = cluster.run("node1", "flock", "-n", "/data/shared", "true",
                                          check=False)
                    self.assertEqual(refused.returncode, 1, refused.stderr)
                    getlk = ("import fcntl, os, struct, sys; fd = os.open(sys.argv[1], os.O_RDWR)"
                             "; print(struct.unpack('hhqqi4x', fcntl.fcntl(fd, fcntl.F_GETLK, "
                             "struct.pack('hhqqi4x', fcntl.F_WRLCK, 0, 0, 0, 0)))[0])")
                    # flock and record locks are apart, as on one machine.
                    self.assertEqual(cluster.run("node1", "python3", "-c", getlk,
                                                 "/data/shared").stdout, "2\n")  # F_UNLCK
                finally:
                    held.stdin.close()
                    held.wait(timeout=30)
                # Free again once the holder's file is released at home (the kernel sends
                # the release just after the last close returns).
                self.assertEqual(cluster.run("node1", "flock", "-w", "10", "/data/shared",
                                             "true").returncode, 0)
                held = subprocess.Popen(
                    [harness.LOOPCLUSTER, "exec", cluster.dir, "node1", "--", "python3", "-c",
                     "import fcntl, sys; f = open('/data/shared', 'r+'); "
                     "import os; fcntl.lockf(f, fcntl.LOCK_EX, 1, 0); "
                     "print('held', os.getpid(), flush=True); sys.stdin.readline()"],
                    env=cluster.env(), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
                try:
                    word, holder_pid = held.stdout.readline().split()
                    self.assertEqual(word, "held")
                    # F_GETLK on node2 names the process at home that holds the lock (a
                    # loopback cluster shares one pid namespace, so node2's kernel can
                    # name the home's pid; elsewhere it shows 0).
                    seen = cluster.run("node2", "python3", "-c", getlk.replace(
                        "[0])", "[0::4])"), f"{MNT}/data/shared").stdout
                    self.assertEqual(seen, f"(1, {holder_pid})\n")  # F_WRLCK
                    refused = cluster.run("node2", "python3", "-c",
                                          "import fcntl, sys; f = open(sys.argv[1], 'r+'); "
                                          "fcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB)",
                                          f"{MNT}/data/shared", check=False)
                    self.assertIn("Resource temporarily unavailable", refused.stderr)
                finally:
                    held.stdin.close()
                    held.wait(timeout=30)
            finally:
                self.unmount(cluster)

    def test_peer_without_key_gets_nothing(self):
        with harness.LoopCluster(1) as cluster:
            node = cluster.node("node1")
            with socket.create_connection((node["address"], 4701), timeout=10) as s:
                # magic, nonce, an X25519 public key, flags, service, no cluster (its own)
                s.sendall(b"HWPEER03" + os.urandom(32) + os.urandom(32) + bytes([0, 5]) +
                          b"files" + bytes([0]))
                reply = b""  # magic, nonce, public key, flags, tag
                while len(reply) < 105:
                    chunk = s.recv(105 - len(reply))
                    self.assertTrue(chunk)
                    reply += chunk
                s.sendall(os.urandom(32))  # a tag made without the key
                self.assertEqual(s.recv(100), b"", "the server kept talking")
            cluster.wait_for(lambda: "refused peer" in cluster.log("node1"), 30,
                             "the refusal in the log")

    def test_home_dies_and_returns(self):
        with harness.LoopCluster(2) as cluster:
            cluster.run("node1", "sh", "-c", "echo before > /data/f")
            # A soft mount (a hard one, the default, waits for the home instead:
            # test_cutlink.py).
            self.mount(cluster, timeout="2,soft")
            try:
                self.assertEqual(cluster.run("node2", "cat", f"{MNT}/data/f").stdout,
                                 "before\n")
                cluster.kill("node1")
                # Calls fail with EIO, and do not hang (the subprocess timeout is only a
                # guard against a hang; the bound is the soft mount's 2 s).
                failed = cluster.run("node2", "sh", "-c", f"cat {MNT}/data/f; "
                                     f"ls {MNT}/data/nothing-here", check=False, timeout=60)
                self.assertNotEqual(failed.returncode, 0)
                self.assertIn("Input/output error", failed.stderr)
                cluster.start("node1")
                cluster.run("node1", "sh", "-c", "echo after > /data/f")
                cluster.wait_for(lambda: cluster.run("node2", "cat", f"{MNT}/data/f",
                                                     check=False).stdout == "after\n",
                                 30, "the mount to work again")
                cluster.run("node2", "sh", "-c", f"echo new > {MNT}/data/g")
                self.assertEqual(cluster.run("node1", "cat", "/data/g").stdout, "new\n")
            finally:
                self.unmount(cluster)

    def test_changes_at_home_reach_the_cache(self):
        with harness.LoopCluster(2) as cluster:
            cluster.run("node1", "sh", "-c", "echo before > /data/f")
            home = cluster.node("node1")["address"]
            # Caches trusted for a minute: only the home's notices can refresh them sooner.
            cluster.run("node2", "sh", "-c", f"mkdir -p {MNT} && mosmount -o timeout=3,"
                        f"attr_timeout=60,entry_timeout=60 {home} {MNT}")
            try:
                self.assertEqual(cluster.run("node2", "cat", f"{MNT}/data/f").stdout, "before\n")
                self.assertNotEqual(cluster.run("node2", "stat", f"{MNT}/data/new",
                                                check=False).returncode, 0)
                cluster.run("node1", "sh", "-c", "echo 'changed at home' > /data/f; "
                            "echo hello > /data/new")
                cluster.wait_for(lambda: cluster.run("node2", "cat", f"{MNT}/data/f").stdout
                                 == "changed at home\n", 30, "the change to reach node2")
                cluster.wait_for(lambda: cluster.run("node2", "cat", f"{MNT}/data/new",
                                                     check=False).stdout == "hello\n",
                                 30, "the new file to appear on node2")
            finally:
                self.unmount(cluster)

    def test_a_directory_changed_here_shows_later_changes_at_home(self):
        # A create or mkdir answers with the directory as it is just after, and this node
        # answers the kernel's next stat of it with that for the attribute timeout; a
        # change at home after it must still reach it through the home's notice.
        with harness.LoopCluster(2) as cluster:
            cluster.run("node1", "mkdir", "/data/d")
            home = cluster.node("node1")["address"]
            cluster.run("node2", "sh", "-c", f"mkdir -p {MNT} && mosmount -o timeout=3,"
                        f"attr_timeout=60,entry_timeout=60 {home} {MNT}")
            try:
                links = lambda: cluster.run("node2", "stat", "-c", "%h",
                                            f"{MNT}/data/d").stdout.strip()
                cluster.run("node2", "sh", "-c", f"mkdir {MNT}/data/d/here; touch {MNT}/data/d/f")
                self.assertEqual(links(), "3")
                cluster.run("node1", "mkdir", "/data/d/at-home")
                cluster.wait_for(lambda: links() == "4", 30,
                                 "node2 to see the directory made at home")
                cluster.run("node2", "rmdir", f"{MNT}/data/d/here")
                self.assertEqual(links(), "3")
                cluster.run("node1", "rmdir", "/data/d/at-home")
                cluster.wait_for(lambda: links() == "2", 30,
                                 "node2 to see the directory removed at home")
            finally:
                self.unmount(cluster)

    def test_daemon_mounts_peer_homes(self):
        with harness.LoopCluster(2) as cluster:
            cluster.run("node1", "sh", "-c", "echo node1-file > /data/marker")
            # The node's own home is its tree, with no FUSE in the way.
            own = cluster.run("node1", "sh", "-c", "cat /mosix/home/node1/data/marker; "
                              "stat -f -c %T /mosix/home/node1/data").stdout
            self.assertTrue(own.startswith("node1-file\n"))
            self.assertNotIn("fuse", own)
            # Every node's files are one homefs mount, /mosix/home, listing the live nodes.
            mounts = cluster.run("node2", "cat", "/proc/self/mountinfo").stdout
            self.assertEqual([line.split()[4] for line in mounts.splitlines()
                              if " - fuse.homefs " in line],
                             ["/mosix/home"])
            cluster.wait_for(lambda: cluster.run("node2", "cat", "/mosix/home/node1/data/marker",
                                                 check=False).stdout == "node1-file\n",
                             30, "/mosix/home/node1 on node2")
            # What membership does for a node, by hand: out of the listing and back.
            home = cluster.node("node1")["address"]
            listing = lambda: cluster.run("node2", "ls", "/mosix/home").stdout.split()
            # The daemon answers once homefs is told; homefs changes the listing a moment
            # after.
            cluster.run("node2", "mosctl", "home-unmount", "node1")
            cluster.wait_for(lambda: listing() == ["node2"], 30, "node1 out of the listing")
            cluster.run("node2", "mosctl", "home-mount", "node1", home)
            cluster.wait_for(lambda: listing() == ["node1", "node2"], 30,
                             "node1 in the listing again")
            self.assertNotEqual(cluster.run("node2", "mosctl", "home-mount", "../x", home,
                                            check=False).returncode, 0)
            # A node that does not see a home it never used takes none of its jobs, and
            # says why (a home once used stays found: its guests' views hold it).
            cluster.run("node1", "mosctl", "home-unmount", "node2")
            refused = cluster.run("node2", "mosrun", "-r", "node1", "true", check=False)
            self.assertNotEqual(refused.returncode, 0)
            self.assertIn("node node1 does not see node node2's files", refused.stderr)
            cluster.run("node1", "mosctl", "home-mount", "node2", cluster.node("node2")["address"])
            self.assertEqual(cluster.run("node2", "mosrun", "-r", "node1", "sh", "-c",
                                         "echo away").stdout, "away\n")


class HomefsAsAUserTest(harness.UserClusterTest):
    """The same ordinary user's script gives the same results on the home's tree and
    through /mosix/home/node1 on another node: search permission on cached names, FIFOs,
    a non-owner's write to a set-id file, O_DIRECT I/O, a symlink's own times, permission
    errors."""
    user_prefix = "hwfs"

    def test_user_operations_as_at_home(self):
        other = f"{self.user}o"
        other_entry = harness.add_user(other)
        try:
            me = pwd.getpwnam(self.user)
            script = os.path.join(self.c.dir, "homefs_user_ops.py")
            with open(os.path.join(HERE, "homefs_user_ops.py")) as src, \
                    open(script, "w") as dst:
                dst.write(src.read())
            for name in ("user-local", "user-remote"):
                path = os.path.join(self.c.node("node1")["data"], name)
                os.makedirs(path)
                os.chown(path, me.pw_uid, me.pw_gid)
            as_me = ["setpriv", f"--reuid={me.pw_uid}", f"--regid={me.pw_gid}",
                     "--init-groups", "--"]
            ids = [str(other_entry.pw_uid), str(other_entry.pw_gid)]
            local = json.loads(self.c.run("node1", *as_me, "python3", script,
                                          "/data/user-local", *ids, timeout=120).stdout)
            remote = json.loads(self.c.run("node2", *as_me, "python3", script,
                                           "/mosix/home/node1/data/user-remote", *ids,
                                           timeout=120).stdout)
            self.assertEqual([step for step, _ in local], [step for step, _ in remote])
            differ = [f"{mine[0]}: at home {mine[1]!r}, through homefs {theirs[1]!r}"
                      for mine, theirs in zip(local, remote) if mine != theirs]
            self.assertEqual(differ, [], "\n".join(differ))
        finally:
            harness.remove_user(other)


if __name__ == "__main__":
    harness.main()
