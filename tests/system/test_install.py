#!/usr/bin/python3
"""Installing Homeward on a machine: `scripts/install-node` runs `meson install` into a
staging root (DESTDIR) and writes the node's configuration and key there; the tree holds
every program, the job shim, mosjob-init, CRIU, the systemd unit (which
`systemd-analyze verify` accepts), the node.toml template, the manual pages and bash
completion. The installed configuration is one the installed daemon accepts, and a
cluster of the installed programs (not the build tree's) runs and moves an ordinary
user's job with the installed CRIU; the completion offers its nodes."""

import json
import os
import shutil
import stat
import subprocess
import unittest

import harness

INSTALL_NODE = os.path.join(harness.ROOT, "scripts", "install-node")


def build_options():
    with open(os.path.join(harness.BUILD, "meson-info", "intro-buildoptions.json")) as f:
        return {o["name"]: o["value"] for o in json.load(f)}


def install_node(*args, check=True):
    result = subprocess.run([INSTALL_NODE, "--build", harness.BUILD, *args],
                            capture_output=True, text=True, timeout=300)
    if check and result.returncode != 0:
        raise AssertionError(f"install-node {' '.join(args)} failed:\n{result.stderr}")
    return result


class InstallTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        if os.geteuid() != 0:
            raise unittest.SkipTest("installing needs root")
        options = build_options()
        cls.root = os.path.join(harness.private_dir(), "root")
        cls.prefix = os.path.join(cls.root, options["prefix"].lstrip("/"))
        cls.dirs = {d: os.path.join(cls.prefix, options[d])
                    for d in ("bindir", "sbindir", "libexecdir", "datadir", "mandir")}
        # The first node of a new cluster: install, configuration, a new key.
        cls.first = install_node("--no-build", "--root", cls.root, "--name", "alpha",
                                 "--address", "10.9.0.1", "--cluster", "lab", "--new-key",
                                 "--seed", "10.9.0.2")

    def path(self, where, *names):
        return os.path.join(self.dirs[where], *names)

    def test_the_tree_holds_everything_a_node_runs(self):
        for where, name in [("bindir", "mosrun"), ("bindir", "mosmigrate"), ("bindir", "mosps"),
                            ("bindir", "mosmon"), ("sbindir", "mosnoded"), ("sbindir", "mosctl"),
                            ("sbindir", "mosmount"), ("libexecdir", "homeward/mosjob-init"),
                            ("libexecdir", "homeward/criu")]:
            path = self.path(where, name)
            self.assertTrue(os.access(path, os.X_OK), f"{path} is not an executable")
        self.assertTrue(os.path.isfile(os.path.join(self.prefix, "lib", "homeward",
                                                    "libmosix_preload.so")))
        version = subprocess.run([self.path("libexecdir", "homeward/criu"), "--version"],
                                 capture_output=True, text=True)
        self.assertIn("Version: 4.1.1", version.stdout)
        for page in ["man1/mosrun.1", "man1/mosmigrate.1", "man1/mosps.1", "man1/mosmon.1",
                     "man8/mosctl.8", "man8/mosmount.8", "man8/mosnoded.8", "man5/node.toml.5"]:
            self.assertTrue(os.path.getsize(self.path("mandir", page)) > 500, page)
        for command in ["mosrun", "mosmigrate", "mosps", "mosmon", "mosctl"]:
            self.assertTrue(os.path.isfile(self.path("datadir", "bash-completion", "completions",
                                                     command)))

    def test_the_unit_verifies_and_starts_the_installed_daemon(self):
        unit = os.path.join(self.prefix, "lib", "systemd", "system", "mosnoded.service")
        with open(unit) as f:
            text = f.read()
        sbin = "/" + os.path.relpath(self.dirs["sbindir"], self.root)
        self.assertIn(f"ExecStart={sbin}/mosnoded --config /etc/homeward/node.toml\n", text)
        self.assertIn("Type=notify", text)
        self.assertIn("Restart=on-failure", text)
        self.assertIn("KillMode=process", text)  # jobs outlive a daemon restart
        self.assertIn("After=network-online.target", text)
        self.assertIn(f"ExecReload={sbin}/mosctl reload\n", text)
        # systemd's own check, on a copy whose programs are the staged ones (systemd checks
        # that they exist and are executable) among the host's units (network-online.target).
        staged = os.path.join(harness.private_dir(), "unit", "mosnoded.service")
        os.makedirs(os.path.dirname(staged), exist_ok=True)
        with open(staged, "w") as f:
            f.write(text.replace(f"{sbin}/mosnoded", self.path("sbindir", "mosnoded"))
                    .replace(f"{sbin}/mosctl", self.path("sbindir", "mosctl")))
        verify = subprocess.run(["systemd-analyze", "verify", "--man=no", staged],
                                capture_output=True, text=True)
        self.assertEqual(verify.returncode, 0, verify.stdout + verify.stderr)
        self.assertNotIn("mosnoded.service", verify.stdout + verify.stderr)

    def test_the_configuration_is_one_the_daemon_accepts(self):
        etc = os.path.join(self.root, "etc", "homeward")
        key = os.path.join(etc, "cluster.key")
        info = os.stat(key)
        self.assertEqual(stat.S_IMODE(info.st_mode), 0o600)
        self.assertEqual(info.st_uid, 0)
        with open(key) as f:
            self.assertRegex(f.read(), r"^[0-9a-f]{64}\n$")
        self.assertIn("copy", self.first.stderr)  # says where the key goes next
        # The installed daemon reads the installed configuration as it would on the machine:
        # /etc seen with the staging root's /etc over it.
        checked = subprocess.run(
            ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c",
             'mount -t overlay overlay -o "lowerdir=$1/etc:/etc" /etc && '
             'exec "$2" --config /etc/homeward/node.toml --check-config',
             "sh", self.root, self.path("sbindir", "mosnoded")],
            capture_output=True, text=True)
        self.assertEqual(checked.returncode, 0, checked.stdout + checked.stderr)
        self.assertIn("node alpha of cluster lab at 10.9.0.1", checked.stdout)
        with open(os.path.join(etc, "node.toml")) as f:
            self.assertIn('seeds = ["10.9.0.2"]', f.read())

        # A second run would replace them: refused, and nothing changed.
        before = open(key).read()
        again = install_node("--no-build", "--no-install", "--root", self.root, "--name",
                             "alpha", "--address", "10.9.0.1", "--new-key", check=False)
        self.assertEqual(again.returncode, 1)
        self.assertIn("node.toml exists; --force replaces it", again.stderr)
        self.assertEqual(open(key).read(), before)
        # Bad answers are named.
        bad = install_node("--no-build", "--no-install", "--root", self.root, "--name",
                           "alpha", "--address", "10.9.0.300", "--force", check=False)
        self.assertEqual(bad.returncode, 1)
        self.assertIn("--address 10.9.0.300: not an IPv4 address", bad.stderr)
        # A node of the cluster with a copy of the key.
        second = os.path.join(harness.private_dir(), "second")
        os.makedirs(os.path.join(second, "etc"))
        shutil.copytree(os.path.join(self.prefix, "share"),
                        os.path.join(second, os.path.relpath(self.prefix, self.root), "share"))
        install_node("--no-build", "--no-install", "--root", second, "--name", "beta",
                     "--address", "10.9.0.2", "--cluster", "lab", "--key", key)
        self.assertEqual(open(os.path.join(second, "etc", "homeward", "cluster.key")).read(),
                         before)

    def test_installed_programs_run_and_move_a_job(self):
        user = harness.user_for(self, "hwin").pw_name
        with harness.LoopCluster(2, installed=self.prefix) as c:
            criu = self.path("libexecdir", "homeward/criu")
            c.wait_for(lambda: f"check: ok    criu: {criu} 4.1.1" in c.log("node1"), 60,
                       "node1 to log the installed criu")
            harness.wait_until_meshed(c)
            work, writer, pid = harness.start_fed_job(self, c, user, "installed",
                                                      harness.LINE_LOGGER, "-r node2")

            def where():
                return next(j["where"] for j in harness.jobs(c) if j["pid"] == pid)
            c.wait_for(lambda: where() == "node2", 60, "the job to run on node2")
            writer.write("one\n")
            writer.flush()
            # Completion offers the nodes gossip knows, from the installed mosmon.
            completions = self.path("datadir", "bash-completion", "completions", "mosmigrate")
            completion = c.run("node1", "bash", "-c",
                               "source /usr/share/bash-completion/bash_completion; "
                               f"source {completions}; "
                               f'COMP_WORDS=(mosmigrate {pid} ""); COMP_CWORD=2; '
                               f'COMP_LINE="mosmigrate {pid} "; COMP_POINT=${{#COMP_LINE}}; '
                               '_homeward_mosmigrate; echo "${COMPREPLY[@]}"')
            offered = completion.stdout.split()
            for word in ("node1", "node2", "home", "freeze"):
                self.assertIn(word, offered, completion.stdout + completion.stderr)
            # Moved home by the installed mosmigrate, the daemons' installed CRIU.
            c.run("node1", "runuser", "-u", user, "--", "mosmigrate", str(pid), "home")
            self.assertEqual(where(), "node1")
            writer.write("two\n")
            writer.close()
            c.wait_for(lambda: harness.read_text(os.path.join(work, "status")) == "0\n", 60,
                       "the job to end")
            self.assertEqual(harness.read_text(os.path.join(work, "log")),
                             "one node1\ntwo node1\ndone\n")

            joined = install_node("--check-joined", "--control",
                                  c.node("node2")["control"], "--seed",
                                  c.node("node1")["address"], "--timeout", "30",
                                  "--root", self.root, check=False)
            self.assertEqual(joined.returncode, 0, joined.stderr)
            self.assertIn("node node2 is up in cluster", joined.stderr)
            self.assertIn("with node1", joined.stderr)


if __name__ == "__main__":
    harness.main()
