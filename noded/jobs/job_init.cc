// mosjob-init: pid 1 of every job. The daemon starts it in fresh PID, mount, UTS and IPC
// namespaces (a guest's in a network namespace of its own too, whose loopback the init
// brings up); it gives the job its home's hostname and a view of its own (the home's
// tree, or at home the node's, with the job's own /proc, a minimal /dev and a read-only
// /sys), starts the user's program (pid 2) in that view with the user's credentials, no
// capabilities and no_new_privs, forwards signals to it, reaps every orphan of the job,
// and reports the program's end on fd 3. It links nothing of the daemon.
//
//   mosjob-init --home NAME --uid U --gid G [--groups G1,G2] [--umask OCTAL]
//               [--cwd DIR] [--root DIR] [--preload LIB] [--rlimit RES=SOFT:HARD]...
//               [--own-network] -- PROGRAM ARGS...
//   mosjob-init --prepare-root DIR [--own-network]
//               (namespaces for CRIU to restore a job into)
//   CRTOOLS_SCRIPT_ACTION=... mosjob-init   (CRIU's action script during that restore)
//
// mosjob-init's own environment is the daemon's making; the program gets the caller's
// variables (passed behind the HOMEWARD_USER_ENV: prefix) once it runs as the user.
// Reports on fd 3, one line:
//   "exit CODE" | "signal SIG" | "error ERRNO what failed"
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <limits.h>
#include <linux/audit.h>
#include <linux/capability.h>
#include <linux/close_range.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <net/if.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstddef>
#include <string>
#include <vector>

#include "job_env.h"
#include "job_signals.h"
#include "job_terminal.h"
#include "job_view.h"

using homeward::kUserEnvPrefix;
namespace job_signals = homeward::job_signals;

namespace {

constexpr int kStatusFd = 3;

struct Limit {
  int resource;
  rlim_t soft;
  rlim_t hard;
};

struct Options {
  std::string home;
  uid_t uid = 0;
  gid_t gid = 0;
  std::vector<gid_t> groups;
  mode_t umask_value = 022;
  std::string cwd = "/";
  std::string root = "/";
  std::string preload;
  std::vector<Limit> limits;
  bool own_network = false;  // the job's network namespace is new: bring its loopback up
  // mosrun runs on a terminal: the job gets a pseudo-terminal (job_terminal.h); "0,1" or
  // "0,1,2", the descriptors that are the terminal (HOMEWARD_TERMINAL).
  std::string terminal;
  std::vector<char*> argv;
};

void Report(const std::string& line) {
  std::string text = line + "\n";
  (void)!write(kStatusFd, text.data(), text.size());
}

// How the program ended, as the daemon reads it off the status pipe.
void ReportEnd(int status) {
  if (WIFSIGNALED(status)) {
    Report("signal " + std::to_string(WTERMSIG(status)));
  } else {
    Report("exit " + std::to_string(WEXITSTATUS(status)));
  }
}

}  // namespace

namespace homeward::job_init {

[[noreturn]] void Die(const std::string& what) {
  int err = errno;
  Report("error " + std::to_string(err) + " " + what + ": " + strerror(err));
  _exit(127);
}

}  // namespace homeward::job_init

