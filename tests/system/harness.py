"""Whole-system test harness: loopback clusters that clean up after themselves.

Every test gets a fresh cluster from scripts/loopcluster and tears it down whether it
passed or not, then checks that no process, mount or cgroup of the cluster is left.

Each test program has a private temporary directory (TMPDIR, and Python's tempfile, point
into it, for the test and for every command it runs on a node); it is removed when the
program ends, pass or fail. A program whose tests were all skipped exits 77, which meson
counts as skipped; skips among tests that ran are listed at the end of its log.
"""

import atexit
import importlib.machinery
import importlib.util
import json
import os
import pwd
import re
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import unittest
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.realpath(__file__))))
LOOPCLUSTER = os.path.join(ROOT, "scripts", "loopcluster")
# The same script as a module, for `exec` without a process of its own (LoopCluster.run).
_loopcluster = importlib.util.module_from_spec(importlib.util.spec_from_loader(
    "loopcluster", importlib.machinery.SourceFileLoader("loopcluster", LOOPCLUSTER)))
_loopcluster.__loader__.exec_module(_loopcluster)
BUILD = os.environ.get("HOMEWARD_BUILD") or os.path.join(ROOT, "build")
SKIP = 77  # meson's exit code for a skipped test

# The tests, their nodes and their jobs (ordinary users' too) run the system's programs,
# as on a bare Debian machine: a python3 wrapper of the caller's (pyenv's shims) first on
# PATH would cost half a second a start, and other users may not run it at all.
os.environ["PATH"] = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def host_mounts():
    with open("/proc/self/mountinfo") as f:
        return sorted(line.split()[4] for line in f)


