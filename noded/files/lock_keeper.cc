// The keeper of the file service's lock descriptions across daemon restarts (lock_keeper.h).
#include "lock_keeper.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/file.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <map>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "error.h"
#include "fd_keeper.h"

namespace homeward {

namespace {

constexpr size_t kMaxMessage = 512;
// How long a keeper whose daemon is gone waits for the next one with the locks it holds.
constexpr int kOrphanSeconds = 600;

std::string Text(const LockKeeper::Meta& m) {
  char kind = m.kind == LockKeeper::Kind::kPosix   ? 'P'
              : m.kind == LockKeeper::Kind::kFlock ? 'F'
                                                   : 'X';
  return fmt::format("{} {} {} {} {} {} {} {}", kind, m.client, m.owner, m.inode.first,
                     m.inode.second, m.pid, m.access, m.host.empty() ? "-" : m.host);
}

bool Parse(const char* text, LockKeeper::Meta* m) {
  char kind = 0;
  unsigned long long client = 0, owner = 0, dev = 0, ino = 0;
  char host[256] = {};
  if (std::sscanf(text, "%c %llu %llu %llu %llu %d %d %255s", &kind, &client, &owner, &dev, &ino,
                  &m->pid, &m->access, host) != 8) {
    return false;
  }
  m->kind = kind == 'P'   ? LockKeeper::Kind::kPosix
            : kind == 'F' ? LockKeeper::Kind::kFlock
                          : LockKeeper::Kind::kParked;
  m->client = client;
  m->owner = owner;
  m->inode = {dev, ino};
  m->host = std::strcmp(host, "-") == 0 ? "" : host;
  return true;
}

// One message, with the descriptor it carries (-1: none) in `fd`. 0 at an end, -1 on error.
ssize_t ReceiveMessage(int socket, char* buffer, size_t size, int* fd) {
  Fd passed;
  ssize_t n = ReceiveWithFd(socket, buffer, size - 1, 0, &passed);
  *fd = passed.Release();
  if (n >= 0) buffer[n] = '\0';
  return n;
}

int SendMessage(int socket, const std::string& text, int fd) {
  return SendWithFd(socket, text.data(), text.size(), fd) < 0 ? errno : 0;
}

}  // namespace

LockKeeper::Kept::Kept(std::weak_ptr<LockKeeper> keeper, uint64_t serial, Fd fd)
    : keeper_(std::move(keeper)), serial_(serial), fd_(std::move(fd)) {}

LockKeeper::Kept::~Kept() {
  if (released_) return;  // the job's own now: not unlocked, and dropped already
  // The daemon is stopping (detached, or the keeper itself gone with the service): the
  // keeper holds the locks on for the next daemon, so nothing is unlocked here.
  auto keeper = keeper_.lock();
  if (!keeper || keeper->detached()) return;
  // Nothing of the service wants these locks any more: they go now, not when the keeper
  // gets to its copy (a close followed by a lock elsewhere must find them free).
  if (fd_.valid()) {
    struct flock all {};
    all.l_type = F_UNLCK;
    all.l_whence = SEEK_SET;
    ::fcntl(fd_.get(), F_OFD_SETLK, &all);
    ::flock(fd_.get(), LOCK_UN);
  }
  keeper->Send(fmt::format("drop {}", serial_));
}

bool LockKeeper::detached() {
  std::lock_guard lock(mutex_);
  return detached_;
}

void LockKeeper::Kept::Release() {
  if (released_.exchange(true)) return;
  if (auto keeper = keeper_.lock(); keeper && !keeper->detached()) {
    keeper->Send(fmt::format("drop {}", serial_));
  }
}

void LockKeeper::Kept::Describe(const Meta& meta) {
  if (auto keeper = keeper_.lock()) keeper->Send(fmt::format("meta {} {}", serial_, Text(meta)));
}

std::shared_ptr<LockKeeper> LockKeeper::Start(const std::string& record) {
  std::shared_ptr<LockKeeper> keeper(new LockKeeper);
  try {
    std::string found = ReadTextFile(record);
    long pid = 0;
    unsigned long long start = 0;
    if (std::sscanf(found.c_str(), "%ld %llu", &pid, &start) == 2 && pid > 0) {
      Fd held = OpenKeeper(static_cast<pid_t>(pid), start);
      if (held.valid()) {
        int command =
            static_cast<int>(::syscall(SYS_pidfd_getfd, held.get(), kKeeperDaemonEndFd, 0));
        if (command >= 0) {
          keeper->command_ = Fd::Adopt(command);
          keeper->Reclaim();
          return keeper;
        }
      }
    }
  } catch (const std::exception& e) {
    spdlog::debug("file service: no lock keeper from before: {}", e.what());
  }
  try {
    SpawnedKeeper spawned = SpawnKeeper("--keep-locks", {});
    pid_t pid = spawned.child.pid();
    keeper->child_.emplace(std::move(spawned.child));
    keeper->command_ = std::move(spawned.command);
    std::string text = fmt::format("{} {}\n", pid, ProcessStartTime(pid));
    std::string temporary = record + ".new";
    {
      Fd out = Fd::Adopt(
          HW_SYSCALL(::open(temporary.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600),
                     "create {}", temporary));
      HW_SYSCALL(::write(out.get(), text.data(), text.size()), "write {}", temporary);
    }
    HW_SYSCALL(::rename(temporary.c_str(), record.c_str()), "rename {}", temporary);
    spdlog::info("file service: lock keeper {} started", pid);
  } catch (const std::exception& e) {
    spdlog::warn(
        "file service: no lock keeper ({}): a restart of this daemon drops the locks "
        "its clients hold",
        e.what());
    keeper->command_.Reset();
  }
  return keeper;
}

void LockKeeper::Reclaim() {
  timeval limit{5, 0};
  ::setsockopt(command_.get(), SOL_SOCKET, SO_RCVTIMEO, &limit, sizeof limit);
  // The keeper serves this daemon from now on (and ends a while after it, see below).
  SendMessage(command_.get(), fmt::format("daemon {}", ::getpid()), -1);
  if (int err = SendMessage(command_.get(), "list", -1)) {
    throw SystemError(err, "ask the lock keeper what it holds");
  }
  char buffer[kMaxMessage];
  size_t dropped = 0;
  for (;;) {
    int fd = -1;
    ssize_t n = ReceiveMessage(command_.get(), buffer, sizeof buffer, &fd);
    Fd received = Fd::Adopt(fd);
    if (n <= 0) throw SystemError(n < 0 ? errno : EPIPE, "read what the lock keeper holds");
    if (std::strcmp(buffer, "end") == 0) break;
    unsigned long long serial = 0;
    int at = 0;
    Orphan orphan;
    if (std::sscanf(buffer, "kept %llu %n", &serial, &at) != 1 || !received.valid() ||
        !Parse(buffer + at, &orphan.meta)) {
      continue;
    }
    next_serial_ = std::max<uint64_t>(next_serial_, serial + 1);
    orphan.kept = std::make_shared<Kept>(weak_from_this(), serial, std::move(received));
    if (orphan.meta.kind == Kind::kParked || orphan.meta.client == 0) {
      ++dropped;  // its last reference goes here: its locks with it
      continue;
    }
    orphans_.push_back(std::move(orphan));
  }
  spdlog::info(
      "file service: the lock keeper held {} descriptions from before the restart "
      "({} of moving jobs dropped)",
      orphans_.size() + dropped, dropped);
}

LockKeeper::~LockKeeper() {
  orphans_.clear();
}

std::shared_ptr<LockKeeper::Kept> LockKeeper::Keep(int fd, const Meta& meta) {
  int copy = ::fcntl(fd, F_DUPFD_CLOEXEC, 0);
  if (copy < 0) return nullptr;
  uint64_t serial;
  {
    std::lock_guard lock(mutex_);
    serial = next_serial_++;
  }
  auto kept = std::make_shared<Kept>(weak_from_this(), serial, Fd::Adopt(copy));
  Send(fmt::format("keep {} {}", serial, Text(meta)), kept->fd());
  return kept;
}

std::vector<LockKeeper::Orphan> LockKeeper::Adopt(uint64_t client) {
  std::vector<Orphan> taken;
  std::lock_guard lock(mutex_);
  for (auto it = orphans_.begin(); it != orphans_.end();) {
    if (client != 0 && it->meta.client == client) {
      taken.push_back(std::move(*it));
      it = orphans_.erase(it);
    } else {
      ++it;
    }
  }
  return taken;
}

void LockKeeper::DropOrphans(const std::string& host) {
  std::vector<Orphan> gone;  // released outside the lock (their drops take it)
  {
    std::lock_guard lock(mutex_);
    for (auto it = orphans_.begin(); it != orphans_.end();) {
      if (it->meta.host == host) {
        gone.push_back(std::move(*it));
        it = orphans_.erase(it);
      } else {
        ++it;
      }
    }
  }
  if (!gone.empty()) {
    spdlog::info("file service: {} locks kept across the restart for {} dropped (node dead)",
                 gone.size(), host);
  }
}

void LockKeeper::Detach() {
  std::lock_guard lock(mutex_);
  detached_ = true;
  command_.Reset();
  // The daemon exits: the keeper must not go with it (a ChildProcess kills its child).
  if (child_) new ChildProcess(std::move(*child_));  // NOLINT: left running on purpose
  child_.reset();
}

void LockKeeper::Send(const std::string& text, int fd) {
  std::lock_guard lock(mutex_);
  if (detached_ || !command_.valid()) return;
  if (int err = SendMessage(command_.get(), text, fd)) {
    spdlog::warn("file service: the lock keeper did not take '{}': {}", text, std::strerror(err));
  }
}

int LockKeeperMain() {
  ::prctl(PR_SET_NAME, "moslockkeeper");
  // It outlives its daemon on purpose: for a while, while it holds locks for the next one.
  for (int signo : {SIGHUP, SIGINT, SIGTERM, SIGPIPE, SIGUSR1, SIGUSR2}) ::signal(signo, SIG_IGN);
  // The daemon it serves (its parent first, then whoever took it back): once that daemon
  // is gone, a keeper holding nothing ends, and one holding locks waits kOrphanSeconds for
  // the next daemon, then ends (and its locks go with it).
  Fd daemon = Fd::Adopt(static_cast<int>(::syscall(SYS_pidfd_open, ::getppid(), 0)));
  std::map<uint64_t, std::pair<int, std::string>> kept;
  char buffer[kMaxMessage];
  for (;;) {
    pollfd polled[2] = {{kKeeperCommandFd, POLLIN, 0}, {daemon.get(), POLLIN, 0}};
    int timeout = daemon.valid() ? -1 : kOrphanSeconds * 1000;
    int ready = ::poll(polled, daemon.valid() ? 2 : 1, timeout);
    if (ready < 0) continue;   // EINTR
    if (ready == 0) return 0;  // no daemon came back for what it holds
    if (daemon.valid() && (polled[1].revents & (POLLIN | POLLHUP))) {
      daemon.Reset();
      if (kept.empty()) return 0;
      continue;
    }
    if (!(polled[0].revents & POLLIN)) continue;
    int fd = -1;
    ssize_t n = ReceiveMessage(kKeeperCommandFd, buffer, sizeof buffer, &fd);
    if (n < 0) continue;
    if (n == 0) return 1;  // cannot happen while it holds the other end itself
    unsigned long long serial = 0;
    int at = 0;
    long pid = 0;
    if (std::sscanf(buffer, "keep %llu %n", &serial, &at) == 1 && fd >= 0) {
      if (auto it = kept.find(serial); it != kept.end()) ::close(it->second.first);
      kept[serial] = {fd, buffer + at};
      continue;
    }
    if (fd >= 0) ::close(fd);
    if (std::sscanf(buffer, "meta %llu %n", &serial, &at) == 1) {
      if (auto it = kept.find(serial); it != kept.end()) it->second.second = buffer + at;
    } else if (std::sscanf(buffer, "drop %llu", &serial) == 1) {
      if (auto it = kept.find(serial); it != kept.end()) {
        ::close(it->second.first);
        kept.erase(it);
      }
    } else if (std::sscanf(buffer, "daemon %ld", &pid) == 1) {
      daemon = Fd::Adopt(static_cast<int>(::syscall(SYS_pidfd_open, static_cast<pid_t>(pid), 0)));
    } else if (std::strcmp(buffer, "list") == 0) {
      for (auto& [number, entry] : kept) {
        SendMessage(kKeeperCommandFd, fmt::format("kept {} {}", number, entry.second), entry.first);
      }
      SendMessage(kKeeperCommandFd, "end", -1);
    }
  }
}

}  // namespace homeward
