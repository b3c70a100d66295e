#!/usr/bin/python3
"""Interactive jobs get a pseudo-terminal. An ordinary user's interactive bash, on a real
terminal (a pty this test holds the master of), runs `mosrun -r node2 python3 job.py`: the
job sees a terminal on its stdin and stdout (isatty, `test -t 0`, `tty`, /dev/tty) with the
user's window size, and a change of the window's size reaches it (SIGWINCH, `stty size`); it
keeps its terminal while it is moved node2 -> node3 -> home, frozen and continued; ^C
interrupts it, ^Z stops it and the shell reports mosrun stopped, `bg` and `fg` continue it;
it ends with its own status, and the user's terminal modes afterwards (and while it is
stopped) are those it had before. ^\ quits another job, and its mosrun dies of SIGQUIT as
the job did; a job whose mosrun's stdout is a pipe keeps pipes. An interactive bash as the job
starts in its terminal's foreground, and ^C interrupts its command. And an interactive job keeps its terminal
through a restart of its home's daemon (killed outright)."""

import fcntl
import os
import pty
import pwd
import re
import select
import signal
import struct
import termios
import time

import harness

# The job: answers one command per line read from its terminal.
JOB = r"""
import os, signal, subprocess, sys, time
winches = []
signal.signal(signal.SIGWINCH, lambda *_: winches.append(1))
def check():
    cols, rows = os.get_terminal_size(0)
    # The shell's stdout is a pipe here, its stdin the job's terminal.
    shell = subprocess.run(["sh", "-c", "test -t 0 && tty && stty size"],
                           capture_output=True, text=True).stdout.split("\n") + ["", ""]
    print(f"CHECK tty={os.isatty(0)}{os.isatty(1)} name={os.ttyname(0)} size={rows}x{cols} "
          f"winch={len(winches)} shell={shell[0]}:{shell[1]}", flush=True)
print("READY", flush=True)
while True:
    line = sys.stdin.readline()
    if not line:
        print("EOF", flush=True)
        sys.exit(4)
    command = line.strip()
    if command == "check":
        check()
    elif command == "sleep":
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
            os.close(os.open("/dev/tty", os.O_RDWR))
            print("DEVTTY opens", flush=True)
        except OSError as e:
            print(f"DEVTTY {e.strerror}", flush=True)
    elif command == "exit":
        sys.exit(3)
"""


class Terminal:
    """The test's side of a pty: what was written to it, searched from where the last
    match ended."""

    def __init__(self, fd):
        self.fd = fd
        self.seen = b""
        self.at = 0

    def send(self, text):
        os.write(self.fd, text.encode())

    def expect(self, pattern, timeout=60):
        regex = re.compile(pattern.encode())
        deadline = time.monotonic() + timeout
        while True:
            match = regex.search(self.seen, self.at)
            if match:
                self.at = match.end()
                return match
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"timed out waiting for {pattern!r} on the terminal; "
                                     f"it showed:\n{self.seen[self.at:].decode(errors='replace')}")
            ready, _, _ = select.select([self.fd], [], [], left)
            if ready:
                try:
                    chunk = os.read(self.fd, 65536)
                except OSError:  # EIO: every process of the terminal's session is gone
                    chunk = b""
                if not chunk:
                    raise AssertionError(f"the terminal closed while waiting for {pattern!r}:\n"
                                         f"{self.seen[self.at:].decode(errors='replace')}")
                self.seen += chunk

    def set_size(self, rows, cols):
        fcntl.ioctl(self.fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


def open_shell(test, user):
    """An interactive bash of `user` on node1 of `test.c`, on a new terminal; hung up and
    reaped after the test whatever happens."""
    env = dict(harness.LoopCluster.env(), PS1="hwsh$ ", TERM="dumb",
               HOMEWARD_DAEMON_WAIT_S="60")
    pid, fd = pty.fork()
    if pid == 0:
        try:
            os.execve(harness.LOOPCLUSTER,
                      [harness.LOOPCLUSTER, "exec", test.c.dir, "node1", "--", "runuser",
                       "-u", user, "--", "bash", "--norc", "--noprofile", "-i"], env)
        finally:
            os._exit(127)

    def cleanup():
        os.close(fd)  # hangs the terminal up
        for _ in range(50):
            done, _ = os.waitpid(pid, os.WNOHANG)
            if done:
                return
            time.sleep(0.1)  # the session's processes take SIGHUP and end
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)

    test.addCleanup(cleanup)
    term = Terminal(fd)
    term.set_size(30, 100)
    term.expect(r"hwsh\$ ")
    return term