namespace {

using homeward::job_init::BringUpLoopback;
using homeward::job_init::BuildJobRoot;
using homeward::job_init::Die;
using homeward::job_init::kInitCopy;
using homeward::job_init::kJobView;
using homeward::job_init::MountJobProc;
using homeward::job_init::TerminalRelay;

unsigned long Number(const char* text, int base, const char* what) {
  char* end = nullptr;
  errno = 0;
  unsigned long value = strtoul(text, &end, base);
  if (errno || !*text || *end) {
    errno = EINVAL;
    Die(std::string("bad ") + what + " '" + text + "'");
  }
  return value;
}

rlim_t LimitValue(const std::string& text) {
  return text == "inf" ? RLIM_INFINITY : Number(text.c_str(), 10, "rlimit");
}

Options Parse(int argc, char** argv) {
  Options options;
  int i = 1;
  auto value = [&](const char* flag) -> const char* {
    if (i + 1 >= argc) {
      errno = EINVAL;
      Die(std::string(flag) + " needs a value");
    }
    return argv[++i];
  };
  for (; i < argc; ++i) {
    std::string flag = argv[i];
    if (flag == "--") {
      ++i;
      break;
    } else if (flag == "--home") {
      options.home = value("--home");
    } else if (flag == "--uid") {
      options.uid = static_cast<uid_t>(Number(value("--uid"), 10, "uid"));
    } else if (flag == "--gid") {
      options.gid = static_cast<gid_t>(Number(value("--gid"), 10, "gid"));
    } else if (flag == "--groups") {
      std::string list = value("--groups");
      size_t start = 0;
      while (start < list.size()) {
        size_t comma = list.find(',', start);
        if (comma == std::string::npos) comma = list.size();
        std::string one = list.substr(start, comma - start);
        options.groups.push_back(static_cast<gid_t>(Number(one.c_str(), 10, "group")));
        start = comma + 1;
      }
    } else if (flag == "--umask") {
      options.umask_value = static_cast<mode_t>(Number(value("--umask"), 8, "umask"));
    } else if (flag == "--cwd") {
      options.cwd = value("--cwd");
    } else if (flag == "--root") {
      options.root = value("--root");
    } else if (flag == "--own-network") {
      options.own_network = true;
    } else if (flag == "--preload") {
      options.preload = value("--preload");
    } else if (flag == "--rlimit") {
      std::string spec = value("--rlimit");
      size_t eq = spec.find('='), colon = spec.find(':');
      if (eq == std::string::npos || colon == std::string::npos || colon < eq) {
        errno = EINVAL;
        Die("bad --rlimit '" + spec + "'");
      }
      options.limits.push_back(Limit{
          static_cast<int>(Number(spec.substr(0, eq).c_str(), 10, "resource")),
          LimitValue(spec.substr(eq + 1, colon - eq - 1)), LimitValue(spec.substr(colon + 1))});
    } else {
      errno = EINVAL;
      Die("unknown option " + flag);
    }
  }
  for (; i < argc; ++i) options.argv.push_back(argv[i]);
  options.argv.push_back(nullptr);
  if (options.argv.size() < 2 || options.home.empty()) {
    errno = EINVAL;
    Die("usage: mosjob-init --home NAME ... -- PROGRAM [ARGS...]");
  }
  return options;
}

void SetUpNamespaces(const Options& options) {
  if (options.own_network) BringUpLoopback();
  if (sethostname(options.home.data(), options.home.size()) != 0) Die("sethostname");
  if (mount(nullptr, "/", nullptr, MS_REC | MS_PRIVATE, nullptr) != 0) {
    Die("make the job's mounts private");
  }
  BuildJobRoot(options.root, true);
}

// The init was started from the node's own tree, which pivot_root has just hidden; CRIU
// cannot dump a process whose executable lies on a mount outside its namespace. So the
// init runs itself again from its copy in the job's root, where a restore finds it too.
// The first argument tells the new image that the namespaces are built.
constexpr char kEntered[] = "--entered";

[[noreturn]] void ReexecInsideRoot(int argc, char** argv) {
  std::vector<char*> again{const_cast<char*>(kInitCopy), const_cast<char*>(kEntered)};
  again.insert(again.end(), argv + 1, argv + argc + 1);
  execv(kInitCopy, again.data());
  Die("run the init again from the job's root");
}

// In the program's process, first: into the job's view, for good. The bounding and
// ambient sets are emptied while the init's capabilities still allow it, so that no
// exec (of a root job, or of a file with capabilities) gives any back.
const char* ConfineProgram() {
  if (chroot(kJobView) != 0) return "enter the job's view";
  if (chdir("/") != 0) return "enter the job's view";
  for (int cap = 0; prctl(PR_CAPBSET_READ, cap, 0, 0, 0) >= 0; ++cap) {
    if (prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0) return "drop the bounding capabilities";
  }
  if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) != 0 && errno != EINVAL) {
    return "clear the ambient capabilities";
  }
  return nullptr;
}