class LoopCluster:
    """A running loopback cluster: `with LoopCluster(3) as c: c.run("node1", "hostname")`."""

    def __init__(self, nodes, cpuset=False, settings=(), memory_mb=None, faults=None,
                 clock_skew=None, prefix="node", partners=(), first_cpu=0, clusters=1,
                 installed=None):
        """`faults`: the daemons' fault points (HOMEWARD_FAULT), for failure tests;
        `clock_skew`: node i's clocks are i*clock_skew seconds ahead (loopcluster);
        `partners`: [[partner]] tables as loopcluster's --partner takes them;
        `first_cpu`: with `cpuset`, the first node's core;
        `clusters`: that many partner clusters c1, c2, ... of `nodes` nodes each;
        `installed`: run the programs installed under this prefix, not the build's."""
        self.nodes = [f"{prefix}{i}" for i in range(1, nodes * clusters + 1)]
        self.clusters = clusters
        self.prefix = prefix
        self.partners = list(partners)
        self.clock_skew = clock_skew
        self.faults = faults
        self.cpuset = cpuset
        self.first_cpu = first_cpu
        self.memory_mb = memory_mb
        self.settings = list(settings)
        self.installed = installed
        self.dir = None

    def __enter__(self):
        self.mounts_before = host_mounts()
        self.dir = tempfile.mkdtemp(prefix="cluster-", dir=private_dir())
        _ledger_add("cluster", self.dir)  # before 'up': a kill from here on leaves it to the guard
        args = [LOOPCLUSTER, "up", "--nodes", str(len(self.nodes) // self.clusters),
                "--clusters", str(self.clusters), "--dir", self.dir]
        if self.cpuset:
            args += ["--cpuset", "--first-cpu", str(self.first_cpu)]
        if self.memory_mb is not None:
            args += ["--memory", str(self.memory_mb)]
        if self.clock_skew:
            args += ["--clock-skew", str(self.clock_skew)]
        for setting in self.settings:
            args += ["--set", setting]
        args += ["--prefix", self.prefix]
        for partner in self.partners:
            args += ["--partner", partner]
        if self.installed:
            args += ["--installed", self.installed]
        try:
            result = subprocess.run(args, env=self.daemon_env(), capture_output=True,
                                    text=True, timeout=90)
            if result.returncode != 0:
                raise AssertionError(f"loopcluster up failed:\n{result.stderr}")
            assert result.stdout.split() == self.nodes, result.stdout
            self.reload()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc):
        result = subprocess.run([LOOPCLUSTER, "down", self.dir], env=self.env(),
                                capture_output=True, text=True, timeout=60)
        leftovers = []
        if result.returncode != 0:
            leftovers.append(f"loopcluster down failed: {result.stderr}")
        if os.path.exists(os.path.join(self.dir, "cluster.json")):
            leftovers.append("cluster.json still present")
        else:
            _ledger_remove("cluster", self.dir)
        mounts_after = host_mounts()
        # Other test programs run beside this one: their mounts, in their own directories
        # (/tmp/homeward-*), come and go meanwhile and are theirs to clean up.
        ours = private_dir() + "/"
        others = os.path.join(os.path.dirname(private_dir()), "homeward-")
        new_mounts = [m for m in mounts_after if m not in self.mounts_before
                      and (m.startswith(ours) or not m.startswith(others))]
        if new_mounts:
            leftovers.append(f"mounts left on the host: {new_mounts}")
        if exc[0] is not None:
            self.print_logs()
        if os.environ.get("HOMEWARD_KEEP_LOGS") is None:
            shutil.rmtree(self.dir, ignore_errors=True)
        else:
            print(f"cluster files kept in {self.dir}", file=sys.stderr)
        if leftovers and exc[0] is None:
            raise AssertionError("; ".join(leftovers))
        return False

    def print_logs(self, lines=60):
        """The end of every node's log, for a test that failed: the files go with the
        private directory."""
        for node in getattr(self, "info", {}).get("nodes", []):
            try:
                with open(node["log"], errors="replace") as f:
                    tail = f.read().splitlines()[-lines:]
            except OSError:
                continue
            print(f"--- last lines of {node['name']}'s log ---", file=sys.stderr)
            print("\n".join(tail), file=sys.stderr)

    @staticmethod
    def env():
        env = dict(os.environ, HOMEWARD_BUILD=BUILD)
        env.pop("HOMEWARD_FAULT", None)
        return env

    def daemon_env(self):
        """The environment the daemons start in: the test's fault points, if any."""
        env = self.env()
        if self.faults:
            env["HOMEWARD_FAULT"] = self.faults
        return env

    def node(self, name):
        return next(n for n in self.info["nodes"] if n["name"] == name)

    def run(self, node, *command, check=True, input=None, timeout=60):
        """Runs `command` inside `node`, as `loopcluster exec` does but without starting
        it (tests poll with this: a python start each time would be most of their CPU);
        returns the CompletedProcess (text)."""
        def exec_args():
            return _loopcluster.exec_args(self.info, _loopcluster.node_of(self.info, node),
                                          list(command), self.env())
        try:
            try:
                argv, env = exec_args()
            except _loopcluster.ClusterError:
                # Restarted since this test last read cluster.json (a new daemon pid).
                self.reload()
                argv, env = exec_args()
        except _loopcluster.ClusterError as e:
            # As `loopcluster exec` says it, and exits.
            result = subprocess.CompletedProcess(list(command), 1, "",
                                                 f"loopcluster: error: {e}\n")
        else:
            result = subprocess.run(argv, env=env, capture_output=True, text=True, input=input,
                                    timeout=timeout)
        if check and result.returncode != 0:
            raise AssertionError(f"{node}: {' '.join(command)} exited "
                                 f"{result.returncode}:\n{result.stdout}{result.stderr}")
        return result

    def kill(self, node):
        subprocess.run([LOOPCLUSTER, "kill", self.dir, node], env=self.env(), check=True)

    def start(self, node, faults=None):
        """Starts `node`'s daemon again, with the cluster's fault points or `faults`."""
        env = self.daemon_env()
        if faults is not None:
            env["HOMEWARD_FAULT"] = faults
        subprocess.run([LOOPCLUSTER, "start", self.dir, node], env=env, check=True,
                       capture_output=True, timeout=60)
        self.reload()  # the node's new daemon pid

    def reload(self):
        """Reads what loopcluster wrote of the cluster (nodes, daemon pids) again."""
        with open(os.path.join(self.dir, "cluster.json")) as f:
            self.info = json.load(f)

    def log(self, node):
        with open(self.node(node)["log"], errors="replace") as f:
            return f.read()

    def zombies(self, node, settle=10):
        """The zombie processes (state Z) under `node`'s daemon that stay zombies: its
        children, which it must reap, and theirs (it is a child subreaper), as "pid comm"
        strings. A child that has just exited is a zombie until the daemon's wait for it
        returns (an `ip6tables-restore` it ran a moment ago), so a zombie counts only if it
        is still there, the same process, after up to `settle` seconds of looking."""
        found = self._zombies_now(node)
        deadline = time.time() + settle
        while found and time.time() < deadline:
            time.sleep(0.2)
            found = [z for z in self._zombies_now(node) if z in found]
        return found

    def _zombies_now(self, node):
        daemon = self.node(node)["pid"]
        parents, states = {}, {}
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat") as f:
                    stat = f.read()
            except OSError:
                continue  # gone meanwhile
            # "pid (comm) state ppid ...": comm may hold spaces and parentheses.
            comm = stat[stat.index("(") + 1:stat.rindex(")")]
            fields = stat[stat.rindex(")") + 2:].split()
            parents[int(entry)] = int(fields[1])
            states[int(entry)] = (fields[0], comm)
        found = []
        for pid, (state, comm) in states.items():
            ancestor = parents.get(pid)
            while ancestor and ancestor != daemon:
                ancestor = parents.get(ancestor)
            if ancestor == daemon and state == "Z":
                found.append(f"{pid} {comm}")
        return found

    def wait_for(self, predicate, timeout, what):
        """Polls `predicate` until it returns a true value; fails naming `what`."""
        deadline = time.time() + timeout
        last = None
        while time.time() < deadline:
            last = predicate()
            if last:
                return last
            time.sleep(0.2)
        raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")

    def holds_for(self, seconds, predicate, what):
        """Checks that `predicate` stays true for `seconds`: for what must NOT happen (a job
        that must not move over several balancing rounds), where no event says "it did not
        happen". It is a window of observation, checked all along, not a wait for
        readiness."""
        deadline = time.time() + seconds
        while True:
            last = predicate()
            if not last:
                raise AssertionError(f"{what} stopped being true (last: {last!r})")
            if time.time() >= deadline:
                return last
            time.sleep(0.2)


