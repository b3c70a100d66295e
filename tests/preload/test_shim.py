#!/usr/bin/python3
"""The job shim (libmosix_preload.so) without a daemon: each workload runs as pid 2 of its
own pid, mount and UTS namespaces under a stand-in init, with the job's variables set, as
the daemon starts a job. The ids it sees must be the home's, by libc and by raw system
call alike, through fork, exec, threads and signal handlers."""

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.realpath(__file__)), "..", "system"))
import harness  # noqa: E402  (the runner: private TMPDIR, skips reported as skips)

BUILD = harness.BUILD
SHIM = os.path.join(BUILD, "preload", "libmosix_preload.so")
INIT = os.path.join(BUILD, "tests", "test_init")
PROBE = os.path.join(BUILD, "tests", "probe")
CHECK = os.path.join(BUILD, "tests", "shim_check")
STATIC = os.path.join(BUILD, "utils", "elf_info_static")

HOME = "homenode"
HOME_PID = 31337
HOME_PPID = 31000
BASE = 5 * 4194304
JOB_ENV = {
    "LD_PRELOAD": SHIM,
    "HOMEWARD_HOME": HOME,
    "HOMEWARD_HOME_PID": str(HOME_PID),
    "HOMEWARD_HOME_PPID": str(HOME_PPID),
    "HOMEWARD_PID_BASE": str(BASE),
}

# Runs in new mount and UTS namespaces: the local node's name differs from the home's,
# /data is the test's own directory; then a new pid namespace, whose pid 1 is the stand-in
# init and whose pid 2 is the workload. --kill-child ends the job if the test gives up.
NAMESPACE_SCRIPT = ('hostname localnode && mount --bind "$1" /data && shift && '
                    'exec unshare --pid --fork --kill-child --mount-proc "$@"')


def job_base(n):
    """The home id of inner pid n."""
    return BASE + n