// The kernel's keyrings are the node's, not the job's: a job would share its uid's user
// keyring on this node (root's, for a root job) and possess the session keyring it
// inherits from the daemon (and after a restore, from CRIU). Their calls fail with EPERM,
// as under container runtimes; CRIU carries the filter along with the job.
const char* DenyKeyrings() {
  constexpr uint32_t kX32Bit = 0x40000000;
  constexpr uint32_t kDeny = SECCOMP_RET_ERRNO | EPERM;
  sock_filter filter[] = {
      BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(seccomp_data, arch)),
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, AUDIT_ARCH_X86_64, 0, 6),
      BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(seccomp_data, nr)),
      BPF_STMT(BPF_ALU | BPF_AND | BPF_K, ~kX32Bit),
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, 248, 9, 0),  // add_key
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, 249, 8, 0),  // request_key
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, 250, 7, 0),  // keyctl
      BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, AUDIT_ARCH_I386, 0, 4),
      BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(seccomp_data, nr)),
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, 286, 3, 0),  // add_key
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, 287, 2, 0),  // request_key
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, 288, 1, 0),  // keyctl
      BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
      BPF_STMT(BPF_RET | BPF_K, kDeny),
  };
  sock_fprog program{static_cast<unsigned short>(sizeof filter / sizeof filter[0]), filter};
  if (prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &program, 0, 0) != 0) {
    return "deny the keyring calls";
  }
  return nullptr;
}

// After the switch to the user's ids: no capability left (a root job keeps its uid 0,
// and with it every capability, unless they are cleared here), and none to gain.
const char* DropCapabilities() {
  __user_cap_header_struct header{_LINUX_CAPABILITY_VERSION_3, 0};
  __user_cap_data_struct none[_LINUX_CAPABILITY_U32S_3] = {};
  if (syscall(SYS_capset, &header, none) != 0) return "drop capabilities";
  if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) return "set no_new_privs";
  return DenyKeyrings();
}

// In the program's process, before exec: the user's identity and limits.
[[noreturn]] void RunProgram(const Options& options, int exec_error_fd) {
  sigset_t none;
  sigemptyset(&none);
  for (int sig = 1; sig < NSIG; ++sig) signal(sig, SIG_DFL);
  sigprocmask(SIG_SETMASK, &none, nullptr);
  close(kStatusFd);
  auto fail = [&](const char* step) {
    int err = errno;
    char message[256];
    int n = snprintf(message, sizeof message, "%d %s", err, step);
    (void)!write(exec_error_fd, message, static_cast<size_t>(n));
    _exit(127);
  };
  if (const char* step = ConfineProgram()) fail(step);
  for (const Limit& limit : options.limits) {
    rlimit value{limit.soft, limit.hard};
    if (setrlimit(limit.resource, &value) != 0) fail("set resource limits");
  }
  if (setgroups(options.groups.size(), options.groups.data()) != 0) fail("set groups");
  if (setresgid(options.gid, options.gid, options.gid) != 0) fail("set gid");
  if (setresuid(options.uid, options.uid, options.uid) != 0) fail("set uid");
  if (const char* step = DropCapabilities()) fail(step);
  umask(options.umask_value);
  if (chdir(options.cwd.c_str()) != 0) fail("enter the working directory");
  // Only now, as the user, does the user's environment apply: the caller's variables come
  // back from behind their prefix, the job's own HOMEWARD_* stay, and LD_PRELOAD is the
  // shim first, then whatever the user preloads. The init itself runs without either.
  static std::vector<std::string> entries;
  std::string user_preload;
  for (char** entry = environ; *entry; ++entry) {
    std::string text = *entry;
    if (text.rfind(kUserEnvPrefix, 0) == 0) {
      text.erase(0, strlen(kUserEnvPrefix));
      if (text.rfind("LD_PRELOAD=", 0) == 0) {
        user_preload = text.substr(strlen("LD_PRELOAD="));
        continue;
      }
      entries.push_back(std::move(text));
    } else if (text.rfind("HOMEWARD_", 0) == 0) {
      if (text.rfind(std::string(homeward::terminal::kEnvName) + "=", 0) == 0) continue;
      entries.push_back(std::move(text));
    }
  }
  std::string preload = options.preload;
  if (!user_preload.empty()) preload += (preload.empty() ? "" : ":") + user_preload;
  if (!preload.empty()) entries.push_back("LD_PRELOAD=" + preload);
  static std::vector<char*> user_environ;
  for (auto& text : entries) user_environ.push_back(text.data());
  user_environ.push_back(nullptr);
  environ = user_environ.data();  // execvp searches the user's PATH
  execvp(options.argv[0], options.argv.data());
  fail("run");
  _exit(127);
}

}  // namespace

