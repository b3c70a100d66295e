#!/usr/bin/python3
"""mosctl check: on a node of a loopback cluster every probe passes (FUSE, FUSE over
io_uring, namespaces, seccomp, cgroups, userfaultfd, CRIU, the configuration, the ports
its daemon serves) and the daemon logged the same probes once at start; a key file others
may read, a port that another daemon holds, and an ordinary user's run each fail with the
cause and a fix. The peers' clocks, as gossip measures them, agree; a peer whose clock is
5 s ahead is named."""

import os
import re
import shutil
import unittest

import harness

PROBES = ["config", "fuse", "fuse io_uring", "namespaces", "seccomp", "cgroups", "userfaultfd",
          "criu", "ports"]


class CheckTest(unittest.TestCase):
    def test_check_passes_on_a_node_and_names_what_breaks(self):
        user = harness.user_for(self, "hwck").pw_name
        with harness.LoopCluster(1) as c:
            checked = c.run("node1", "mosctl", "check", check=False)
            self.assertEqual(checked.returncode, 0, checked.stdout + checked.stderr)
            lines = checked.stdout.splitlines()
            for probe in PROBES:
                self.assertTrue(any(re.match(rf"(ok  |warn)  {probe}: ", l) for l in lines),
                                f"{probe} in:\n{checked.stdout}")
            if harness.read_text("/sys/module/fuse/parameters/enable_uring").strip() == "Y":
                self.assertIn("ok    fuse io_uring: homefs takes the kernel's requests through "
                              "io_uring", checked.stdout)
            self.assertIn(f"ports: {c.node('node1')['address']}:4700/udp (gossip)",
                          checked.stdout)
            self.assertIn("this node's daemon (pid", checked.stdout)
            self.assertRegex(checked.stdout, r"ok    criu: \S+ 4\.1\.1: criu check passes")
            self.assertEqual(lines[-1], "this node can run and move jobs")
            # The daemon ran the same probes at start (but the ports), and logged them once.
            c.wait_for(lambda: "check: ok    criu:" in c.log("node1"), 60,
                       "the daemon to log its probes")
            self.assertEqual(c.log("node1").count("check: ok    fuse:"), 1)
            self.assertNotIn("check: FAIL", c.log("node1"))

            # A key file others may read: the configuration fails, and says how to fix it.
            work = harness.private_dir()
            key = os.path.join(work, "open.key")
            shutil.copy(c.info["key_file"], key)
            os.chmod(key, 0o644)
            config = os.path.join(work, "node.toml")
            with open(c.node("node1")["config"]) as f:
                text = f.read()
            with open(config, "w") as f:
                f.write(re.sub(r'key_file = ".*"', f'key_file = "{key}"', text))
            bad = c.run("node1", "mosctl", "--control", "/nonexistent.sock", "check",
                        "--config", config, check=False)
            self.assertEqual(bad.returncode, 1, bad.stdout + bad.stderr)
            self.assertRegex(bad.stdout, r"FAIL  config: .*open\.key.*\(fix: .*0600")
            self.assertIn("1 probe failed: jobs cannot run or move on this node", bad.stdout)

            # node1's address and ports, but not node1's daemon asked: they are taken.
            os.chmod(key, 0o600)
            taken = c.run("node1", "mosctl", "--control", "/nonexistent.sock", "check",
                          "--config", config, check=False)
            self.assertEqual(taken.returncode, 1, taken.stdout + taken.stderr)
            self.assertRegex(taken.stdout, r"FAIL  ports: .*cannot bind the gossip port: "
                                           r"Address already in use \(fix: ")

            # An ordinary user is told to run it as root.
            mine = c.run("node1", "runuser", "-u", user, "--", "mosctl", "check", check=False)
            self.assertEqual(mine.returncode, 1, mine.stdout + mine.stderr)
            self.assertIn("FAIL  root: ", mine.stdout)

    def test_a_peer_whose_clock_is_off_is_named(self):
        with harness.LoopCluster(2) as c:
            harness.wait_until_meshed(c)
            agreed = c.run("node1", "mosctl", "check")
            self.assertRegex(agreed.stdout, r"ok    clocks: within \d+ ms of 1 live peer "
                                            r"\(the farthest: node2\)")
            # node2 again, as a machine whose clock runs 5 s ahead.
            c.kill("node2")
            c.start("node2", faults="clock-ahead")

            def clock_line():
                """(node1's clock line that names node2, the check) once there is one."""
                out = c.run("node1", "mosctl", "check", check=False)
                line = next((l for l in out.stdout.splitlines()
                             if "clocks: node2's clock" in l), None)
                return (line, out) if line else None
            line, out = c.wait_for(clock_line, 60, "node1 to measure node2's clock")
            self.assertRegex(line, r"^warn  clocks: node2's clock is (49\d\d|50\d\d) ms ahead "
                                   r"of this node's: a job that moves between them sees its "
                                   r"wall clock jump \(fix: .*chrony")
            self.assertEqual(out.returncode, 0, out.stdout)  # a warning: jobs still run
            self.assertRegex(c.log("node1"), r"gossip: node2's clock is \d+ ms ahead of this "
                                             r"node's")


if __name__ == "__main__":
    harness.main()
