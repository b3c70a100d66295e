// Spawning and reaping children, libuv-style: exec errors return through a CLOEXEC pipe.
#include "child_process.h"

#include <fcntl.h>
#include <linux/sched.h>
#include <signal.h>
#include <sys/syscall.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

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

// Runs in the forked child: only async-signal-safe calls until exec.
[[noreturn]] void ExecChild(const SpawnOptions& options, const std::vector<int>& wanted,
                            char** argv, char** envp, int error_fd) {
  sigset_t all;
  sigemptyset(&all);
  sigprocmask(SIG_SETMASK, &all, nullptr);
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
  } else {
    pid = HW_SYSCALL(::fork(), "fork for {}", options.argv[0]);
  }
  if (pid == 0) {
    ExecChild(options, wanted, argv.data(), options.env ? envp.data() : nullptr,
              errors.write.get());
  }
  ChildProcess child(pid);
  errors.write.Reset();
  int child_errno = 0;
  if (ReadSome(errors.read.get(), &child_errno, sizeof child_errno, "exec status pipe") > 0) {
    child.Wait();
    throw SystemError(child_errno, fmt::format("cannot run {}", options.argv[0]));
  }
  return child;
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
  pid_ = -1;
}

ExitStatus ChildProcess::Wait() {
  int status = 0;
  HW_SYSCALL(::waitpid(pid_, &status, 0), "waitpid {}", pid_);
  pid_ = -1;
  return ExitStatus::FromWaitStatus(status);
}

std::optional<ExitStatus> ChildProcess::TryWait() {
  int status = 0;
  pid_t done = HW_SYSCALL(::waitpid(pid_, &status, WNOHANG), "waitpid {}", pid_);
  if (done == 0) return std::nullopt;
  pid_ = -1;
  return ExitStatus::FromWaitStatus(status);
}

void ChildProcess::Signal(int signo) {
  if (pid_ > 0) HW_SYSCALL(::kill(pid_, signo), "kill {} {}", pid_, signo);
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
