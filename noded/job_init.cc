// mosjob-init: pid 1 of every job. The daemon starts it in fresh PID, mount and UTS
// namespaces; it gives the job its home's hostname and a /proc of its own, roots it in
// the home's tree when the job runs away from home, starts the user's program (pid 2)
// with the user's credentials, forwards signals to it, reaps every orphan of the job,
// and reports the program's end on fd 3. It links nothing of the daemon.
//
//   mosjob-init --home NAME --uid U --gid G [--groups G1,G2] [--umask OCTAL]
//               [--cwd DIR] [--root DIR] [--preload LIB] [--rlimit RES=SOFT:HARD]...
//               -- PROGRAM ARGS...
//
// mosjob-init's own environment is the daemon's making; the program gets the caller's
// variables (passed behind the HOMEWARD_USER_ENV: prefix) once it runs as the user.
// Reports on fd 3, one line:
//   "exit CODE" | "signal SIG" | "error ERRNO what failed"
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <linux/close_range.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <string>
#include <vector>

namespace {

constexpr int kStatusFd = 3;
// The caller's environment travels to the program behind this prefix (noded/job.cc).
constexpr const char* kUserEnvPrefix = "HOMEWARD_USER_ENV:";

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
  std::vector<char*> argv;
};

void Report(const std::string& line) {
  std::string text = line + "\n";
  (void)!write(kStatusFd, text.data(), text.size());
}

[[noreturn]] void Die(const std::string& what) {
  int err = errno;
  Report("error " + std::to_string(err) + " " + what + ": " + strerror(err));
  _exit(127);
}

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

bool IsRealDirectory(const std::string& path) {
  struct stat st;
  return lstat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

// Roots the job in `root` (the home's tree as this node sees it), keeping the operating
// system's own paths local: the cluster is homogeneous in its OS, as MOSIX assumes.
void EnterHomeTree(const std::string& root) {
  static const char* kLocalPaths[] = {"/usr", "/lib",  "/lib32", "/lib64", "/libx32",
                                      "/bin", "/sbin", "/dev",   "/sys",   "/proc"};
  for (const char* path : kLocalPaths) {
    std::string target = root + path;
    if (!IsRealDirectory(path) || !IsRealDirectory(target)) continue;
    if (mount(path, target.c_str(), nullptr, MS_BIND | MS_REC, nullptr) != 0) {
      Die(std::string("bind ") + path + " into the home tree");
    }
  }
  if (chdir(root.c_str()) != 0) Die("enter the home tree " + root);
  // pivot_root(".", ".") stacks the old root on the new one; detaching it leaves only
  // the home tree, so nothing of this node's own files stays reachable.
  if (syscall(SYS_pivot_root, ".", ".") != 0) Die("pivot_root to " + root);
  if (umount2(".", MNT_DETACH) != 0) Die("detach the node's own root");
  if (chdir("/") != 0) Die("chdir /");
}

void SetUpNamespaces(const Options& options) {
  if (sethostname(options.home.data(), options.home.size()) != 0) Die("sethostname");
  if (mount(nullptr, "/", nullptr, MS_REC | MS_PRIVATE, nullptr) != 0) {
    Die("make the job's mounts private");
  }
  // The job keeps the node's /proc rather than one of its own pid namespace: CRIU runs
  // in the job's mount namespace to dump it and needs a /proc that shows its own pids.
  // /proc/self is still the job's process; the shim turns /proc/<own home id> into it.
  if (options.root != "/") EnterHomeTree(options.root);
}

// A guest's init was started from the node's own tree, which pivot_root has just hidden;
// CRIU cannot dump a process whose executable lies on a mount outside its namespace. The
// same path inside the home tree holds the same program (the OS paths are the node's own,
// and the cluster runs one installation), so the init runs itself again from there, as a
// moved guest's init already does. If the path is not there, the job runs on, unmovable.
void ReexecInsideRoot(int argc, char** argv) {
  std::vector<char*> again(argv, argv + argc + 1);
  static char kRoot[] = "/";
  for (int i = 1; i + 1 < argc; ++i) {
    if (std::string(argv[i]) == "--") break;
    if (std::string(argv[i]) == "--root") again[i + 1] = kRoot;
  }
  execv(argv[0], again.data());
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
  for (const Limit& limit : options.limits) {
    rlimit value{limit.soft, limit.hard};
    if (setrlimit(limit.resource, &value) != 0) fail("set resource limits");
  }
  if (setgroups(options.groups.size(), options.groups.data()) != 0) fail("set groups");
  if (setresgid(options.gid, options.gid, options.gid) != 0) fail("set gid");
  if (setresuid(options.uid, options.uid, options.uid) != 0) fail("set uid");
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

// `mosjob-init --prepare-root ROOT`: makes a mount namespace like a guest job's (the
// home's tree as root, the OS paths local) for CRIU to restore a moved job into, says
// "ready" on fd 3, and holds the namespace until its stdin closes.
int PrepareRoot(const char* root) {
  if (unshare(CLONE_NEWNS) != 0) Die("unshare the mount namespace");
  if (mount(nullptr, "/", nullptr, MS_REC | MS_PRIVATE, nullptr) != 0) {
    Die("make the mounts private");
  }
  if (std::string(root) != "/") EnterHomeTree(root);
  Report("ready");
  char byte;
  while (read(0, &byte, 1) > 0) {
  }
  return 0;
}

int main(int argc, char** argv) {
  if (argc == 3 && std::string(argv[1]) == "--prepare-root") return PrepareRoot(argv[2]);
  // The job holds no descriptor but its stdio and the status pipe: CRIU must be able to
  // dump it, and a guest must not hold anything of the daemon's.
  syscall(SYS_close_range, kStatusFd + 1, ~0U, 0);
  if (fcntl(kStatusFd, F_GETFD) < 0) return 127;
  Options options = Parse(argc, argv);
  if (getpid() != 1) {
    errno = EINVAL;
    Die("must be pid 1 of a new PID namespace");
  }
  setsid();  // CRIU dumps a job only if its session leader is inside the namespace.
  SetUpNamespaces(options);
  if (options.root != "/") ReexecInsideRoot(argc, argv);

  sigset_t all;
  sigfillset(&all);
  sigprocmask(SIG_BLOCK, &all, nullptr);

  int exec_pipe[2];
  if (pipe2(exec_pipe, O_CLOEXEC) != 0) Die("pipe");
  pid_t program = fork();
  if (program < 0) Die("fork");
  if (program == 0) {
    close(exec_pipe[0]);
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
    return 127;
  }

  // Forward every signal to the program while it lives (to the whole job after), and
  // reap every process of the job; report once nothing of the job is left.
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
            if (WIFSIGNALED(program_status)) {
              Report("signal " + std::to_string(WTERMSIG(program_status)));
            } else {
              Report("exit " + std::to_string(WEXITSTATUS(program_status)));
            }
            return 0;
          }
          break;
        }
      }
      continue;
    }
    kill(program_done ? -1 : program, sig);
  }
}