_private = None


def _user_tool(*command):
    """Runs useradd/userdel/groupdel, retrying while another test holds the account files'
    lock (test programs run side by side). Returns the last run."""
    deadline = time.monotonic() + 30
    while True:
        run = subprocess.run(command, capture_output=True, text=True)
        if run.returncode == 0 or "lock" not in run.stderr or time.monotonic() > deadline:
            return run
        time.sleep(0.1)  # the lock holder is another program: nothing to wait on but time


def add_user(name):
    """Makes a throwaway ordinary user `name` (with a group of its own, no home); returns its
    pwd entry. Remove it with remove_user, whatever happens."""
    _ledger_add("user", name)
    run = _user_tool("useradd", "--no-create-home", "--user-group", "--shell", "/bin/sh", name)
    if run.returncode != 0:
        raise RuntimeError(f"useradd {name}: {run.stderr.strip()}")
    return pwd.getpwnam(name)


def user_for(test, prefix):
    """A throwaway ordinary user for `test` (a unittest.TestCase), removed when the test
    ends, pass or fail; returns its pwd entry. The test is skipped where users cannot be
    made."""
    if shutil.which("useradd") is None:
        test.skipTest("no useradd")
    name = f"{prefix}{os.urandom(4).hex()}"
    entry = add_user(name)
    test.addCleanup(remove_user, name)
    return entry


def remove_user(name):
    """Kills what runs as `name` and removes the user and its group; says so when it cannot."""
    subprocess.run(["pkill", "-KILL", "-u", name], capture_output=True)
    run = _user_tool("userdel", "--force", name)
    if run.returncode not in (0, 6):  # 6: no such user
        print(f"could not remove user {name}: {run.stderr.strip()}", file=sys.stderr)
    else:
        _ledger_remove("user", name)
    _user_tool("groupdel", name)


def group_for(test, prefix, *users):
    """A throwaway Unix group for `test` with `users` as members, removed when the test ends,
    pass or fail; returns its name."""
    name = f"{prefix}{os.urandom(4).hex()}"
    _ledger_add("group", name)
    run = _user_tool("groupadd", name)
    if run.returncode != 0:
        raise RuntimeError(f"groupadd {name}: {run.stderr.strip()}")
    test.addCleanup(remove_group, name)
    for user in users:
        run = _user_tool("usermod", "--append", "--groups", name, user)
        if run.returncode != 0:
            raise RuntimeError(f"usermod -aG {name} {user}: {run.stderr.strip()}")
    return name