// `mosjob-init --prepare-root ROOT [--own-network]`: makes a mount namespace like a job's
// (see kJobView), and for a guest a network namespace with its loopback up, for CRIU to
// restore a moved job into; says "ready" on fd 3, and holds the namespaces until its
// stdin closes. The job's /proc comes with its pid namespace (MountProcOf).
int PrepareRoot(const char* root, bool own_network) {
  if (own_network) {
    if (unshare(CLONE_NEWNET) != 0) Die("unshare the network namespace");
    BringUpLoopback();
  }
  if (unshare(CLONE_NEWNS) != 0) Die("unshare the mount namespace");
  if (mount(nullptr, "/", nullptr, MS_REC | MS_PRIVATE, nullptr) != 0) {
    Die("make the mounts private");
  }
  BuildJobRoot(root, false);
  Report("ready");
  char byte;
  while (read(0, &byte, 1) > 0) {
  }
  return 0;
}

// mosjob-init as CRIU's action script (criu runs it by path, without arguments, for each
// step of a restore into the namespace --prepare-root made): once the restored job's pid
// namespace exists and before any of its processes is restored (setup-namespaces), it
// mounts that namespace's /proc in the job's view.
int MountProcOf(const char* pid) {
  if (pid == nullptr) {
    fprintf(stderr, "mosjob-init: criu named no init pid\n");
    return 1;
  }
  std::string ns = std::string("/proc/") + pid + "/ns/pid";
  int fd = open(ns.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0 || setns(fd, CLONE_NEWPID) != 0) {
    fprintf(stderr, "mosjob-init: cannot enter %s: %s\n", ns.c_str(), strerror(errno));
    return 1;
  }
  pid_t child = fork();  // only a child is in the namespace setns named
  if (child < 0) return 1;
  if (child == 0) {
    if (dup2(2, kStatusFd) < 0) _exit(1);  // Die reports there
    MountJobProc();
    _exit(0);
  }
  int status = 0;
  while (waitpid(child, &status, 0) < 0 && errno == EINTR) {
  }
  return WIFEXITED(status) && WEXITSTATUS(status) == 0 ? 0 : 1;
}

