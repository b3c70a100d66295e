#!/usr/bin/python3
"""homefs for many nodes, on a 16-node loopback cluster: every node has one homefs mount
(/mosix/home) and one homefs process, holding no connection and no thread per peer while
the cluster is idle; a guest of node1 on node9 (an ordinary user's job) reads and writes
node1's files through one connection, which closes after the idle time; a node killed
leaves every listing, and comes back when it starts again."""
import os
import subprocess
import unittest

import harness

NODES = 16
IDLE_S = 2


def io_uring_lanes(pid):
    """homefs's lanes (homefs/fuse_uring.h): one ring, and one thread, each."""
    fd_dir = f"/proc/{pid}/fd"
    lanes = 0
    for fd in os.listdir(fd_dir):
        try:
            lanes += os.readlink(os.path.join(fd_dir, fd)) == "anon_inode:[io_uring]"
        except FileNotFoundError:  # closed meanwhile
            pass
    return lanes


def homefs_connections(cluster):
    """The established TCP connections homefs processes of `cluster` hold: (local address,
    peer address) pairs, the local one being the connecting node's."""
    prefix = cluster.node("node1")["address"].rsplit(".", 1)[0] + "."
    lines = subprocess.run(["ss", "-Htnp", "state", "established"], capture_output=True,
                           text=True, check=True).stdout.splitlines()
    found = []
    for line in lines:
        fields = line.split()
        if len(fields) < 5 or '"mosmount"' not in line:
            continue
        local, peer = fields[2].rsplit(":", 1)[0], fields[3].rsplit(":", 1)[0]
        if local.startswith(prefix):
            found.append((local, peer))
    return found


def homefs_processes(cluster):
    """pid -> command line of every homefs process of `cluster` (by its nodes' configs)."""
    found = {}
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
            with open(f"/proc/{pid}/environ", "rb") as f:
                env = f.read()
        except OSError:
            continue
        if argv and argv[0].endswith(b"mosmount") and cluster.dir.encode() in env:
            found[int(pid)] = b" ".join(argv).decode()
    return found


def threads(pid):
    with open(f"/proc/{pid}/status") as f:
        return int(next(line.split()[1] for line in f if line.startswith("Threads:")))


class HomefsScaleTest(unittest.TestCase):

    def test_sixteen_nodes(self):
        user = harness.user_for(self, "hwsc")
        with harness.LoopCluster(NODES, settings=[f"files.idle_disconnect_s={IDLE_S}"]) as c:
            names = sorted(c.nodes)
            harness.wait_until_meshed(c, timeout=180)
            listing = lambda node: c.run(node, "ls", "/mosix/home").stdout.split()
            for node in names:
                c.wait_for(lambda: listing(node) == names, 60, f"{node} to list every node")
                mounts = c.run(node, "cat", "/proc/self/mountinfo").stdout
                homefs = [line.split()[4] for line in mounts.splitlines()
                          if " - fuse.homefs " in line]
                self.assertEqual(homefs, ["/mosix/home"], node)
            processes = homefs_processes(c)
            self.assertEqual(len(processes), NODES, processes)
            self.assertTrue(all("--tree" in argv for argv in processes.values()), processes)
            # Idle: no connection, and a few threads whatever the cluster's size (and a
            # lane for each of the machine's CPUs, or a few more, where the kernel's
            # requests come through io_uring: one thread and ring each). The listings
            # above made none.
            self.assertEqual(homefs_connections(c), [])
            for pid in processes:
                own = threads(pid) - io_uring_lanes(pid)
                self.assertLess(own, 8, f"homefs {pid}: one thread per peer?")
                self.assertLessEqual(io_uring_lanes(pid), 3 * os.cpu_count(), f"homefs {pid}")

            # An ordinary user's job of node1 runs on node9 and uses its home's files.
            data = c.node("node1")["data"]
            work = os.path.join(data, "scale")
            os.makedirs(work)
            os.chown(work, user.pw_uid, user.pw_gid)
            with open(os.path.join(work, "in"), "w") as f:
                f.write("from node1\n")
            os.chmod(os.path.join(work, "in"), 0o644)
            job = subprocess.Popen(
                [harness.LOOPCLUSTER, "exec", c.dir,
                 "node1", "--", "runuser", "-u", user.pw_name, "--", "mosrun", "-r", "node9",
                 "sh", "-c", "cd /data/scale && cat in && hostname && echo written > out && "
                             "while [ ! -e stop ]; do sleep 0.2; done; echo bye"],
                env=c.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            self.addCleanup(lambda: job.poll() is None and job.kill())
            out = os.path.join(work, "out")
            c.wait_for(lambda: harness.read_text(out) == "written\n", 60,
                       "the guest's write to reach node1")
            self.assertEqual(os.stat(out).st_uid, user.pw_uid)
            node9 = c.node("node9")["address"]
            node1 = c.node("node1")["address"]
            # While it runs (it looks for `stop` every 0.2 s), node9's homefs holds one
            # connection, to node1; no other node's holds any.
            self.assertEqual(homefs_connections(c), [(node9, node1)])
            with open(os.path.join(work, "stop"), "w"):
                pass
            stdout, stderr = job.communicate(timeout=60)
            self.assertEqual(job.returncode, 0, stderr)
            self.assertEqual(stdout, "from node1\nnode1\nbye\n")
            c.wait_for(lambda: homefs_connections(c) == [], 30,
                       f"node9's connection to node1 to close after {IDLE_S} s unused")
            self.assertIn("closed the idle connection to " + node1, c.log("node9"))

            # A node that dies leaves every listing, and comes back.
            c.kill("node16")
            others = [n for n in names if n != "node16"]
            c.wait_for(lambda: listing("node1") == others, 120, "node16 to leave node1's listing")
            c.wait_for(lambda: listing("node9") == others, 60, "node16 to leave node9's listing")
            c.start("node16")
            c.wait_for(lambda: listing("node1") == names, 120, "node16 back in node1's listing")
            c.wait_for(lambda: listing("node16") == names, 60, "node16 to list every node")
            # node16's own files are its tree again, and node1 reaches them.
            c.run("node16", "sh", "-c", "echo sixteen > /data/marker")
            read = c.run("node1", "cat", "/mosix/home/node16/data/marker", check=False)
            if read.returncode != 0:
                # What node1 sees of node16 then, and what its daemon and homefs said of it.
                seen = c.run("node1", "ls", "-la", "/mosix/home", "/mosix/home/node16",
                             "/mosix/home/node16/data", check=False)
                said = [line for line in c.log("node1").splitlines() if "node16" in line]
                self.fail(f"node1 cannot read node16's marker: {read.stderr}"
                          f"node1 sees:\n{seen.stdout}{seen.stderr}"
                          f"node1's log of node16:\n" + "\n".join(said[-30:]))
            self.assertEqual(read.stdout, "sixteen\n")


if __name__ == "__main__":
    harness.main()
