// Spawning and reaping children, libuv-style: exec errors return through a CLOEXEC pipe.
#include "child_process.h"

#include <dirent.h>
#include <fcntl.h>
#include <linux/sched.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <mutex>
#include <set>
#include <memory>
#include <utility>

#include "error.h"
#include "fd.h"

namespace homeward {

ExitStatus ExitStatus::FromWaitStatus(int wait_status) {
  ExitStatus status;
  if (WIFSIGNALED(wait_status)) {
    status.signaled = true;
    status.signal = WTERMSIG(wait_status);
  } else {
    status.code = WEXITSTATUS(wait_status);
  }
  return status;
}

std::string ExitStatus::Describe() const {
  if (signaled) {
    const char* name = sigabbrev_np(signal);
    return fmt::format("killed by SIG{}", name ? name : std::to_string(signal));
  }
  return fmt::format("exit status {}", code);
}

namespace {

std::vector<char*> CStrings(const std::vector<std::string>& strings) {
  std::vector<char*> result;
  result.reserve(strings.size() + 1);
  for (const auto& s : strings) result.push_back(const_cast<char*>(s.c_str()));
  result.push_back(nullptr);
  return result;
}

struct SharedChild {
  void (*run)(void*);
  void* arg;
};

int SharedChildMain(void* data) {
  auto* child = static_cast<SharedChild*>(data);
  struct sigaction default_action {};
  default_action.sa_handler = SIG_DFL;
  for (int sig = 1; sig < NSIG; ++sig) {
    struct sigaction now;
    if (::sigaction(sig, nullptr, &now) == 0 && now.sa_handler != SIG_DFL &&
        now.sa_handler != SIG_IGN) {
      ::sigaction(sig, &default_action, nullptr);
    }
  }
  child->run(child->arg);
  _exit(127);
}

// Runs in the child: only async-signal-safe calls until exec.
[[noreturn]] void ExecChild(const SpawnOptions& options, const std::vector<int>& wanted,
                            char** argv, char** envp, int error_fd) {
  sigset_t mask;
  if (options.signals_blocked) {
    sigfillset(&mask);
  } else {
    sigemptyset(&mask);
  }
  sigprocmask(SIG_SETMASK, &mask, nullptr);
  if (options.new_session) setsid();
  // Move every source out of the way first, so that no dup2 overwrites a source that a
  // later target still needs.
  int count = static_cast<int>(wanted.size());
  int sources[64];
  if (count > 64) goto fail;
  for (int target = 0; target < count; ++target) {
    sources[target] = wanted[target] < 0 ? -1 : fcntl(wanted[target], F_DUPFD_CLOEXEC, 64 + count);
    if (wanted[target] >= 0 && sources[target] < 0) goto fail;
  }
  for (int target = 0; target < count; ++target) {
    if (sources[target] >= 0 && dup2(sources[target], target) < 0) goto fail;
  }
  if (envp) {
    execvpe(argv[0], argv, envp);
  } else {
    execvp(argv[0], argv);
  }
fail:
  int err = errno;
  (void)!write(error_fd, &err, sizeof err);
  _exit(127);
}

}  // namespace

ChildProcess ChildProcess::Spawn(const SpawnOptions& options) {
  if (options.argv.empty()) Fail(ErrorKind::kInvalidInput, "spawn: empty command line");
  auto argv = CStrings(options.argv);
  std::vector<char*> envp;
  if (options.env) envp = CStrings(*options.env);
  std::vector<int> wanted = {options.stdin_fd, options.stdout_fd, options.stderr_fd};
  wanted.insert(wanted.end(), options.extra_fds.begin(), options.extra_fds.end());
  Pipe errors = Pipe::Create();
  pid_t pid;
  if (options.clone_flags) {
    clone_args args{};
    args.flags = options.clone_flags;
    args.exit_signal = SIGCHLD;
    pid = static_cast<pid_t>(HW_SYSCALL(::syscall(SYS_clone3, &args, sizeof args),
                                        "clone3 for {}", options.argv[0]));
    if (pid == 0) {
      ExecChild(options, wanted, argv.data(), options.env ? envp.data() : nullptr,
                errors.write.get());
    }
  } else {
    struct Exec {
      const SpawnOptions* options;
      const std::vector<int>* wanted;
      char** argv;
      char** envp;
      int error_fd;
    } exec{&options, &wanted, argv.data(), options.env ? envp.data() : nullptr,
           errors.write.get()};
    pid = SpawnSharingMemory(
        [](void* data) {
          auto* e = static_cast<Exec*>(data);
          ExecChild(*e->options, *e->wanted, e->argv, e->envp, e->error_fd);
        },
        &exec);
  }
  ChildProcess child(pid);  // owned from here on
  errors.write.Reset();
  int child_errno = 0;
  if (ReadSome(errors.read.get(), &child_errno, sizeof child_errno, "exec status pipe") > 0) {
    child.Wait();
    throw SystemError(child_errno, fmt::format("cannot run {}", options.argv[0]));
  }
  return child;
}

pid_t SpawnSharingMemory(void (*run)(void*), void* arg) {
  constexpr size_t kStackBytes = 256 * 1024;  // PATH lookups put each candidate on it
  void* stack = ::mmap(nullptr, kStackBytes, PROT_READ | PROT_WRITE,
                       MAP_PRIVATE | MAP_ANONYMOUS | MAP_STACK, -1, 0);
  if (stack == MAP_FAILED) throw SystemError(errno, "map a stack for a child");
  sigset_t all, before;
  sigfillset(&all);
  pthread_sigmask(SIG_SETMASK, &all, &before);
  SharedChild child{run, arg};
  pid_t pid = ::clone(SharedChildMain, static_cast<char*>(stack) + kStackBytes,
                      CLONE_VM | CLONE_VFORK | SIGCHLD, &child);
  int err = errno;
  pthread_sigmask(SIG_SETMASK, &before, nullptr);
  ::munmap(stack, kStackBytes);
  if (pid < 0) throw SystemError(err, "clone a child");
  return pid;
}

ChildProcess::ChildProcess(pid_t pid) : pid_(pid) {
  if (pid_ > 0) OwnChild(pid_);
}

ChildProcess::ChildProcess(ChildProcess&& other) noexcept
    : pid_(std::exchange(other.pid_, -1)) {}

ChildProcess& ChildProcess::operator=(ChildProcess&& other) noexcept {
  if (this != &other) {
    KillAndReap();
    pid_ = std::exchange(other.pid_, -1);
  }
  return *this;
}

ChildProcess::~ChildProcess() { KillAndReap(); }

void ChildProcess::KillAndReap() {
  if (pid_ <= 0) return;
  ::kill(pid_, SIGKILL);
  int status;
  while (::waitpid(pid_, &status, 0) < 0 && errno == EINTR) {
  }
  DisownChild(std::exchange(pid_, -1));
}

ExitStatus ChildProcess::Wait() {
  int status = 0;
  HW_SYSCALL(::waitpid(pid_, &status, 0), "waitpid {}", pid_);
  DisownChild(std::exchange(pid_, -1));
  return ExitStatus::FromWaitStatus(status);
}

std::optional<ExitStatus> ChildProcess::TryWait() {
  int status = 0;
  pid_t done = HW_SYSCALL(::waitpid(pid_, &status, WNOHANG), "waitpid {}", pid_);
  if (done == 0) return std::nullopt;
  DisownChild(std::exchange(pid_, -1));
  return ExitStatus::FromWaitStatus(status);
}

void ChildProcess::Signal(int signo) {
  if (pid_ > 0) HW_SYSCALL(::kill(pid_, signo), "kill {} {}", pid_, signo);
}

namespace {

struct Children {
  std::mutex mutex;
  std::set<pid_t> owned;
  int adoptions_pending = 0;
  std::set<pid_t> orphans_seen;  // unowned zombies at the previous ReapOrphans
};

Children& OurChildren() {
  static Children children;
  return children;
}

// Our children that are zombies, with their comm: /proc/<pid>/stat, "pid (comm) state ppid".
std::vector<std::pair<pid_t, std::string>> ZombieChildren() {
  std::vector<std::pair<pid_t, std::string>> zombies;
  const pid_t self = ::getpid();
  std::unique_ptr<DIR, int (*)(DIR*)> proc(::opendir("/proc"), ::closedir);
  if (!proc) return zombies;
  while (dirent* entry = ::readdir(proc.get())) {
    char* end = nullptr;
    long pid = std::strtol(entry->d_name, &end, 10);
    if (pid <= 0 || *end != '\0') continue;
    std::ifstream in(fmt::format("/proc/{}/stat", pid));
    std::string stat((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    size_t open = stat.find('('), close = stat.rfind(')');
    if (open == std::string::npos || close == std::string::npos || close + 4 >= stat.size()) {
      continue;  // gone meanwhile
    }
    char state = stat[close + 2];
    long parent = std::strtol(stat.c_str() + close + 4, nullptr, 10);
    if (state == 'Z' && parent == self) {
      zombies.emplace_back(static_cast<pid_t>(pid), stat.substr(open + 1, close - open - 1));
    }
  }
  return zombies;
}

}  // namespace

void OwnChild(pid_t pid) {
  Children& children = OurChildren();
  std::lock_guard lock(children.mutex);
  children.owned.insert(pid);
}

void DisownChild(pid_t pid) {
  Children& children = OurChildren();
  std::lock_guard lock(children.mutex);
  children.owned.erase(pid);
}

AdoptionPending::AdoptionPending() {
  Children& children = OurChildren();
  std::lock_guard lock(children.mutex);
  ++children.adoptions_pending;
}

AdoptionPending::~AdoptionPending() {
  Children& children = OurChildren();
  std::lock_guard lock(children.mutex);
  --children.adoptions_pending;
}

std::vector<ReapedOrphan> ReapOrphans() {
  // Most calls find no zombie child at all: waitid tells so without reaping one, and the
  // walk over /proc (a read per process of the machine) is skipped.
  siginfo_t info{};
  if (::waitid(P_ALL, 0, &info, WEXITED | WNOHANG | WNOWAIT) != 0 || info.si_pid == 0) {
    std::lock_guard lock(OurChildren().mutex);
    OurChildren().orphans_seen.clear();
    return {};
  }
  auto zombies = ZombieChildren();
  Children& children = OurChildren();
  std::lock_guard lock(children.mutex);
  std::vector<ReapedOrphan> reaped;
  std::set<pid_t> seen;
  for (auto& [pid, command] : zombies) {
    if (children.owned.count(pid)) continue;
    if (children.adoptions_pending > 0 || !children.orphans_seen.count(pid)) {
      seen.insert(pid);
      continue;
    }
    int status = 0;
    // Under the lock: no Own of this pid can come between (a zombie's pid is not reused).
    if (::waitpid(pid, &status, WNOHANG) == pid) {
      reaped.push_back({pid, std::move(command), ExitStatus::FromWaitStatus(status)});
    }
  }
  children.orphans_seen = std::move(seen);
  return reaped;
}

CommandResult RunCommand(const std::vector<std::string>& argv) {
  Pipe out = Pipe::Create();
  SpawnOptions options;
  options.argv = argv;
  options.stdout_fd = out.write.get();
  ChildProcess child = ChildProcess::Spawn(options);
  out.write.Reset();
  CommandResult result;
  char buffer[4096];
  while (size_t n = ReadSome(out.read.get(), buffer, sizeof buffer, argv[0].c_str())) {
    result.output.append(buffer, n);
  }
  result.status = child.Wait();
  return result;
}

}  // namespace homeward