namespace {

// Starts the user's program (pid 2) and waits until it has run exec; returns its pid, or
// -1 once a failure to start it is reported.
pid_t StartProgram(const Options& options, TerminalRelay* terminal = nullptr) {
  int exec_pipe[2];
  if (pipe2(exec_pipe, O_CLOEXEC) != 0) Die("pipe");
  pid_t program = fork();
  if (program < 0) Die("fork");
  if (program == 0) {
    close(exec_pipe[0]);
    if (terminal) {
      if (const char* step =
              terminal->AttachProgram(options.terminal.find('2') != std::string::npos)) {
        int err = errno;
        char message[256];
        int n = snprintf(message, sizeof message, "%d %s", err, step);
        (void)!write(exec_pipe[1], message, static_cast<size_t>(n));
        _exit(127);
      }
    }
    RunProgram(options, exec_pipe[1]);
  }
  close(exec_pipe[1]);
  char exec_error[256];
  ssize_t n;
  do {
    n = read(exec_pipe[0], exec_error, sizeof exec_error - 1);
  } while (n < 0 && errno == EINTR);
  close(exec_pipe[0]);
  if (n > 0) {
    exec_error[n] = '\0';
    int err = atoi(exec_error);
    const char* step = strchr(exec_error, ' ');
    waitpid(program, nullptr, 0);
    Report("error " + std::to_string(err) + " cannot " + (step ? step + 1 : "run") + " " +
           options.argv[0] + ": " + strerror(err));
    return -1;
  }
  return program;
}

// mosrun -S: the shim in a process of the job asks for a checkpoint with a queued
// SIGCONT carrying this value (preload/shim_state.h); the daemon takes it.
constexpr int kCheckpointAsk = 0x43484b50;

// A SIGCONT from outside the job's namespace that mosrun did not send (mosrun's are
// numbered): the daemon's, continuing the job after a dump (a checkpoint, a failed move),
// which sends one to each process it means to continue; forwarded, it would continue a
// program the user had stopped (^Z).
bool DaemonsContinue(int sig, int code, pid_t sender) {
  return sig == SIGCONT && code == SI_USER && sender == 0;
}

// Forwards every signal to the program while it lives (to the whole job after), and
// reaps every process of the job; reports once nothing of the job is left.
int Supervise(pid_t program, sigset_t all) {
  job_signals::Seen seen;
  bool program_done = false;
  int program_status = 0;
  for (;;) {
    siginfo_t info;
    int sig = sigwaitinfo(&all, &info);
    if (sig < 0) continue;
    if (sig == SIGCHLD) {
      for (;;) {
        int status;
        pid_t pid = waitpid(-1, &status, WNOHANG);
        if (pid == program) {
          program_done = true;
          program_status = status;
        } else if (pid <= 0) {
          if (pid < 0 && errno == ECHILD && program_done) {
            ReportEnd(program_status);
            return 0;
          }
          break;
        }
      }
      continue;
    }
    if (sig == SIGCONT && info.si_code == SI_QUEUE && info.si_value.sival_int == kCheckpointAsk &&
        info.si_pid > 1) {
      Report("checkpoint");
      continue;
    }
    if (DaemonsContinue(sig, info.si_code, info.si_pid)) continue;
    // A numbered signal is the one it carries; one mosrun sent again (its answer was lost)
    // the program had already.
    sig = seen.Forward(sig, info.si_code, reinterpret_cast<uintptr_t>(info.si_value.sival_ptr));
    if (sig == 0) continue;
    kill(program_done ? -1 : program, sig);
  }
}

bool IsJobControlStop(int sig) {
  return sig == SIGTSTP || sig == SIGTTIN || sig == SIGTTOU;
}

// Supervise for a job with a pseudo-terminal: the same forwarding and reaping, and the
// relay between the terminal's master and the job's stdin and stdout pipes. The program
// starts once the user's terminal modes have come, so that it finds them set; it is
// watched for job-control stops too (^Z), which mosrun is told of, to stop in its turn.
// A stop by SIGSTOP (CRIU's, during a move) is not one: mosrun never hears of it.
int SuperviseTerminal(const Options& options, sigset_t all) {
  int signals = signalfd(-1, &all, SFD_CLOEXEC | SFD_NONBLOCK);
  if (signals < 0) Die("signalfd");
  TerminalRelay terminal = TerminalRelay::Open(options.uid);
  terminal.TakeAsControllingTerminal();
  pid_t program = -1;
  bool program_done = false;
  int program_status = 0;
  job_signals::Seen seen;
  std::vector<int> early;  // signals that came before the program: it gets them at its start
  for (;;) {
    if (program < 0 && terminal.ready()) {
      program = StartProgram(options, &terminal);
      if (program < 0) return 127;
      terminal.CloseSlave();
      for (int sig : early) kill(program, sig);
      early.clear();
    }
    pollfd fds[TerminalRelay::kPollFds + 1];
    int count = terminal.Prepare(fds);
    fds[count] = {signals, POLLIN, 0};
    if (poll(fds, count + 1, -1) < 0) {
      if (errno == EINTR) continue;
      Die("poll");
    }
    terminal.Handle(fds, count);
    if (!fds[count].revents) continue;
    signalfd_siginfo info;
    while (read(signals, &info, sizeof info) == sizeof info) {
      int sig = static_cast<int>(info.ssi_signo);
      if (sig == SIGCHLD) {
        for (;;) {
          int status;
          pid_t pid = waitpid(-1, &status, WNOHANG | WUNTRACED);
          if (pid > 0 && pid == program && WIFSTOPPED(status)) {
            if (IsJobControlStop(WSTOPSIG(status))) terminal.Stopped(WSTOPSIG(status));
          } else if (pid > 0 && pid == program) {
            program_done = true;
            program_status = status;
          } else if (pid <= 0) {
            if (pid < 0 && errno == ECHILD && program_done) {
              terminal.Flush();
              ReportEnd(program_status);
              return 0;
            }
            break;
          }
        }
        continue;
      }
      if (sig == SIGCONT && info.ssi_code == SI_QUEUE &&
          static_cast<int>(info.ssi_int) == kCheckpointAsk && info.ssi_pid > 1) {
        Report("checkpoint");
        continue;
      }
      // A SIGPIPE of the init's own (its stdout pipe's reader gone) is not the program's.
      if (sig == SIGPIPE && info.ssi_pid == 1) continue;
      if (DaemonsContinue(sig, info.ssi_code, static_cast<pid_t>(info.ssi_pid))) continue;
      sig = seen.Forward(sig, info.ssi_code, info.ssi_ptr);
      if (sig == 0) continue;  // a numbered signal forwarded already
      if (program < 0) {
        early.push_back(sig);
        continue;
      }
      kill(program_done ? -1 : program, sig);
      if (sig == SIGCONT) terminal.ContinueForeground();
    }
  }
}

}  // namespace

