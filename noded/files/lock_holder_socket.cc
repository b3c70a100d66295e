// The file service's answer to a job at home's F_GETLK; see lock_holder_socket.h.
#include "lock_holder_socket.h"

#include <dirent.h>
#include <fcntl.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/time.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <sstream>
#include <string>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "fd.h"

#include "lock_holder.h"

namespace homeward {

int OfdHolderAtHome(uint64_t dev, uint64_t ino, short type, int64_t start, int64_t end,
                    pid_t asker) {
  // /proc/locks names the file as MAJ:MIN:INO in hex, hex and decimal.
  std::string file = fmt::format("{:02x}:{:02x}:{}", major(dev), minor(dev), ino);
  DIR* proc = ::opendir("/proc");
  if (!proc) return -1;
  int found = -1;
  while (dirent* process = ::readdir(proc)) {
    char* rest = nullptr;
    long pid = std::strtol(process->d_name, &rest, 10);
    if (pid <= 0 || *rest != '\0' || pid == ::getpid() || pid == asker) continue;
    std::string dir_path = fmt::format("/proc/{}/fdinfo", pid);
    DIR* fds = ::opendir(dir_path.c_str());
    if (!fds) continue;
    while (dirent* fd = ::readdir(fds)) {
      // Only the shim's own descriptions (a program's own OFD lock has no owner to name).
      if (fd->d_name[0] == '.' || std::atoi(fd->d_name) < kShimLockFdBase) continue;
      std::istringstream info(ReadTextFile(dir_path + "/" + fd->d_name));
      std::string line;
      while (found < 0 && std::getline(info, line)) {
        if (line.rfind("lock:", 0) != 0) continue;
        std::istringstream fields(line.substr(5));
        std::string id, kind, mode, access, holder, inode, from, to;
        if (!(fields >> id >> kind >> mode >> access >> holder >> inode >> from >> to)) continue;
        if (kind != "OFDLCK" || inode != file) continue;
        if (type != F_WRLCK && access != "WRITE") continue;  // read locks share
        try {
          int64_t first = std::stoll(from);
          int64_t last = to == "EOF" ? HomeLocks::kToEnd : std::stoll(to);
          if (last < start || first > end) continue;
        } catch (const std::exception&) {
          continue;
        }
        found = HomeIdOf(static_cast<pid_t>(pid));
      }
      if (found >= 0) break;
    }
    ::closedir(fds);
    if (found >= 0) break;
  }
  ::closedir(proc);
  return found;
}

LockHolderSocket::LockHolderSocket(std::shared_ptr<HomeLocks> locks, const std::string& path)
    : locks_(std::move(locks)) {
  sockaddr_un address{};
  address.sun_family = AF_UNIX;
  if (path.size() + 1 > sizeof address.sun_path) return;
  std::memcpy(address.sun_path, path.data(), path.size());
  int fd = ::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd < 0) return;
  Fd listen = Fd::Adopt(fd);
  ::unlink(path.c_str());  // a daemon before this one's
  // Any job may ask (connecting needs write permission on the socket).
  if (::bind(fd, reinterpret_cast<sockaddr*>(&address), sizeof address) != 0 ||
      ::chmod(path.c_str(), 0666) != 0 || ::listen(fd, 64) != 0) {
    spdlog::warn(
        "file service: cannot serve lock holders to jobs at home on {}: {} (their "
        "F_GETLK names a homefs client's lock -1)",
        path, std::strerror(errno));
    return;
  }
  int stop = ::eventfd(0, EFD_CLOEXEC);
  if (stop < 0) return;
  stop_ = Fd::Adopt(stop);
  path_ = path;
  listen_ = std::move(listen);
  thread_ = std::thread([this] { Run(); });
}

LockHolderSocket::~LockHolderSocket() {
  if (!thread_.joinable()) return;
  uint64_t one = 1;
  (void)!::write(stop_.get(), &one, sizeof one);
  thread_.join();
  ::unlink(path_.c_str());
}

void LockHolderSocket::Run() {
  for (;;) {
    pollfd fds[2] = {{listen_.get(), POLLIN, 0}, {stop_.get(), POLLIN, 0}};
    if (::poll(fds, 2, -1) < 0) {
      if (errno == EINTR) continue;
      return;
    }
    if (fds[1].revents) return;
    int fd = ::accept4(listen_.get(), nullptr, nullptr, SOCK_CLOEXEC);
    if (fd < 0) continue;
    Fd client = Fd::Adopt(fd);
    Answer(client.get());
  }
}

void LockHolderSocket::Answer(int fd) {
  // One question, at once: a client that sends nothing holds no one up for long.
  timeval wait{0, 200 * 1000};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &wait, sizeof wait);
  ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &wait, sizeof wait);
  LockHolderQuestion question{};
  if (::recv(fd, &question, sizeof question, 0) != static_cast<ssize_t>(sizeof question)) return;
  if (question.start < 0 || question.end < question.start) return;
  LockHolderAnswer answer{-1};
  answer.pid = locks_
                   ->Holder({question.dev, question.ino}, {nullptr, 0}, question.type,
                            question.start, question.end)
                   .value_or(-1);
  if (answer.pid == -1) {
    ucred peer{};
    socklen_t size = sizeof peer;
    ::getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &peer, &size);
    answer.pid = OfdHolderAtHome(question.dev, question.ino, question.type, question.start,
                                 question.end, peer.pid);
  }
  (void)!::send(fd, &answer, sizeof answer, MSG_NOSIGNAL);
}

}  // namespace homeward
