#!/usr/bin/python3
"""A job checkpointed with a terminal and restarted from its checkpoint (`mosrun -R`) on a
terminal gets its terminal back. An ordinary user's interactive bash, on a real terminal (a
pty this test holds the master of), runs `mosrun -C ck python3 probe.py`; the job is
checkpointed, then its mosrun is killed outright (the job ends with it). After `stty sane`
and a change of the window's size, `mosrun -R ck` restarts it: the restarted job has a
terminal on its stdin and stdout again, of the new size, as its controlling terminal
(/dev/tty opens), answers what is typed, ^C interrupts it (its terminal's line discipline
signals its foreground group), ^Z stops it and `fg` continues it, and it ends with its own
status and the user's modes as they were before."""

import os
import pwd

import harness
from test_pty import JOB as PROBE  # answers one command per line read from its terminal
from test_pty import Terminal, open_shell  # noqa: F401 (Terminal: open_shell's type)


class PtyRestartTest(harness.UserClusterTest):
    user_prefix = "hwptr"
    cluster_nodes = 1

    def modes(self, term, tag):
        """The terminal's modes (`stty -g`) as a command of the shell sees them."""
        term.send(f'echo "MODES $(stty -g) END$(({tag}+1))"\r')
        return term.expect(rf"MODES (\S+) END{tag + 1}").group(1)

    def user_jobs(self):
        return [j for j in harness.jobs(self.c) if j["user"] == self.user]

    def test_restart_from_a_checkpoint_on_a_terminal(self):
        c = self.c
        work = os.path.join(c.node("node1")["data"], "ptr")
        os.makedirs(work)
        entry = pwd.getpwnam(self.user)
        os.chown(work, entry.pw_uid, entry.pw_gid)
        with open(os.path.join(work, "probe.py"), "w") as f:
            f.write(PROBE)

        term = open_shell(self, self.user)
        term.send("cd /data/ptr\r")
        term.expect(r"hwsh\$ ")
        term.send("mosrun -C ck python3 probe.py\r")
        term.expect(r"READY\r\n")
        jobs = self.user_jobs()
        self.assertEqual(len(jobs), 1, jobs)
        pid = jobs[0]["pid"]
        c.wait_for(lambda: c.run("node1", "mosmigrate", str(pid), "checkpoint",
                                 check=False).returncode == 0, 60, "a checkpoint")
        # mosrun killed outright: the job ends with it, and the terminal stays raw.
        c.run("node1", "kill", "-9", str(pid))
        term.expect(r"hwsh\$ ")
        term.send("stty sane\r")
        term.expect(r"hwsh\$ ")
        c.wait_for(lambda: not self.user_jobs(), 60, "the killed job to end")
        before = self.modes(term, 1)

        # Restarted on a terminal of another size: its terminal, of that size.
        term.set_size(35, 110)
        term.send("mosrun -R ck\r")
        term.expect(r"job restarted from checkpoint 1 of /data/ptr/ck")
        term.send("check\r")
        term.expect(r"CHECK tty=TrueTrue name=/dev/pts/0 size=35x110 ")
        # ^C reaches it through its terminal's line discipline.
        # Its controlling terminal too (CRIU patch 0005: restored, not only its init).
        term.send("devtty\r")
        term.expect(r"DEVTTY opens\r\n")
        term.send("sleep\r")
        term.expect(r"SLEEPING\r\n")
        term.send("\x03")
        term.expect(r"INTERRUPTED\r\n")
        # ^Z stops it and mosrun with it; fg continues both.
        term.send("\x1a")
        term.expect(r"Stopped\s+mosrun -R ck")
        term.expect(r"hwsh\$ ")
        self.assertEqual(self.modes(term, 2), before)
        term.send("fg\r")
        term.expect(r"mosrun -R ck\r\n")
        term.send("check\r")
        term.expect(r"CHECK tty=TrueTrue name=/dev/pts/0 size=35x110 ")
        # Its end: its own status, and the user's modes as before.
        term.send("exit\r")
        term.expect(r"hwsh\$ ")
        term.send('echo "STATUS $? END$((3+1))"\r')
        term.expect(r"STATUS 3 END4")
        self.assertEqual(self.modes(term, 5), before)
        term.send("exit\r")


if __name__ == "__main__":
    harness.main()