def remove_group(name):
    run = _user_tool("groupdel", name)
    if run.returncode not in (0, 6):  # 6: no such group
        print(f"could not remove group {name}: {run.stderr.strip()}", file=sys.stderr)
    else:
        _ledger_remove("group", name)


# The start of a test's TCP server (python3 -c): listens on argv[1] and writes "PORT" to the
# file argv[2] once it does (the caller waits for that file); the caller's text serves.
LISTENING_SERVER = r"""
import os, socket, sys, threading
server = socket.socket()
server.bind((sys.argv[1], 0))
server.listen(16)
with open(sys.argv[2] + ".tmp", "w") as f:
    f.write(f"{server.getsockname()[1]}\n")
os.rename(sys.argv[2] + ".tmp", sys.argv[2])
"""

# A job that counts to 99, waits for the file `go` (with a builtin test and `sleep`, a
# program of the OS), and counts on to 199: what it printed tells how far it got, and a
# checkpoint taken while it waits restarts it at its gate.
COUNTER_JOB = r"""
i=0
while [ $i -lt 100 ]; do echo $i; i=$((i+1)); done
while [ ! -e go ]; do sleep 0.05; done
while [ $i -lt 200 ]; do echo $i; i=$((i+1)); done
echo done
"""


def count(first, last):
    """The lines COUNTER_JOB prints from `first` to `last`."""
    return "".join(f"{i}\n" for i in range(first, last + 1))


class UserClusterTest(unittest.TestCase):
    """Tests that share one loopback cluster and one throwaway ordinary user (made before
    the first test, removed after the last, pass or fail): `cls.user`, `self.c`."""
    user_prefix = "hwt"
    cluster_nodes = 2
    cluster_settings = ()
    cluster_clock_skew = None
    cluster_faults = None  # the daemons' fault points (HOMEWARD_FAULT)

    @classmethod
    def setUpClass(cls):
        if shutil.which("useradd") is None:
            raise unittest.SkipTest("no useradd")
        cls.user = f"{cls.user_prefix}{os.urandom(4).hex()}"
        add_user(cls.user)
        cls.cluster = LoopCluster(cls.cluster_nodes, settings=list(cls.cluster_settings),
                                  clock_skew=cls.cluster_clock_skew, faults=cls.cluster_faults)
        try:
            cls.cluster.__enter__()
        except BaseException:
            remove_user(cls.user)
            raise
        try:
            # The tests move jobs between any two nodes: each must know every other first.
            wait_until_meshed(cls.cluster)
        except BaseException:
            cls.tearDownClass()
            raise

    @classmethod
    def tearDownClass(cls):
        try:
            cls.cluster.__exit__(None, None, None)
        finally:
            remove_user(cls.user)

    def setUp(self):
        self.c = self.cluster


# A job for start_fed_job: reads lines, and for each appends "LINE HOSTNAME" to `log` (a
# file of its home's tree, so the hostname shows that it sees its home wherever it runs);
# "done" at the end of its input.
LINE_LOGGER = """while read line; do echo "$line $(hostname)" >> log; done
echo done >> log
"""


def user_work_dir(c, user, name, node="node1"):
    """Makes `node`'s /data/NAME, owned by `user`; returns it as the host sees it."""
    entry = pwd.getpwnam(user)
    work = os.path.join(c.node(node)["data"], name)
    os.makedirs(work)
    os.chown(work, entry.pw_uid, entry.pw_gid)
    return work


def start_fed_job(test, c, user, name, script, options, known=(), home="node1"):
    """Starts `sh job.sh` (job.sh holding `script`) as `mosrun OPTIONS` of `user` at `home`
    of cluster `c`, in /data/NAME, its stdin a fifo the test writes, its output in out, err
    and status there. Returns the work directory, the fifo's writing end (closed at the end
    of `test`) and the job's pid: the first of the user's jobs listed not in `known`."""
    entry = pwd.getpwnam(user)
    work = user_work_dir(c, user, name, home)
    with open(os.path.join(work, "job.sh"), "w") as f:
        f.write(script)
    fifo = os.path.join(work, "in")
    os.mkfifo(fifo, 0o600)
    os.chown(fifo, entry.pw_uid, entry.pw_gid)
    shell = (f"cd /data/{name} && (mosrun {options} sh job.sh < in > out 2> err; "
             f"echo $? > status) > /dev/null 2>&1 & echo ok")
    c.run(home, "runuser", "-u", user, "--", "sh", "-c", shell)
    writer = open(fifo, "w")  # once mosrun's shell has opened it for reading
    test.addCleanup(lambda: writer.closed or writer.close())
    # A home job of `user`'s: the user's guests on `home` (jobs of other homes) are listed
    # there too, and may be listed before the new job is.
    pid = c.wait_for(lambda: next((j["pid"] for j in jobs(c, home) if j["user"] == user
                                   and not j["guest"] and j["pid"] not in known), None),
                     60, "the job to be listed")
    return work, writer, pid