def terminal_state(user):
    """What the kernel says of `user`'s processes (and their parents: a job's init is
    root's) and their terminals, for a failure's message: state, group, session,
    controlling terminal and its foreground group (/proc's stat), signal masks, and whether
    the terminal on stdin has ISIG."""
    uid = pwd.getpwnam(user).pw_uid
    procs = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/cmdline", "rb") as f:
                command = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
            with open(f"/proc/{name}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{name}/status") as f:
                status = {k: v.strip() for k, _, v in (l.partition(":") for l in f)}
            procs[int(name)] = (os.stat(f"/proc/{name}").st_uid, command, fields, status)
        except OSError:
            continue
    chosen = {pid for pid, (owner, _, _, _) in procs.items() if owner == uid}
    chosen |= {int(procs[pid][2][1]) for pid in chosen} & procs.keys()
    lines = []
    for pid in sorted(chosen):
        _, command, fields, status = procs[pid]
        line = (f"{pid} [{command[:50]}] state={fields[0]} ppid={fields[1]} pgrp={fields[2]} "
                f"sid={fields[3]} tty_nr={fields[4]} tpgid={fields[5]} "
                f"nspid={status.get('NSpid')} nspgid={status.get('NSpgid')} "
                f"blk={status.get('SigBlk')} ign={status.get('SigIgn')} "
                f"cgt={status.get('SigCgt')} pnd={status.get('SigPnd')}/{status.get('ShdPnd')}")
        try:
            fd = os.open(f"/proc/{pid}/fd/0", os.O_RDONLY | os.O_NOCTTY | os.O_NONBLOCK)
            try:
                lflag = termios.tcgetattr(fd)[3]
                line += f" stdin={os.readlink(f'/proc/{pid}/fd/0')} isig={bool(lflag & termios.ISIG)}"
            finally:
                os.close(fd)
        except (OSError, termios.error):
            pass
        lines.append(line)
    return "\n".join(lines)

