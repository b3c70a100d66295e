#!/usr/bin/python3
"""An interactive job keeps its controlling terminal across a move. An ordinary user's
interactive bash, on a real terminal (a pty this test holds the master of):

- runs `mosrun -r node2 python3 probe.py`, moved node2 -> node3 -> home, frozen and
  continued: after each restore ^C interrupts the program (SIGINT to its terminal's
  foreground group), a new window size reaches it (SIGWINCH), and the program (restored by
  CRIU, not its session's leader) still opens /dev/tty, finds its group in the foreground
  and takes the foreground with tcsetpgrp, as before the move (stock CRIU 4.1.1: ENXIO);
- runs `mosrun -r node2 bash -i`, which starts `cat` and stops it with ^Z before the job
  is moved to node3, home, frozen and continued: after each restore the restored bash
  opens /dev/tty, `fg` gives the terminal back to the restored cat (it reads what is
  typed) and ^Z stops it again; a last `fg` continues it to its end of input.
A restart from a checkpoint on a terminal (`mosrun -R`) is test_pty_restart's."""

import os
import pwd

import harness
from test_pty import open_shell, terminal_state

# Answers one command per line read from its terminal.
PROBE = r"""
import os, signal, sys, time
winches = []
signal.signal(signal.SIGWINCH, lambda *_: winches.append(1))
print("READY", flush=True)
while True:
    line = sys.stdin.readline()
    if not line:
        sys.exit(4)
    command = line.strip()
    if command == "sleep":
        # SIGINT blocked from before the line is out until it is waited for: a ^C that
        # comes before the wait stays pending. (A handler run between the print and the
        # sleep's system call, as on a busy machine, would leave time.sleep asleep.)
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        print("SLEEPING", flush=True)
        got = signal.sigtimedwait({signal.SIGINT}, 120)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
        print("INTERRUPTED" if got else "SLEPT", flush=True)
    elif command == "devtty":
        try:
            # The controlling terminal: its foreground group is this one's, and taking it
            # (tcsetpgrp) works only on one's controlling terminal.
            fd = os.open("/dev/tty", os.O_RDWR)
            foreground = os.tcgetpgrp(fd) == os.getpgrp()
            os.tcsetpgrp(fd, os.getpgrp())
            os.close(fd)
            print(f"DEVTTY {os.ttyname(0)} foreground={foreground}", flush=True)
        except OSError as e:
            print(f"DEVTTY {e.strerror}", flush=True)
    elif command == "size":
        cols, rows = os.get_terminal_size(0)
        print(f"SIZE {rows}x{cols} tty={os.isatty(0)}{os.isatty(1)} winch={len(winches)}",
              flush=True)
    elif command == "exit":
        sys.exit(3)
"""


