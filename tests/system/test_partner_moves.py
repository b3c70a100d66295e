#!/usr/bin/python3
"""Jobs across partner clusters. Cluster a (a1) sends jobs to clusters b (b1, b2) and c
(c1); b accepts a's jobs, c does not (asymmetric sharing). An ordinary user's job of a1, fed
on its standard input, is moved by hand (mosmigrate) to b1: it runs there on its home's
files, reached with the partnership's key, and still sees a1 as its host. Its home moves it
on to b2, within b, and then home. A move to c1 is refused at once with the reason, and the
job stays. Every line the job was fed is in its output, once and in order. A user holding a
copy of the a-b key cannot make a1 take a job whose home is not one of b's nodes.
A partnership changed at run time (`mosctl reload`): a new priority, or a new partner,
keeps a's job on b1; blocking a sends it home."""

import json
import os
import unittest

import harness

# Moves by hand only: on a loaded host the balancers would move the job on by themselves.
SETTINGS = ["gossip.interval_ms=200", "gossip.suspect_ms=1000", "gossip.dead_ms=2500",
            "balance.automatic=false"]
WAIT_S = 60  # generous: the machine is shared and noisy

READER = harness.LINE_LOGGER


class FedJob:
    """An ordinary user's job of a1 that logs every line it is fed, with where a1 says it
    runs; `end` closes its input and checks that every line fed is logged, once, in order."""

    def __init__(self, test, a, user):
        self.test, self.a = test, a
        self.work, self.writer, self.pid = harness.start_fed_job(test, a, user, "fed", READER,
                                                                 "", home="a1")
        self.log = os.path.join(self.work, "log")
        self.fed = []

    def feed(self, line):
        self.fed.append(f"{line} a1")
        self.writer.write(line + "\n")
        self.writer.flush()
        self.a.wait_for(lambda: harness.read_text(self.log) == self.logged(), WAIT_S,
                        f"the job to log {line!r}")

    def logged(self):
        return "".join(f + "\n" for f in self.fed)

    def where(self):
        return next(j["where"] for j in harness.jobs(self.a, "a1") if j["pid"] == self.pid)

    def end(self):
        self.writer.close()
        self.a.wait_for(lambda: harness.read_text(os.path.join(self.work, "status")) == "0\n",
                        WAIT_S, "the job to end")
        self.test.assertEqual(harness.read_text(self.log), self.logged() + "done\n")