int main(int argc, char** argv) {
  if ((argc == 3 || argc == 4) && std::string(argv[1]) == "--prepare-root") {
    bool own_network = argc == 4 && std::string(argv[3]) == "--own-network";
    if (argc == 4 && !own_network) {
      errno = EINVAL;
      Die(std::string("unknown option ") + argv[3]);
    }
    return PrepareRoot(argv[2], own_network);
  }
  if (const char* action = getenv("CRTOOLS_SCRIPT_ACTION"); action && argc == 1) {
    return std::string(action) == "setup-namespaces" ? MountProcOf(getenv("CRTOOLS_INIT_PID")) : 0;
  }
  bool entered = argc > 1 && std::string(argv[1]) == kEntered;
  if (entered) {
    argv[1] = argv[0];  // the rest parses as the first time
    ++argv;
    --argc;
  }
  // The job holds no descriptor but its stdio and the status pipe: CRIU must be able to
  // dump it, and a guest must not hold anything of the daemon's.
  syscall(SYS_close_range, kStatusFd + 1, ~0U, 0);
  if (fcntl(kStatusFd, F_GETFD) < 0) return 127;
  Options options = Parse(argc, argv);
  if (const char* terminal = getenv(homeward::terminal::kEnvName)) options.terminal = terminal;
  if (getpid() != 1) {
    errno = EINVAL;
    Die("must be pid 1 of a new PID namespace");
  }
  if (!entered) {
    setsid();  // CRIU dumps a job only if its session leader is inside the namespace.
    SetUpNamespaces(options);
    ReexecInsideRoot(argc, argv);
  }

  sigset_t all;
  sigfillset(&all);
  sigprocmask(SIG_BLOCK, &all, nullptr);
  if (!options.terminal.empty()) return SuperviseTerminal(options, all);
  pid_t program = StartProgram(options);
  if (program < 0) return 127;
  return Supervise(program, all);
}