class PtyMovedTest(harness.UserClusterTest):
    user_prefix = "hwptm"
    cluster_nodes = 3
    cluster_settings = ("gossip.interval_ms=200", "balance.automatic=false")

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        c = cls.cluster
        for node in ("node2", "node3"):
            c.wait_for(lambda: c.run(node, "test", "-d", "/mosix/home/node1/data",
                                     check=False).returncode == 0,
                       30, f"{node} to mount node1's files")
        cls.work = os.path.join(c.node("node1")["data"], "ptm")
        os.makedirs(cls.work)
        entry = pwd.getpwnam(cls.user)
        os.chown(cls.work, entry.pw_uid, entry.pw_gid)
        with open(os.path.join(cls.work, "probe.py"), "w") as f:
            f.write(PROBE)

    def shell(self):
        """An interactive bash of the user on node1 in /data/ptm, on a new terminal."""
        term = open_shell(self, self.user)
        term.send("cd /data/ptm\r")
        term.expect(r"hwsh\$ ")
        return term

    def job(self):
        """The user's one job, as the home lists it."""
        jobs = [j for j in harness.jobs(self.c) if j["user"] == self.user]
        self.assertEqual(len(jobs), 1, jobs)
        return jobs[0]

    def move(self, target, now):
        moved = self.c.run("node1", "mosmigrate", str(self.job()["pid"]), target, check=False)
        self.assertEqual(moved.returncode, 0, moved.stderr)
        self.assertIn(f"now runs on {now}", moved.stdout)
        self.assertEqual(self.job()["where"], now)

    def freeze(self):
        """Freezes the job to disk at home and continues it."""
        pid = str(self.job()["pid"])
        self.assertIn("frozen", self.c.run("node1", "mosmigrate", pid, "freeze").stdout)
        moved = self.c.run("node1", "mosmigrate", pid, "continue", check=False)
        self.assertEqual(moved.returncode, 0, moved.stderr)

    def status(self, term, code, tag):
        term.expect(r"hwsh\$ ")
        term.send(f'echo "STATUS $? END$(({tag}+1))"\r')
        term.expect(rf"STATUS {code} END{tag + 1}")

    def test_program_keeps_its_controlling_terminal_across_a_move(self):
        term = self.shell()
        term.send("mosrun -r node2 python3 probe.py\r")
        term.expect(r"READY\r\n")
        self.assertEqual(self.job()["where"], "node2")

        winches = 0

        def after_restore():
            # ^C: SIGINT from the line discipline to the foreground group. Before the
            # program takes the foreground itself (devtty), so that a foreground group
            # the restore got wrong shows.
            term.send("sleep\r")
            term.expect(r"SLEEPING\r\n")
            term.send("\x03")
            try:
                term.expect(r"INTERRUPTED\r\n")
            except AssertionError as e:
                raise AssertionError(f"{e}\nthe user's processes:\n{terminal_state(self.user)}")
            # A new window size: SIGWINCH, and the size.
            nonlocal winches
            winches += 1
            term.set_size(30 + winches, 100 + winches)
            term.send("size\r")
            term.expect(rf"SIZE {30 + winches}x{100 + winches} tty=TrueTrue "
                        rf"winch={winches}\r\n")
            term.send("devtty\r")
            term.expect(r"DEVTTY /dev/pts/0 foreground=True\r\n", timeout=30)

        after_restore()
        # Moved, brought home, frozen to disk and continued: the same after each restore.
        self.move("node3", "node3")
        after_restore()
        self.move("home", "node1")
        after_restore()
        self.freeze()
        after_restore()
        term.send("exit\r")
        self.status(term, 3, 1)
        term.send("exit\r")

    def test_shell_keeps_job_control_across_moves(self):
        term = self.shell()
        term.send("PS1='in$ ' mosrun -r node2 bash --norc --noprofile -i\r")
        term.expect(r"\r\nin\$ ")
        self.assertEqual(self.job()["where"], "node2")
        # A command started before the move, stopped by ^Z.
        term.send("cat\r")
        term.expect(r"cat\r\n")
        term.send("one\r")
        term.expect(r"one\r\none\r\n")
        term.send("\x1a")
        term.expect(r"Stopped\s+cat")
        term.expect(r"in\$ ")

        # After each restore (moved to node3, brought home, frozen and continued) the
        # restored shell has its controlling terminal and gives it to the restored cat
        # (fg), takes it back (^Z) and gives it again.
        for tag, restore in enumerate((lambda: self.move("node3", "node3"),
                                       lambda: self.move("home", "node1"), self.freeze),
                                      start=40):
            restore()
            term.send(f'exec 3<>/dev/tty && echo "DEVTTY $(({tag}+2))"; exec 3>&-\r')
            term.expect(rf"DEVTTY {tag + 2}\r\n")
            term.expect(r"in\$ ")
            term.send(f'echo "TTY $(tty) $(({tag}+3))"\r')
            term.expect(rf"TTY /dev/pts/0 {tag + 3}\r\n")
            term.expect(r"in\$ ")
            term.send("fg\r")
            term.expect(r"\bcat\r\n")
            term.send(f"line{tag}\r")
            term.expect(rf"line{tag}\r\nline{tag}\r\n")
            term.send("\x1a")
            term.expect(r"Stopped\s+cat")
            term.expect(r"in\$ ")
        term.send("fg\r")
        term.expect(r"\bcat\r\n")
        term.send("three\r")
        term.expect(r"three\r\nthree\r\n")
        term.send("\x04")  # ^D: cat's end of input
        term.expect(r"in\$ ")
        term.send("exit 5\r")
        self.status(term, 5, 2)
        term.send("exit\r")


if __name__ == "__main__":
    harness.main()