class PartnerMovesTest(unittest.TestCase):
    def test_a_job_moves_to_a_partner_and_back(self):
        user = harness.user_for(self, "hwpm").pw_name
        ab, ac = harness.partnership_key("a-b.key"), harness.partnership_key("a-c.key")
        with harness.LoopCluster(1, prefix="a", settings=SETTINGS + ["cluster.name=a"],
                                 partners=[f"name=b,key_file={ab}",
                                           f"name=c,key_file={ac}"]) as a:
            a1 = a.node("a1")["address"]
            with harness.LoopCluster(2, prefix="b", settings=SETTINGS + ["cluster.name=b"],
                                     partners=[f"name=a,key_file={ab},seeds={a1}"]) as b, \
                    harness.LoopCluster(1, prefix="c", settings=SETTINGS + ["cluster.name=c"],
                                        partners=[f"name=a,key_file={ac},seeds={a1},"
                                                  f"accept=false"]) as c:
                everyone = {"a": ["a1"], "b": ["b1", "b2"], "c": ["c1"]}
                a.wait_for(lambda: harness.alive_by_cluster(a, "a1") == everyone, WAIT_S,
                           "a1 to see both partners")
                for node in ("b1", "b2"):
                    b.wait_for(lambda: harness.alive_by_cluster(b, node) == {"a": ["a1"],
                                                                     "b": ["b1", "b2"]},
                               WAIT_S, f"{node} to see cluster a")
                # b lists a's nodes in /mosix/home (their jobs may run there); c does not.
                b.wait_for(lambda: "a1" in b.run("b1", "ls", "/mosix/home").stdout.split(),
                           WAIT_S, "a1's files to be listed on b1")
                self.assertEqual(c.run("c1", "ls", "/mosix/home").stdout.split(), ["c1"])

                fed_job = FedJob(self, a, user)
                work, pid, feed, where = fed_job.work, fed_job.pid, fed_job.feed, fed_job.where

                def migrate(target):
                    return a.run("a1", "runuser", "-u", user, "--", "mosmigrate", str(pid),
                                 target, check=False)

                feed("at-home")
                moved = migrate("b1")
                self.assertEqual(moved.returncode, 0, moved.stderr)
                a.wait_for(lambda: where() == "b1", WAIT_S, "the job to run on b1")
                # mosps names the other cluster's nodes as cluster/node.
                [job] = [j for j in harness.jobs(a, "a1") if j["pid"] == pid]
                self.assertEqual((job["where"], job["where_cluster"]), ("b1", "b"))
                self.assertIn(" b/b1 ", a.run("a1", "mosps").stdout)
                # b1 takes the restored job over on its loop a moment after the move.
                b.wait_for(lambda: [(j["home"], j["home_cluster"], j["user"])
                                    for j in harness.jobs(b, "b1")] == [("a1", "a", user)],
                           WAIT_S, "b1 to list a1's job as its guest")
                self.assertIn(" a/a1 ", b.run("b1", "mosps").stdout)
                feed("on-b1")
                # Its files came through b1's homefs, from a1, with the partnership's key.
                self.assertIn("homefs: a1's files are served here", b.log("b1"))

                # Its home moves it on within b, then back.
                moved = migrate("b2")
                self.assertEqual(moved.returncode, 0, moved.stderr)
                a.wait_for(lambda: where() == "b2", WAIT_S, "the job to run on b2")
                feed("on-b2")
                moved = migrate("home")
                self.assertEqual(moved.returncode, 0, moved.stderr)
                a.wait_for(lambda: where() == "a1", WAIT_S, "the job to come home")
                feed("back")

                # c takes none of a's jobs: refused before the job is frozen, and it stays.
                refused = migrate("c1")
                self.assertNotEqual(refused.returncode, 0)
                self.assertIn("node c1 of cluster c takes no jobs of this cluster's",
                              refused.stderr)
                self.assertEqual(where(), "a1")
                feed("stayed")

                self.check_forged_homes(a, b, user, ab, work, pid)

                fed_job.end()

    def test_a_partnership_changed_at_run_time(self):
        """b's administrator changes what b shares with a while a's job runs on b1: a new
        priority for a's jobs, or a new partner c, keeps the job on b1 across b1's restart;
        blocking a (accept = false) sends it home. Its output is whole."""
        user = harness.user_for(self, "hwpc").pw_name
        ab = harness.partnership_key("a-b.key")
        with harness.LoopCluster(1, prefix="a", settings=SETTINGS + ["cluster.name=a"],
                                 partners=[f"name=b,key_file={ab}"]) as a:
            a1 = a.node("a1")["address"]
            with harness.LoopCluster(1, prefix="b", settings=SETTINGS + ["cluster.name=b"],
                                     partners=[f"name=a,key_file={ab},seeds={a1}"]) as b:
                a.wait_for(lambda: harness.alive_by_cluster(a, "a1") == {"a": ["a1"],
                                                                         "b": ["b1"]},
                           WAIT_S, "a1 to see b1")
                b.wait_for(lambda: "a1" in b.run("b1", "ls", "/mosix/home").stdout.split(),
                           WAIT_S, "a1's files to be listed on b1")
                fed_job = FedJob(self, a, user)
                pid, feed, where = fed_job.pid, fed_job.feed, fed_job.where

                feed("at-home")
                moved = a.run("a1", "runuser", "-u", user, "--", "mosmigrate", str(pid), "b1",
                              check=False)
                self.assertEqual(moved.returncode, 0, moved.stderr)
                a.wait_for(lambda: where() == "b1", WAIT_S, "the job to run on b1")
                b.wait_for(lambda: [j["home"] for j in harness.jobs(b, "b1")] == ["a1"],
                           WAIT_S, "b1 to list a1's job as its guest")
                feed("on-b1")

                config = b.node("b1")["config"]
                with open(config) as f:
                    self.assertTrue(f.read().rstrip().splitlines()[-1].startswith("seeds"),
                                    "b1's [[partner]] table is its config's last")
                # Another priority for a's jobs: b still takes them; the guest stays.
                with open(config, "a") as f:
                    f.write("priority = 50\n")
                reloaded = b.run("b1", "mosctl", "reload", check=False, timeout=180)
                self.assertEqual(reloaded.returncode, 0, reloaded.stdout + reloaded.stderr)
                self.assertIn("node b1 runs again, in cluster b", reloaded.stdout)
                self.assertNotIn("moved", reloaded.stdout)
                b.wait_for(lambda: [j["home"] for j in harness.jobs(b, "b1")] == ["a1"],
                           WAIT_S, "the restarted b1 to list a1's job again")
                self.assertEqual(where(), "b1")
                feed("stayed-on-b1")

                # A new partner c: what b shares with a is as it was; the guest stays.
                bc = harness.partnership_key("b-c.key")
                with open(config) as f:
                    text = f.read()
                with open(config, "w") as f:
                    f.write(text.replace("[[partner]]", f'[[partner]]\nname = "c"\n'
                                         f'key_file = {json.dumps(bc)}\n\n[[partner]]', 1))
                reloaded = b.run("b1", "mosctl", "reload", check=False, timeout=180)
                self.assertEqual(reloaded.returncode, 0, reloaded.stdout + reloaded.stderr)
                self.assertIn("node b1 runs again, in cluster b", reloaded.stdout)
                self.assertNotIn("moved", reloaded.stdout)
                self.assertIn("reload: node b1 shares with other partners", b.log("b1"))
                b.wait_for(lambda: [j["home"] for j in harness.jobs(b, "b1")] == ["a1"],
                           WAIT_S, "b1, restarted with partner c, to list a1's job again")
                self.assertEqual(where(), "b1")
                feed("stayed-with-c")

                # b takes no more of a's jobs: the guest goes home first.
                with open(config, "a") as f:
                    f.write("accept = false\n")
                reloaded = b.run("b1", "mosctl", "reload", check=False, timeout=180)
                self.assertEqual(reloaded.returncode, 0, reloaded.stdout + reloaded.stderr)
                self.assertRegex(reloaded.stdout, rf"moved +job {pid} \(home a1\) b1 -> a1")
                a.wait_for(lambda: where() == "a1", WAIT_S, "the job to be home")
                self.assertEqual(harness.jobs(b, "b1"), [])
                feed("home-again")

                fed_job.end()

    def check_forged_homes(self, a, b, user, key, work, pid):
        """A partnership's key speaks for its partner's nodes only: b's node, offering a1 a
        move, cannot name a1 itself, another cluster's node or an unknown node as its job's
        home (so reach their files through a1's homefs), nor bring a1's own job "back" that
        never went to b. Tried by an ordinary user holding a copy of the key."""
        copy = os.path.join(work, "stolen.key")
        with open(copy, "w") as f:
            f.write(harness.read_text(key))
        os.chmod(copy, 0o600)
        entry = __import__("pwd").getpwnam(user)
        os.chown(copy, entry.pw_uid, entry.pw_gid)
        tool = os.path.join(harness.BUILD, "tests", "forged_move")

        def offer(home, home_cluster, home_pid=4242):
            return a.run("a1", "runuser", "-u", user, "--", tool, b.node("b1")["address"],
                         a.node("a1")["address"], "4701", copy, "b", home, home_cluster,
                         str(home_pid), check=False)

        refusals = {
            ("a1", "b"): "its home a1 is a node of this cluster, and cluster 'b' speaks for "
                         "its own nodes only",
            ("c1", "b"): "its home c1 is a node of cluster 'c', and cluster 'b' speaks for its "
                         "own nodes only",
            ("b9", "b"): "its home b9 is no node that this node's gossip knows in cluster 'b'",
            ("a1", "a"): f"no job {pid} of this home runs in cluster 'b'",
            ("c1", "c"): "a job of cluster 'c' comes from its own cluster, not from 'b'",
        }
        for (home, home_cluster), why in refusals.items():
            offered = offer(home, home_cluster, pid)
            self.assertEqual(offered.returncode, 1, offered.stdout + offered.stderr)
            self.assertIn(why, offered.stdout)
        # The same offer naming one of b's own nodes is taken (the tool then hangs up): the
        # refusals above are the key's limits, not a broken offer.
        offered = offer("b2", "b")
        self.assertEqual((offered.returncode, offered.stdout), (0, "accepted\n"),
                         offered.stderr)


if __name__ == "__main__":
    harness.main()