def in_foreground(user, command):
    """Whether a process of `user` running `command` is in its controlling terminal's
    foreground process group (/proc's stat: its group is the terminal's)."""
    uid = pwd.getpwnam(user).pw_uid
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            if os.stat(f"/proc/{name}").st_uid != uid:
                continue
            with open(f"/proc/{name}/cmdline", "rb") as f:
                if f.read().replace(b"\0", b" ").decode(errors="replace").strip() != command:
                    continue
            with open(f"/proc/{name}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[2] == fields[5]:  # pgrp, tpgid
            return True
    return False


class PtyTest(harness.UserClusterTest):
    user_prefix = "hwpty"
    cluster_nodes = 3
    cluster_settings = ("gossip.interval_ms=200", "balance.automatic=false")

    def shell(self):
        return open_shell(self, self.user)

    def exits_with_3(self, term, before):
        """Ends the job (it exits 3 on `exit`): its status reaches the shell, and the
        user's terminal modes are those of `before`."""
        term.send("exit\r")
        term.expect(r"hwsh\$ ")
        term.send('echo "STATUS $? END$((3+1))"\r')
        term.expect(r"STATUS 3 END4")
        self.assertEqual(self.modes(term, 5), before)

    def modes(self, term, tag):
        """The terminal's modes (`stty -g`) as a command of the shell sees them."""
        term.send(f'echo "MODES $(stty -g) END$(({tag}+1))"\r')
        return term.expect(rf"MODES (\S+) END{tag + 1}").group(1)

    def where(self):
        """Where the user's job runs, as the home lists it; and its home pid."""
        jobs = [j for j in harness.jobs(self.c) if j["user"] == self.user]
        self.assertEqual(len(jobs), 1, jobs)
        return jobs[0]["where"], jobs[0]["pid"]

    def check(self, term, winches):
        term.send("check\r")
        match = term.expect(r"CHECK (.*)\r\n")
        self.assertEqual(match.group(1).decode(),
                         f"tty=TrueTrue name=/dev/pts/0 size=40x120 winch={winches} "
                         f"shell=/dev/pts/0:40 120")

    def test_interactive_job_keeps_its_terminal(self):
        c = self.c
        for node in ("node2", "node3"):
            c.wait_for(lambda: c.run(node, "test", "-d", "/mosix/home/node1/data",
                                     check=False).returncode == 0,
                       30, f"{node} to mount node1's files")
        work = os.path.join(c.node("node1")["data"], "pty")
        os.makedirs(work)
        entry = pwd.getpwnam(self.user)
        os.chown(work, entry.pw_uid, entry.pw_gid)
        with open(os.path.join(work, "job.py"), "w") as f:
            f.write(JOB)

        term = self.shell()
        term.send("cd /data/pty\r")
        before = self.modes(term, 1)

        term.send("mosrun -r node2 python3 job.py\r")
        term.expect(r"READY\r\n")
        self.assertEqual(self.where()[0], "node2")

        # The window grows: the job hears SIGWINCH and sees the new size.
        term.set_size(40, 120)
        self.check(term, 1)
        # Its controlling terminal, before any move.
        term.send("devtty\r")
        term.expect(r"DEVTTY opens\r\n")

        # Moved while interactive, it keeps its terminal (the same one, the same size).
        _, pid = self.where()
        for target, now in (("node3", "node3"), ("home", "node1")):
            moved = c.run("node1", "mosmigrate", str(pid), target, check=False)
            self.assertEqual(moved.returncode, 0, moved.stderr)
            self.assertIn(f"now runs on {now}", moved.stdout)
            self.assertEqual(self.where()[0], now)
            self.check(term, 1)
        # Frozen to disk at home and continued: the same.
        frozen = c.run("node1", "mosmigrate", str(pid), "freeze")
        self.assertIn("frozen", frozen.stdout)
        moved = c.run("node1", "mosmigrate", str(pid), "continue", check=False)
        self.assertEqual(moved.returncode, 0, moved.stderr)
        self.check(term, 1)

        # ^C reaches the job through its terminal's line discipline.
        term.send("sleep\r")
        term.expect(r"SLEEPING\r\n")
        term.send("\x03")
        try:
            term.expect(r"INTERRUPTED\r\n")
        except AssertionError as e:
            raise AssertionError(f"{e}\nthe user's processes:\n{terminal_state(self.user)}")

        # ^Z stops the job, and mosrun with it: the shell has its terminal back, as it was.
        term.send("\x1a")
        term.expect(r"Stopped\s+mosrun -r node2 python3 job\.py")
        term.expect(r"hwsh\$ ")
        self.assertEqual(self.modes(term, 2), before)
        # bg: it runs on in the background (the job waits for input, which mosrun does not
        # take from the terminal while it is not in the foreground); fg gives it the
        # terminal again.
        term.send("bg\r")
        term.expect(r"mosrun -r node2 python3 job\.py &")
        term.send("fg\r")
        term.expect(r"mosrun -r node2 python3 job\.py\r\n")
        self.check(term, 1)

        # Its end: its status, and the user's terminal as it was before.
        self.exits_with_3(term, before)

        # ^\ quits a job as at home: SIGQUIT, of which mosrun then dies too.
        term.send("""mosrun -r node3 python3 -c "import time; print('WAIT' + 'ING', flush=True); """
                  """time.sleep(120)"\r""")
        term.expect(r"WAITING\r\n")
        term.send("\x1c")
        term.expect(r"hwsh\$ ")
        term.send('echo "STATUS $? END$((6+1))"\r')
        term.expect(r"STATUS 131 END7")
        self.assertEqual(self.modes(term, 8), before)

        # Not both stdin and stdout on the terminal: pipes, as before.
        term.send("mosrun -r node2 sh -c 'test -t 0 || test -t 1 || echo PI''PES' | cat\r")
        term.expect(r"PIPES\r\n")
        term.expect(r"hwsh\$ ")  # mosrun reads its stdin until it exits: type nothing before
        self.assertEqual(self.modes(term, 9), before)

        # mosrun in a session of its own (the terminal is not its controlling terminal, so
        # no job control applies): the job has a terminal all the same.
        term.send("setsid -w mosrun -r node2 python3 job.py\r")
        term.expect(r"READY\r\n")
        self.check(term, 0)
        term.send("exit\r")
        term.expect(r"hwsh\$ ")
        self.assertEqual(self.modes(term, 10), before)
        self.assertEqual([j for j in harness.jobs(c) if j["user"] == self.user], [])
        term.send("exit\r")

    def test_interactive_shell_as_the_job(self):
        # An interactive bash as the job, on node2: it finds its process group in its
        # terminal's foreground (in home ids, as getpgrp gives them: else it would take
        # itself for a background job and stop), runs commands, and ^C interrupts its
        # foreground command, not the shell.
        term = self.shell()
        before = self.modes(term, 1)
        term.send("PS1='in$ ' mosrun -r node2 bash --norc --noprofile -i\r")
        term.expect(r"\r\nin\$ ")
        self.assertEqual(self.where()[0], "node2")
        term.send('test -t 0 && echo "TTY $(tty) $((40+2))"\r')
        term.expect(r"TTY /dev/pts/0 42\r\n")
        term.expect(r"in\$ ")
        term.send("sleep 100\r")
        term.expect(r"sleep 100\r\n")
        # The echo of the line comes before bash has started the command and given it the
        # terminal: a ^C before then is bash's (which ignores it while it starts a job), and
        # the sleep runs on. ^C once the sleep is its terminal's foreground.
        self.c.wait_for(lambda: in_foreground(self.user, "sleep 100"), 30,
                        "the sleep to be its terminal's foreground")
        term.send("\x03")
        try:
            term.expect(r"in\$ ")
        except AssertionError as e:
            raise AssertionError(f"{e}\nthe user's processes:\n{terminal_state(self.user)}")
        term.send("exit 5\r")
        term.expect(r"hwsh\$ ")
        term.send('echo "STATUS $? END$((6+1))"\r')
        term.expect(r"STATUS 5 END7")
        self.assertEqual(self.modes(term, 8), before)
        term.send("exit\r")

    def test_job_keeps_its_terminal_through_a_restart_of_its_daemon(self):
        # The home's daemon killed outright while an interactive job runs at home: mosrun
        # waits for the next one, and the job's terminal goes on where it was (the terminal
        # stream is relayed from the same offsets as any job's output and input).
        c = self.c
        term = self.shell()
        term.send("cd /data/pty\r")
        before = self.modes(term, 1)
        term.send("mosrun python3 job.py\r")
        term.expect(r"READY\r\n")
        term.set_size(40, 120)
        self.check(term, 1)
        _, pid = self.where()
        c.kill("node1")
        term.expect(r"mosrun: waiting for the node daemon to return")
        c.start("node1")
        c.wait_for(lambda: f"job {pid}: its mosrun is back" in c.log("node1"), 60,
                   "mosrun to take its job back")
        self.check(term, 1)
        self.exits_with_3(term, before)
        term.send("exit\r")


if __name__ == "__main__":
    harness.main()