def alive_nodes(cluster, node):
    """The names of the nodes `node` knows alive (mosmon --json), or None if it does not
    answer."""
    result = cluster.run(node, "mosmon", "--json", check=False)
    if result.returncode != 0:
        return None
    return sorted(n["name"] for n in json.loads(result.stdout)["nodes"] if n["alive"])


def cgroup_identities(paths):
    """The cgroups' inodes, to tell after teardown whether they are gone: once a cluster is
    down its slot is free, and a test running beside may take it and make a cgroup of the
    same path."""
    return {path: os.stat(path).st_ino for path in paths}


def assert_cgroups_gone(test, identities):
    for path, inode in identities.items():
        try:
            test.assertNotEqual(os.stat(path).st_ino, inode, f"cgroup {path} survived teardown")
        except FileNotFoundError:
            pass


def alive_by_cluster(cluster, node):
    """{cluster name: sorted names of its nodes} of the nodes `node` knows alive (mosmon
    --json), or {} if it does not answer."""
    result = cluster.run(node, "mosmon", "--json", check=False)
    if result.returncode != 0:
        return {}
    groups = {}
    for n in json.loads(result.stdout)["nodes"]:
        if n["alive"]:
            groups.setdefault(n["cluster"], []).append(n["name"])
    return {name: sorted(names) for name, names in groups.items()}


def partnership_key(name):
    """A new key file (mode 0600) in the test's private directory, for a [[partner]]."""
    path = os.path.join(private_dir(), f"{name}-{os.urandom(4).hex()}.key")
    with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as f:
        f.write(os.urandom(32).hex() + "\n")
    return path


def wait_until_meshed(cluster, timeout=60):
    """Waits until every node of `cluster` knows every node alive (gossip has gone round)."""
    names = sorted(cluster.nodes)
    for name in names:
        cluster.wait_for(lambda: alive_nodes(cluster, name) == names, timeout,
                         f"{name} to know every node of the cluster ({', '.join(names)})")


class stopped:
    """`with stopped(pid):` the process is stopped (SIGSTOP) inside the block, every thread
    of it, and continued (SIGCONT) when the block ends, however it ends.

    kill() only queues the stop: one thread takes it and then stops the others, and on a
    loaded machine that thread may not run for a while, the others running on. So this
    waits until /proc says every thread is stopped."""

    def __init__(self, pid, timeout=30):
        self.pid, self.timeout = pid, timeout

    def __enter__(self):
        os.kill(self.pid, signal.SIGSTOP)
        try:
            deadline = time.time() + self.timeout
            while not self._all_stopped():
                if time.time() >= deadline:
                    raise AssertionError(f"process {self.pid} did not stop in {self.timeout}s")
                time.sleep(0.01)
        except BaseException:
            os.kill(self.pid, signal.SIGCONT)
            raise
        return self

    def __exit__(self, *exc):
        os.kill(self.pid, signal.SIGCONT)

    def _all_stopped(self):
        tasks = f"/proc/{self.pid}/task"
        for tid in os.listdir(tasks):
            try:
                with open(f"{tasks}/{tid}/stat") as f:
                    stat = f.read()
            except FileNotFoundError:
                continue  # a thread that ended meanwhile
            if stat[stat.rindex(")") + 2] not in "Tt":
                return False
        return True


def read_text(path):
    """The text of a file, or "" while it does not exist (yet)."""
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""


def jobs(cluster, node="node1"):
    """The jobs `mosps --json` lists on `node`."""
    return json.loads(cluster.run(node, "mosps", "--json").stdout)["jobs"]


