#!/usr/bin/python3
"""A guest frozen past its home's grace survives a restart of its own node's daemon.

A job of an ordinary user (created here, removed afterwards) runs away from home (mosrun
-r node2), writing a line a second to its stdout and to a file at home. The link between
node1 (home) and node2 is cut (iptables, as in test_cutlink.py) for longer than
`[recovery] home_grace_s`: node2 freezes the guest to its disk, journaled. node2's daemon
is then SIGKILLed while the guest is frozen and started again, still cut off: it takes the
frozen guest back from its journal. When the link returns, the guest is continued and
attaches to its home again; its output is byte for byte that of a run never faulted, its
exit status arrives, and node2 keeps nothing of it (no journal entry, no image directory,
no process)."""

import json
import os
import unittest

import harness
import test_cutlink
from test_cutlink import Cut

read = harness.read_text



# Its setUp (iptables, a throwaway user) and helpers; the class itself is not bound here,
# so that its own cases are not run again.
class FrozenRestartTest(test_cutlink.CutLinkTest):
    def frozen_restart(self, go_home):
        with self.grace_cluster(go_home) as c:
            expected, work = self.guest_writing_lines(c)
            state = c.node("node2")["state"]
            cut = Cut(c.node("node1")["address"], c.node("node2")["address"])
            try:
                cut.cut()
                c.wait_for(lambda: "frozen to" in c.log("node2"), 120, "the guest's freeze")
                frozen = [d for d in os.listdir(os.path.join(state, "frozen"))
                          if d.startswith("guest-node1-")]
                self.assertEqual(len(frozen), 1, frozen)
                # The freeze is journaled: the entry names the images and the plan.
                entries = [e for e in os.listdir(os.path.join(state, "jobs"))
                           if e.startswith("guest-node1-")]
                self.assertEqual(len(entries), 1, entries)
                entry = read(os.path.join(state, "jobs", entries[0]))
                self.assertIn("frozen ", entry)
                self.assertEqual("frozen_plan home" in entry, go_home)
                self.assertTrue(os.path.exists(
                    os.path.join(state, "frozen", frozen[0], "pending-output")))
                # node2's daemon dies while the guest is frozen, and comes back cut off.
                c.kill("node2")
                c.start("node2")
                c.wait_for(lambda: "taken back after a restart: frozen to" in c.log("node2"),
                           60, "the restarted daemon to take the frozen guest back")
                self.assertEqual(os.listdir(os.path.join(state, "frozen")), frozen)
            finally:
                cut.restore()
            c.wait_for(lambda: "asking its home node1 to take it back" in c.log("node2"), 120,
                       "the guest to continue")
            if go_home:
                c.wait_for(lambda: "sent home to node1" in c.log("node2"), 120,
                           "the guest to be sent home")
            status, out, err, lines = self.finish(c, work, 240)
            self.assertEqual(err, "")
            self.assertEqual(status, "0")
            self.assertEqual(out, expected)
            self.assertEqual(lines, expected)
            # Nothing left behind on node2.
            c.wait_for(lambda: json.loads(c.run("node2", "mosps", "--json").stdout)["jobs"]
                       == [], 30, "node2 to list no job")
            self.assertEqual(os.listdir(os.path.join(state, "frozen")), [])
            self.assertEqual([e for e in os.listdir(os.path.join(state, "jobs"))
                              if e.startswith("guest-")], [])
            left = c.run("node2", "pgrep", "-u", self.user, check=False)
            self.assertEqual(left.stdout, "")
            self.assertEqual(c.zombies("node2"), [])

    def test_a_frozen_guest_survives_its_daemons_restart(self):
        self.frozen_restart(go_home=False)

    def test_a_frozen_guest_taken_back_after_a_restart_is_sent_home_when_so_set(self):
        self.frozen_restart(go_home=True)


# The cases of test_cutlink.py run there, not again here.
for name in [n for n in dir(test_cutlink.CutLinkTest) if n.startswith("test_")]:
    setattr(FrozenRestartTest, name, None)

if __name__ == "__main__":
    harness.main()