class ShimTest(unittest.TestCase):
    def setUp(self):
        self.work = tempfile.mkdtemp(prefix="homeward-shim-")
        self.data = os.path.join(self.work, "data")
        os.mkdir(self.data)
        with open(os.path.join(self.data, "marker"), "w") as f:
            f.write("from-home\n")
        os.mkdir(os.path.join(self.work, "cwd"))
        with open(os.path.join(self.work, "cwd", "file"), "w") as f:
            f.write("x\n")

    def tearDown(self):
        shutil.rmtree(self.work, ignore_errors=True)

    def run_job(self, *command, job=True, env=None, check=True):
        """Runs `command` as pid 2 of fresh namespaces."""
        variables = dict(JOB_ENV) if job else {}
        variables.update(env or {})
        assignments = [f"{k}={v}" for k, v in variables.items()]
        argv = ["unshare", "--uts", "--mount", "sh", "-c", NAMESPACE_SCRIPT, "sh", self.data,
                INIT, "env", *assignments, *command]
        result = subprocess.run(argv, cwd=os.path.join(self.work, "cwd"), capture_output=True,
                                text=True, timeout=60)
        if check:
            self.assertEqual(result.returncode, 0, f"{command}: {result.stderr}")
        return result

    def view(self, *command, **kwargs):
        """The workload's "key=value" lines as a dict."""
        out = self.run_job(*command, **kwargs).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def test_probe_sees_home_ids_by_libc_and_raw_calls(self):
        plain = self.view(PROBE, "file", job=False)
        job = self.view(PROBE, "file")
        self.assertEqual(plain["getpid"], "2")  # The namespace works; the shim is not there.
        self.assertEqual(plain["uname.nodename"], "localnode")
        for key in ("uname.nodename", "gethostname", "syscall.uname.nodename"):
            self.assertEqual(job[key], HOME, key)
        for key in ("getpid", "gettid", "syscall.getpid", "syscall.gettid"):
            self.assertEqual(job[key], str(HOME_PID), key)
        for key in ("getppid", "syscall.getppid"):
            self.assertEqual(job[key], str(HOME_PPID), key)
        # Paths are the namespace's business: the shim leaves them as they are.
        for key in ("cwd", "realpath(file)", "marker"):
            self.assertEqual(job[key], plain[key], key)
        self.assertEqual(job["marker"], "from-home")
        self.assertEqual(job["realpath(file)"], os.path.join(self.work, "cwd", "file"))

    def test_not_a_job_leaves_the_shim_inert(self):
        view = self.view(PROBE, job=False, env={"LD_PRELOAD": SHIM})
        self.assertEqual(view["getpid"], "2")
        self.assertEqual(view["syscall.getpid"], "2")
        self.assertEqual(view["uname.nodename"], "localnode")

    def test_shell_dollar_dollar_and_children(self):
        out = self.run_job("sh", "-c", 'echo $$ $PPID; sh -c "echo \\$\\$ \\$PPID"').stdout
        first, second = out.splitlines()
        self.assertEqual(first, f"{HOME_PID} {HOME_PPID}")
        child, parent = second.split()
        self.assertEqual(int(parent), HOME_PID)
        self.assertGreater(int(child), BASE)
        self.assertLess(int(child), BASE + 4194304)

    def test_fork_vfork_spawn_and_wait_agree(self):
        view = self.view(CHECK, "fork")
        self.assertEqual(view["pid"], str(HOME_PID))
        for kind in ("fork", "vfork", "rawfork"):
            returned = int(view[f"{kind}.returned"])
            self.assertGreater(returned, BASE, kind)
            self.assertEqual(view[f"{kind}.child_getpid"], str(returned), kind)
            self.assertEqual(view[f"{kind}.waitpid"], str(returned), kind)
            self.assertEqual(view[f"{kind}.status"], "7", kind)  # Child's getppid agreed.
        self.assertEqual(view["spawn.child_pid"], view["spawn.returned"])
        self.assertEqual(view["spawn.waitpid"], view["spawn.returned"])
        self.assertEqual(view["system.status"], "3")
        for key in ("returned", "getsid", "getpgrp", "getpgid"):
            self.assertEqual(view[f"setsid.{key}"], view["setsid.child"], key)
        self.assertEqual(view["waitid.rc"], "0")
        self.assertEqual(view["waitid.si_pid"], view["waitid.returned"])

    def test_threads_get_home_tids(self):
        view = self.view(CHECK, "threads")
        self.assertEqual(view["main.gettid"], str(HOME_PID))
        self.assertEqual(view["main.syscall_gettid"], str(HOME_PID))
        tids = set()
        for i in range(4):
            tid = view[f"thread{i}.gettid"]
            self.assertEqual(view[f"thread{i}.syscall_gettid"], tid)
            self.assertEqual(view[f"thread{i}.getpid"], str(HOME_PID))
            self.assertEqual(view[f"thread{i}.syscall_getpid"], str(HOME_PID))
            self.assertGreater(int(tid), BASE)
            tids.add(tid)
        self.assertEqual(len(tids), 4)
        self.assertEqual(view["pthread_kill"], "0")
        self.assertEqual(view["tgkill"], "0")
        self.assertEqual(view["signals"], "2")

    def test_program_with_its_own_filter_and_sigsys_handler(self):
        view = self.view(CHECK, "seccomp")
        self.assertEqual(view["sigaction.reports_own"], "1")
        self.assertEqual(view["seccomp_load"], "0")
        self.assertEqual(view["own.sysinfo"], "4242")  # Its handler answered its trap.
        self.assertEqual(view["own.traps"], "1")
        self.assertEqual(view["own.syscall"], "99")  # SYS_sysinfo
        self.assertEqual(view["getpid"], str(HOME_PID))
        self.assertEqual(view["syscall.getpid"], str(HOME_PID))
        self.assertEqual(view["setpgid.errno"], "1")  # Its EPERM rule still holds.
        self.assertEqual(view["own.kills"], "1")  # A sent SIGSYS reaches its handler.
        self.assertEqual(view["blocked.usr1"], "1")  # The mask the program set holds...
        self.assertEqual(view["blocked.sigsys"], "0")  # ...but for SIGSYS.
        self.assertEqual(view["blocked.syscall_getpid"], str(HOME_PID))
        self.assertEqual(view["handler.syscall_getpid"], str(HOME_PID))

    def test_exec_with_a_cleared_environment_keeps_the_shim(self):
        view = self.view(CHECK, "exec-clean", PROBE)
        self.assertEqual(view["getpid"], str(HOME_PID))
        self.assertEqual(view["syscall.getpid"], str(HOME_PID))
        self.assertEqual(view["uname.nodename"], HOME)
        out = self.run_job(CHECK, "exec-clean", "/bin/sh", "-c", "env").stdout
        for key, value in JOB_ENV.items():
            self.assertIn(f"{key}={value}\n", out)

    def test_exec_keeps_the_programs_own_preload(self):
        out = self.run_job("sh", "-c", "LD_PRELOAD=libc.so.6 exec env").stdout
        self.assertIn(f"LD_PRELOAD={SHIM}:libc.so.6\n", out)

    def test_kill_of_the_home_pid_reaches_the_program(self):
        for how in ("libc", "raw"):
            view = self.view(CHECK, "kill-home", how)
            self.assertEqual(view["child.status"], "0", how)
            self.assertEqual(view["got"], "1", how)
        out = self.run_job("sh", "-c", f"trap 'echo got; exit 0' USR1; "
                           f"/bin/kill -USR1 {HOME_PID}; sleep 5; echo missed").stdout
        self.assertEqual(out, "got\n")

    def test_library_constructors_run_under_the_shim_after_exec(self):
        # Executed from a job, the program inherits the filter; its library's constructor
        # runs before the shim's and must still get answers, not a fatal SIGSYS.
        view = self.view("sh", "-c", f"exec {CHECK} early")
        self.assertEqual(view["early.getpid"], str(HOME_PID))
        self.assertEqual(view["early.syscall_getpid"], str(HOME_PID))
        self.assertEqual(view["early.sigaction"], "0")

    def test_static_program_is_refused_with_a_clear_message(self):
        result = self.run_job("sh", "-c", f"{STATIC}; echo status=$?", check=False)
        self.assertIn("status=126", result.stdout)
        self.assertIn(f"cannot run {STATIC} in a job: it is statically linked", result.stderr)

    def test_proc_of_a_home_id_is_the_process(self):
        out = self.run_job("sh", "-c", 'grep ^Name: /proc/$$/status; cat /proc/$PPID/comm; '
                           'test -d /proc/$$ && echo dir').stdout
        self.assertEqual(out, "Name:\tsh\ntest_init\ndir\n")

    def test_proc_listings_name_home_ids(self):
        # ls, ps and pgrep read /proc with readdir: the job's processes by their home ids,
        # which also open (/proc/<home id>/stat), and a shell's task by its home id.
        script = ('sleep 100 & echo sleep $!; echo ls $(ls /proc | grep "^[0-9]"); '
                  'echo task $(ls /proc/$$/task); echo ps $(ps -eo pid=); '
                  'echo pgrep $(pgrep -x sleep); kill $!')
        lines = dict(line.split(" ", 1) for line in self.run_job("sh", "-c", script).stdout
                     .splitlines())
        sleep = int(lines["sleep"])
        self.assertEqual(sleep, job_base(3))
        listed = {int(x) for x in lines["ls"].split()}
        self.assertTrue({HOME_PPID, HOME_PID, sleep} <= listed, lines["ls"])
        self.assertTrue(all(x in (HOME_PID, HOME_PPID) or x > BASE for x in listed), listed)
        self.assertEqual(lines["task"], str(HOME_PID))
        self.assertTrue({HOME_PPID, HOME_PID, sleep} <= {int(x) for x in lines["ps"].split()},
                        lines["ps"])
        self.assertEqual(lines["pgrep"], str(sleep))

    def test_home_ids_programs_without_a_daemon(self):
        # tests/homeview's self-checking programs (test_home_ids.py runs them as moved
        # jobs), told to check by a SIGUSR1 from outside the job: its sender, outside the
        # job's pid namespace, is 0 there.
        for name in ("fork", "siginfo", "lock", "proc", "cred", "raw"):
            with self.subTest(name):
                program = os.path.join(BUILD, "tests", "homeview", f"ids_{name}")
                assignments = [f"{k}={v}" for k, v in JOB_ENV.items()]
                argv = ["unshare", "--uts", "--mount", "sh", "-c", NAMESPACE_SCRIPT, "sh",
                        self.data, INIT, "env", *assignments, "IDS_GO_FROM_OUTSIDE=1", program]
                job = subprocess.Popen(argv, cwd=os.path.join(self.work, "cwd"),
                                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                try:
                    ready = job.stdout.readline()
                    if ready != f"ready {HOME_PID}\n":
                        job.kill()
                        self.fail(f"ids_{name} said {ready!r}: {job.communicate()[1]}")
                    os.kill(self.namespace_pid_2(job.pid, program), signal.SIGUSR1)
                    out, err = job.communicate(timeout=60)
                finally:
                    if job.poll() is None:
                        job.kill()
                        job.wait()
                self.assertEqual((out, job.returncode), ("check 1 ok\n", 0), err)

    @staticmethod
    def namespace_pid_2(ancestor, program):
        """The host pid of `program`, pid 2 of a pid namespace below `ancestor`."""
        parents, found = {}, []
        for entry in filter(str.isdigit, os.listdir("/proc")):
            try:
                with open(f"/proc/{entry}/status") as f:
                    fields = dict(line.split(":", 1) for line in f if ":" in line)
                with open(f"/proc/{entry}/cmdline") as f:
                    command = f.read().split("\0")[0]
            except (OSError, ValueError):
                continue
            parents[int(entry)] = int(fields["PPid"])
            if command == program and fields["NSpid"].split()[-1] == "2":
                found.append(int(entry))
        for pid in found:
            at = pid
            while at in parents and at != ancestor:
                at = parents[at]
            if at == ancestor:
                return pid
        raise AssertionError(f"no pid 2 running {program} below {ancestor}")

    def test_python_and_its_subprocesses(self):
        script = ("import os, subprocess\n"
                  "print(os.getpid(), os.getppid())\n"
                  "print(subprocess.run(['sh', '-c', 'echo $PPID'], capture_output=True,"
                  " text=True).stdout.strip())\n")
        out = self.run_job(sys.executable, "-c", script).stdout
        self.assertEqual(out, f"{HOME_PID} {HOME_PPID}\n{HOME_PID}\n")


if __name__ == "__main__":
    if os.geteuid() != 0:
        print("skipped: the shim's tests make pid namespaces and need root")
        sys.exit(77)
    for path in (SHIM, INIT, PROBE, CHECK, STATIC):
        if not os.path.exists(path):
            sys.exit(f"missing {path}: build first (meson compile)")
    harness.run_tests()