def readable_script(name, text):
    """Writes `text` to NAME in private_dir(), readable by the tests' users; its path."""
    path = os.path.join(private_dir(), name)
    with open(path, "w") as f:
        f.write(text)
    os.chmod(path, 0o644)
    return path


def file_requests_at(c, node, port):
    """The file requests `node`'s file service has answered (homeward_file_requests_total
    on its web monitor's /metrics, listening on `port` of the node's address)."""
    address = c.node(node)["address"]
    with urllib.request.urlopen(f"http://{address}:{port}/metrics", timeout=10) as r:
        text = r.read().decode()
    match = re.search(rf'^homeward_file_requests_total{{node="{node}"[^}}]*}} (\S+)$', text,
                      re.MULTILINE)
    if match is None:
        raise AssertionError(f"no homeward_file_requests_total in /metrics:\n{text}")
    return float(match.group(1))


def private_dir():
    """This test program's own temporary directory, made on first use and removed when the
    program exits. Mode 1777 like /tmp: the tests' unprivileged users write into it too."""
    global _private
    if _private is None:
        name = os.path.splitext(os.path.basename(sys.argv[0] or "test"))[0]
        _private = tempfile.mkdtemp(prefix=f"homeward-{name}-")
        os.chmod(_private, 0o1777)
        os.environ["TMPDIR"] = _private
        tempfile.tempdir = _private
        atexit.register(_remove_private)
    return _private


def _remove_private(private=None):
    private = private or _private
    if private is None or not os.path.isdir(private):
        return
    # Never descend into a mount a failed teardown left behind: it is not ours to empty.
    inside = [m for m in host_mounts() if m == private or m.startswith(private + "/")]
    if inside:
        print(f"{private} kept: mounts left in it: {inside}", file=sys.stderr)
    elif os.environ.get("HOMEWARD_KEEP_LOGS") is not None:
        print(f"test files kept in {private}", file=sys.stderr)
    else:
        shutil.rmtree(private, ignore_errors=True)


# ---------------------------------------------------------------------------------------
# The guard: cleanup that outlives the test program. meson ends a test past its timeout
# with SIGTERM to the test's process group and SIGKILL 0.5 s later, too soon for a
# cluster's teardown (unmounts, cgroups, userdel); and the daemons, in sessions of their
# own (loopcluster), get neither signal. So the first cluster or user a program makes
# starts a guard: a process in a session of its own that waits on the program's pidfd
# and, once the program has gone, undoes what the program did not undo itself: its
# clusters (loopcluster down), its throwaway users and its private directory. What to
# undo is in a ledger beside the private directory (`<private>.guard`: the program's own
# exit removes the directory), written before each thing is made and crossed off once the
# program has undone it; a program that cleaned up after itself leaves the guard nothing
# to do but remove the ledger. With HOMEWARD_KEEP_LOGS, the guard logs to
# `<private>.guard-log`.

_guard_pid = None
_guard_lock = threading.Lock()  # clusters may be started from threads


def _ledger_path(private=None):
    return (private or private_dir()) + ".guard"


def _ledger_add(kind, value):
    _start_guard()
    with open(_ledger_path(), "a") as f:
        f.write(f"+{kind} {value}\n")


def _ledger_remove(kind, value):
    if _guard_pid is None:
        return
    with open(_ledger_path(), "a") as f:
        f.write(f"-{kind} {value}\n")


def _start_guard():
    with _guard_lock:
        _start_guard_locked()


def _start_guard_locked():
    global _guard_pid
    if _guard_pid is not None:
        return
    log = subprocess.DEVNULL
    if os.environ.get("HOMEWARD_KEEP_LOGS") is not None:
        log = open(private_dir() + ".guard-log", "w")
    guard = subprocess.Popen([sys.executable, os.path.realpath(__file__), "--guard",
                              str(os.getpid()), private_dir()],
                             stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                             start_new_session=True, cwd="/",
                             env=dict(os.environ, HOMEWARD_BUILD=BUILD))
    _guard_pid = guard.pid


def guard_pid():
    """The pid of this program's guard, once it has one (tests of the guard itself)."""
    return _guard_pid


