// The keeper of a job's pipe ends across daemon restarts (fd_keeper.h).
#include "fd_keeper.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <string>

#include <fmt/format.h>

#include "error.h"

namespace homeward {

namespace {

// The kept descriptors, after the command socket's two ends (fd_keeper.h).
constexpr int kFirstKept = kKeeperDaemonEndFd + 1;

}  // namespace

uint64_t ProcessStartTime(pid_t pid) {
  std::string stat = ReadTextFile(fmt::format("/proc/{}/stat", pid));
  size_t close = stat.rfind(')');
  if (close == std::string::npos) return 0;
  // Fields after "pid (comm)": state is field 3, starttime field 22.
  const char* at = stat.c_str() + close + 2;
  for (int field = 3; field < 22 && at; ++field) {
    at = std::strchr(at, ' ');
    if (at) ++at;
  }
  return at ? std::strtoull(at, nullptr, 10) : 0;
}

FdKeeper::~FdKeeper() = default;

SpawnedKeeper SpawnKeeper(const char* flag, const std::vector<int>& fds) {
  int pair[2];
  HW_SYSCALL(::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, pair), "keeper socket");
  Fd keeper_end = Fd::Adopt(pair[0]);
  Fd daemon_end = Fd::Adopt(pair[1]);
  Fd null = Fd::Open("/dev/null", O_RDWR);
  SpawnOptions options;
  options.argv = {"/proc/self/exe", flag};
  options.stdin_fd = null.get();
  options.stdout_fd = null.get();
  options.stderr_fd = null.get();
  options.new_session = true;
  options.extra_fds = {keeper_end.get(), daemon_end.get()};
  options.extra_fds.insert(options.extra_fds.end(), fds.begin(), fds.end());
  return SpawnedKeeper{ChildProcess::Spawn(options), std::move(daemon_end)};
}

Fd OpenKeeper(pid_t pid, uint64_t start_time) {
  Fd pidfd = Fd::Adopt(static_cast<int>(::syscall(SYS_pidfd_open, pid, 0)));
  if (!pidfd.valid() || start_time == 0 || ProcessStartTime(pid) != start_time) return Fd();
  return pidfd;
}

FdKeeper FdKeeper::Spawn(const std::vector<int>& fds) {
  SpawnedKeeper spawned = SpawnKeeper("--keep-fds", fds);
  FdKeeper keeper;
  keeper.pid_ = spawned.child.pid();
  keeper.child_.emplace(std::move(spawned.child));
  keeper.start_time_ = ProcessStartTime(keeper.pid_);
  keeper.pidfd_ = Fd::Adopt(HW_SYSCALL(static_cast<int>(::syscall(SYS_pidfd_open, keeper.pid_, 0)),
                                       "pidfd_open keeper {}", keeper.pid_));
  keeper.command_ = std::move(spawned.command);
  return keeper;
}

FdKeeper FdKeeper::Reclaim(pid_t pid, uint64_t start_time, size_t count, std::vector<Fd>* fds) {
  FdKeeper keeper;
  keeper.pidfd_ = OpenKeeper(pid, start_time);
  if (!keeper.pidfd_.valid()) {
    Fail(ErrorKind::kNotFound, "the keeper of the job's pipes ({}) is gone", pid);
  }
  keeper.pid_ = pid;
  keeper.start_time_ = start_time;
  auto take = [&](int target) {
    int fd = static_cast<int>(::syscall(SYS_pidfd_getfd, keeper.pidfd_.get(), target, 0));
    if (fd < 0 && errno != EBADF) {
      throw SystemError(errno, fmt::format("take descriptor {} back from keeper {}", target, pid));
    }
    return Fd::Adopt(fd);
  };
  keeper.command_ = take(kKeeperDaemonEndFd);
  if (!keeper.command_.valid()) Fail(ErrorKind::kFailed, "keeper {} has no command socket", pid);
  fds->clear();
  for (size_t i = 0; i < count; ++i) fds->push_back(take(kFirstKept + static_cast<int>(i)));
  return keeper;
}

void FdKeeper::Drop(size_t index) {
  if (!command_.valid()) return;
  std::string command = fmt::format("close {}", kFirstKept + static_cast<int>(index));
  if (::send(command_.get(), command.data(), command.size(), MSG_NOSIGNAL) < 0) {
    throw SystemError(errno, "tell the keeper of the job's pipes to close one");
  }
}

void FdKeeper::Stop() {
  if (pid_ <= 0) return;
  ::syscall(SYS_pidfd_send_signal, pidfd_.get(), SIGKILL, nullptr, 0);
  child_.reset();  // reaped when ours; another daemon's is reaped by whoever adopted it
  pidfd_.Reset();
  command_.Reset();
  pid_ = -1;
}

int FdKeeperMain() {
  ::prctl(PR_SET_NAME, "mosfdkeeper");
  // It outlives the daemon on purpose: nothing but SIGKILL (from a daemon, or from whoever
  // stops the node) ends it.
  for (int signo : {SIGHUP, SIGINT, SIGTERM, SIGPIPE, SIGUSR1, SIGUSR2}) ::signal(signo, SIG_IGN);
  char buffer[64];
  for (;;) {
    ssize_t n = ::recv(kKeeperCommandFd, buffer, sizeof buffer - 1, 0);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return 1;  // cannot happen while it holds the other end itself
    buffer[n] = 0;
    int fd = -1;
    if (std::sscanf(buffer, "close %d", &fd) == 1 && fd >= kFirstKept) ::close(fd);
  }
}

}  // namespace homeward
