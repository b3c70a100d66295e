// Workloads for the shim's tests, one per mode, each printing "key=value" lines that the
// test compares with the ids it gave the job:
//   fork      fork, vfork, raw fork, posix_spawn and system(): the parent's and child's view
//   threads   gettid in threads, by libc and raw, and pthread_kill
//   seccomp   the program's own seccomp filter and SIGSYS handler, and a blocked SIGSYS
//   exec-clean  clears its environment and executes ARGS with none
//   kill-home   a child signals the job's home pid; pid 2 must get it
//   early     what a library constructor saw (early_lib.cc, run before the shim's own)
#include <pthread.h>
#include <seccomp.h>
#include <spawn.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>

namespace {

void Report(const char* key, long value) {
  printf("%s=%ld\n", key, value);
  fflush(stdout);
}

// Runs `body` in a child made by `how`, which reports its own ids to the parent through
// a pipe; the parent reports what fork and waitpid said, and the child's report.
long ChildPid(int fd) {
  long pid = 0;
  if (read(fd, &pid, sizeof(pid)) != sizeof(pid)) return -1;
  return pid;
}

void SendPid(int fd) {
  long pid = getpid();
  long raw = syscall(SYS_getpid);
  if (raw != pid) pid = -2;
  if (syscall(SYS_getppid) != getppid()) pid = -3;
  (void)!write(fd, &pid, sizeof(pid));
}

int Fork() {
  Report("pid", getpid());
  const char* kinds[] = {"fork", "vfork", "rawfork"};
  for (const char* kind : kinds) {
    int fds[2];
    if (pipe(fds) != 0) return 1;
    pid_t child;
    if (strcmp(kind, "fork") == 0) {
      child = fork();
    } else if (strcmp(kind, "vfork") == 0) {
      child = vfork();
    } else {
      child = static_cast<pid_t>(syscall(SYS_fork));
    }
    if (child == 0) {
      SendPid(fds[1]);
      _exit(getppid() == static_cast<pid_t>(syscall(SYS_getppid)) ? 7 : 9);
    }
    close(fds[1]);
    char key[64];
    snprintf(key, sizeof(key), "%s.returned", kind);
    Report(key, child);
    snprintf(key, sizeof(key), "%s.child_getpid", kind);
    Report(key, ChildPid(fds[0]));
    close(fds[0]);
    int status = 0;
    snprintf(key, sizeof(key), "%s.waitpid", kind);
    Report(key, waitpid(child, &status, 0));
    snprintf(key, sizeof(key), "%s.status", kind);
    Report(key, WIFEXITED(status) ? WEXITSTATUS(status) : -1);
  }
  pid_t spawned = 0;
  char* argv[] = {const_cast<char*>("sh"), const_cast<char*>("-c"),
                  const_cast<char*>("echo spawn.child_pid=$$"), nullptr};
  if (posix_spawn(&spawned, "/bin/sh", nullptr, nullptr, argv, environ) != 0) return 1;
  int status = 0;
  Report("spawn.returned", spawned);
  Report("spawn.waitpid", waitpid(spawned, &status, 0));
  int rc = system("exit 3");
  Report("system.status", WIFEXITED(rc) ? WEXITSTATUS(rc) : -1);
  int fds[2];
  if (pipe(fds) != 0) return 1;
  pid_t leader = fork();
  if (leader == 0) {
    long ids[4] = {setsid(), getsid(0), getpgrp(), getpgid(0)};
    (void)!write(fds[1], ids, sizeof(ids));
    _exit(0);
  }
  long ids[4] = {};
  if (read(fds[0], ids, sizeof(ids)) != sizeof(ids)) return 1;
  waitpid(leader, nullptr, 0);
  Report("setsid.child", leader);
  Report("setsid.returned", ids[0]);
  Report("setsid.getsid", ids[1]);
  Report("setsid.getpgrp", ids[2]);
  Report("setsid.getpgid", ids[3]);
  siginfo_t info = {};
  pid_t child = fork();
  if (child == 0) _exit(5);
  Report("waitid.returned", child);
  Report("waitid.rc", waitid(P_PID, child, &info, WEXITED));
  Report("waitid.si_pid", info.si_pid);
  return 0;
}

std::atomic<int> g_thread_signals{0};
void OnUsr1(int) {
  g_thread_signals++;
}

void* Thread(void* arg) {
  long* out = static_cast<long*>(arg);
  out[0] = gettid();
  out[1] = syscall(SYS_gettid);
  out[2] = getpid();
  out[3] = syscall(SYS_getpid);
  return nullptr;
}

int Threads() {
  signal(SIGUSR1, OnUsr1);
  Report("pid", getpid());
  Report("main.gettid", gettid());
  Report("main.syscall_gettid", syscall(SYS_gettid));
  pthread_t threads[4];
  long results[4][4] = {};
  for (int i = 0; i < 4; ++i) pthread_create(&threads[i], nullptr, Thread, results[i]);
  for (int i = 0; i < 4; ++i) pthread_join(threads[i], nullptr);
  for (int i = 0; i < 4; ++i) {
    char key[64];
    snprintf(key, sizeof(key), "thread%d.gettid", i);
    Report(key, results[i][0]);
    snprintf(key, sizeof(key), "thread%d.syscall_gettid", i);
    Report(key, results[i][1]);
    snprintf(key, sizeof(key), "thread%d.getpid", i);
    Report(key, results[i][2]);
    snprintf(key, sizeof(key), "thread%d.syscall_getpid", i);
    Report(key, results[i][3]);
  }
  pthread_t self = pthread_self();
  Report("pthread_kill", pthread_kill(self, SIGUSR1));
  Report("tgkill", syscall(SYS_tgkill, getpid(), gettid(), SIGUSR1));
  Report("signals", g_thread_signals.load());
  return 0;
}

std::atomic<int> g_own_traps{0};
std::atomic<long> g_own_syscall{0};
std::atomic<int> g_own_kills{0};

void OwnSigsys(int, siginfo_t* info, void* context) {
  if (info->si_code == SI_USER) {
    g_own_kills++;
    return;
  }
  g_own_traps++;
  g_own_syscall = info->si_syscall;
  static_cast<ucontext_t*>(context)->uc_mcontext.gregs[REG_RAX] = 4242;
}

long g_in_handler = 0;
void OnUsr2(int) {
  g_in_handler = syscall(SYS_getpid);
}

int Seccomp() {
  struct sigaction sa = {};
  sa.sa_sigaction = OwnSigsys;
  sa.sa_flags = SA_SIGINFO;
  if (sigaction(SIGSYS, &sa, nullptr) != 0) return 1;
  struct sigaction back = {};
  sigaction(SIGSYS, nullptr, &back);
  Report("sigaction.reports_own", back.sa_sigaction == OwnSigsys);
  scmp_filter_ctx ctx = seccomp_init(SCMP_ACT_ALLOW);
  seccomp_rule_add(ctx, SCMP_ACT_TRAP, SCMP_SYS(sysinfo), 0);
  seccomp_rule_add(ctx, SCMP_ACT_ERRNO(EPERM), SCMP_SYS(setpgid), 0);
  Report("seccomp_load", seccomp_load(ctx));
  seccomp_release(ctx);
  Report("own.sysinfo", syscall(SYS_sysinfo, nullptr));
  Report("own.traps", g_own_traps.load());
  Report("own.syscall", g_own_syscall.load());
  Report("getpid", getpid());
  Report("syscall.getpid", syscall(SYS_getpid));
  // The program's filter still applies to calls the shim makes for it.
  errno = 0;
  Report("setpgid.errno", setpgid(0, 0) == 0 ? 0 : errno);
  kill(getpid(), SIGSYS);
  Report("own.kills", g_own_kills.load());
  // A program that blocks every signal, SIGSYS included, and a handler whose mask is full.
  sigset_t all;
  sigfillset(&all);
  sigprocmask(SIG_BLOCK, &all, nullptr);
  sigset_t now;
  sigprocmask(SIG_BLOCK, nullptr, &now);
  Report("blocked.usr1", sigismember(&now, SIGUSR1));
  Report("blocked.sigsys", sigismember(&now, SIGSYS));
  Report("blocked.syscall_getpid", syscall(SYS_getpid));
  sigprocmask(SIG_UNBLOCK, &all, nullptr);
  struct sigaction usr2 = {};
  usr2.sa_handler = OnUsr2;
  sigfillset(&usr2.sa_mask);
  sigaction(SIGUSR2, &usr2, nullptr);
  raise(SIGUSR2);
  Report("handler.syscall_getpid", g_in_handler);
  return 0;
}

int ExecClean(char** argv) {
  clearenv();
  char* empty[] = {nullptr};
  execve(argv[0], argv, empty);
  perror("exec-clean: execve");
  return 127;
}

volatile sig_atomic_t g_got = 0;
void OnHomeSignal(int) {
  g_got = 1;
}

int KillHome(const char* how) {
  signal(SIGUSR1, OnHomeSignal);
  long home_pid = atol(getenv("HOMEWARD_HOME_PID"));
  pid_t child = fork();
  if (child == 0) {
    long rc = strcmp(how, "raw") == 0 ? syscall(SYS_kill, home_pid, SIGUSR1)
                                      : kill(static_cast<pid_t>(home_pid), SIGUSR1);
    _exit(rc == 0 ? 0 : 1);
  }
  int status = 0;
  waitpid(child, &status, 0);
  for (int i = 0; i < 1000 && !g_got; ++i) usleep(1000);
  Report("child.status", WIFEXITED(status) ? WEXITSTATUS(status) : -1);
  Report("got", g_got);
  return 0;
}

}  // namespace

extern long early_getpid, early_syscall_getpid, early_sigaction;

int main(int argc, char** argv) {
  if (argc < 2) {
    fprintf(stderr, "usage: shim_check fork|threads|seccomp|exec-clean PROG...|kill-home|early\n");
    return 2;
  }
  const char* mode = argv[1];
  if (strcmp(mode, "fork") == 0) return Fork();
  if (strcmp(mode, "threads") == 0) return Threads();
  if (strcmp(mode, "seccomp") == 0) return Seccomp();
  if (strcmp(mode, "exec-clean") == 0 && argc > 2) return ExecClean(argv + 2);
  if (strcmp(mode, "early") == 0) {
    Report("early.getpid", early_getpid);
    Report("early.syscall_getpid", early_syscall_getpid);
    Report("early.sigaction", early_sigaction);
    return 0;
  }
  if (strcmp(mode, "kill-home") == 0) return KillHome(argc > 2 ? argv[2] : "libc");
  fprintf(stderr, "shim_check: unknown mode %s\n", mode);
  return 2;
}