def _guard(program, private):
    """The guard's body: waits for `program` to end, then undoes what its ledger lists."""
    try:
        pidfd = os.pidfd_open(program)
        select.select([pidfd], [], [])  # readable once the program has exited
    except ProcessLookupError:
        pass
    left = {}
    with open(_ledger_path(private)) as f:
        for line in f:
            sign, kind, value = line[0], *line[1:].rstrip("\n").split(" ", 1)
            left[(kind, value)] = sign == "+"
    for (kind, value), made in left.items():
        if made and kind == "cluster" and os.path.exists(os.path.join(value, "cluster.json")):
            print(f"guard: taking down the cluster in {value}", file=sys.stderr, flush=True)
            down = subprocess.run([LOOPCLUSTER, "down", value], capture_output=True, text=True,
                                  timeout=120)
            print(down.stderr, file=sys.stderr, flush=True)
    for (kind, value), made in left.items():
        if made and kind == "user":
            print(f"guard: removing user {value}", file=sys.stderr, flush=True)
            remove_user(value)
    for (kind, value), made in left.items():
        if made and kind == "group":
            print(f"guard: removing group {value}", file=sys.stderr, flush=True)
            remove_group(value)
    _remove_private(private)
    os.unlink(_ledger_path(private))


class _TimedResult(unittest.TextTestResult):
    """Also notes each test's time, for the list at the end of the log."""

    def startTest(self, test):
        self._started = time.monotonic()
        super().startTest(test)

    def stopTest(self, test):
        super().stopTest(test)
        self.times = getattr(self, "times", [])
        self.times.append((time.monotonic() - self._started, test.id().removeprefix("__main__.")))


def run_tests(module="__main__"):
    """Runs `module`'s tests (or those named on the command line) in the private directory
    and exits: 0 when they passed, 1 when one failed, 77 (skipped) when every one was
    skipped. Skips among tests that ran are listed at the end, so that a partly skipped
    program is not read as a full pass."""
    private_dir()
    # meson ends a test that runs out of time with SIGTERM: unwind, so that the clusters
    # come down and the private directory goes.
    signal.signal(signal.SIGTERM, _interrupted)
    loader = unittest.defaultTestLoader
    names = sys.argv[1:]
    suite = (loader.loadTestsFromNames(names, sys.modules[module]) if names
             else loader.loadTestsFromModule(sys.modules[module]))
    result = unittest.TextTestRunner(verbosity=2, resultclass=_TimedResult).run(suite)
    # Where the program's time went, longest first (what to shorten when the suite is slow).
    print("\nTIMES:", file=sys.stderr)
    for seconds, name in sorted(getattr(result, "times", []), reverse=True):
        print(f"  {seconds:7.1f} s  {name}", file=sys.stderr)
    # A class skipped in setUpClass is one skip entry but no test run.
    ran = result.testsRun - sum(isinstance(t, unittest.TestCase) for t, _ in result.skipped)
    if result.skipped:
        print(f"\nSKIPPED: {len(result.skipped)} (tests that ran: {ran})", file=sys.stderr)
        for test, reason in result.skipped:
            print(f"  skipped {test.id().removeprefix('__main__.')}: {reason}", file=sys.stderr)
    if not result.wasSuccessful():
        sys.exit(1)
    if ran == 0 and result.skipped:
        print("every test was skipped: exit 77 (meson counts it as skipped)", file=sys.stderr)
        sys.exit(SKIP)
    if ran == 0:
        print("no tests ran", file=sys.stderr)
        sys.exit(1)
    sys.exit(0)


def _interrupted(signum, frame):
    # KeyboardInterrupt, not SystemExit: unittest records a SystemExit as one test's error
    # and runs the next test; KeyboardInterrupt stops the run and unwinds every `with
    # LoopCluster`. Once only: a second SIGTERM must not cut the teardown short (the guard
    # finishes whatever meson's SIGKILL cuts short).
    signal.signal(signum, signal.SIG_IGN)
    raise KeyboardInterrupt(f"signal {signum}")


def main():
    """Runs the calling module's tests; skips (77) when not root, as they need namespaces."""
    if os.geteuid() != 0:
        print("whole-system tests need root (namespaces, mounts, cgroups): skipped")
        sys.exit(SKIP)
    if not os.path.exists(os.path.join(BUILD, "noded", "mosnoded")):
        print(f"no build at {BUILD}: set HOMEWARD_BUILD")
        sys.exit(1)
    run_tests()


if __name__ == "__main__" and len(sys.argv) == 4 and sys.argv[1] == "--guard":
    _guard(int(sys.argv[2]), sys.argv[3])
