// File descriptor ownership and checked whole-buffer I/O.
#include "fd.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <fstream>
#include <memory>
#include <sstream>

#include "error.h"

namespace homeward {

Fd Fd::Open(const std::string& path, int flags, int mode) {
  return Fd(HW_SYSCALL(::open(path.c_str(), flags | O_CLOEXEC, mode), "open {}", path));
}

void Fd::Reset(int fd) {
  if (fd_ >= 0) ::close(fd_);  // close() is never retried on Linux: the fd is gone.
  fd_ = fd;
}

Pipe Pipe::Create(int extra_flags) {
  int fds[2];
  HW_SYSCALL(::pipe2(fds, O_CLOEXEC | extra_flags), "pipe2");
  return Pipe{Fd::Adopt(fds[0]), Fd::Adopt(fds[1])};
}

std::string ReadTextFile(const std::string& path) {
  std::ifstream in(path);
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

void EmptyDirectory(const std::string& dir) {
  std::unique_ptr<DIR, int (*)(DIR*)> entries(::opendir(dir.c_str()), ::closedir);
  if (!entries) return;
  while (dirent* entry = ::readdir(entries.get())) {
    if (entry->d_name[0] == '.') continue;
    ::unlinkat(::dirfd(entries.get()), entry->d_name, 0);
  }
}

void WriteAll(int fd, const void* data, size_t size, const char* what) {
  auto* bytes = static_cast<const char*>(data);
  while (size > 0) {
    ssize_t n = HW_SYSCALL(::write(fd, bytes, size), "write {}", what);
    bytes += n;
    size -= static_cast<size_t>(n);
  }
}

void SendAll(int fd, const void* data, size_t size, const char* what) {
  iovec piece{const_cast<void*>(data), size};
  SendAll(fd, &piece, 1, what);
}

void SendAll(int fd, iovec* iov, size_t count, const char* what) {
  // sendmsg takes at most IOV_MAX (1024) pieces at a time.
  constexpr size_t kMaxPieces = 1024;
  bool socket = true;
  size_t first = 0;
  while (first < count) {
    size_t pieces = std::min(count - first, kMaxPieces);
    ssize_t n;
    if (socket) {
      msghdr message{};
      message.msg_iov = iov + first;
      message.msg_iovlen = pieces;
      n = ::sendmsg(fd, &message, MSG_NOSIGNAL);
      if (n < 0 && errno == ENOTSOCK) {
        socket = false;
        continue;
      }
    } else {
      n = ::writev(fd, iov + first, static_cast<int>(pieces));
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) throw SystemError(errno, what);
    auto sent = static_cast<size_t>(n);
    while (first < count && sent >= iov[first].iov_len) sent -= iov[first++].iov_len;
    if (sent > 0) {
      iov[first].iov_base = static_cast<char*>(iov[first].iov_base) + sent;
      iov[first].iov_len -= sent;
    }
  }
}

size_t ReadSome(int fd, void* data, size_t size, const char* what) {
  return static_cast<size_t>(HW_SYSCALL(::read(fd, data, size), "read {}", what));
}

std::vector<std::string> DirectoryEntries(int dir_fd) {
  std::vector<std::string> names;
  int copy =
      HW_SYSCALL(::openat(dir_fd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC), "read directory");
  std::unique_ptr<DIR, int (*)(DIR*)> dir(::fdopendir(copy), ::closedir);
  if (!dir) {
    ::close(copy);
    throw SystemError(errno, "read directory");
  }
  while (dirent* entry = ::readdir(dir.get())) {
    std::string name = entry->d_name;
    if (name != "." && name != "..") names.push_back(name);
  }
  return names;
}

ssize_t SendWithFd(int socket, const void* data, size_t size, int fd, int flags) {
  iovec iov{const_cast<void*>(data), size};
  msghdr message{};
  message.msg_iov = &iov;
  message.msg_iovlen = 1;
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int))] = {};
  if (fd >= 0) {
    message.msg_control = control;
    message.msg_controllen = sizeof control;
    cmsghdr* rights = CMSG_FIRSTHDR(&message);
    rights->cmsg_level = SOL_SOCKET;
    rights->cmsg_type = SCM_RIGHTS;
    rights->cmsg_len = CMSG_LEN(sizeof(int));
    std::memcpy(CMSG_DATA(rights), &fd, sizeof fd);
  }
  ssize_t sent;
  do {
    sent = ::sendmsg(socket, &message, MSG_NOSIGNAL | flags);
  } while (sent < 0 && errno == EINTR);
  return sent;
}

ssize_t ReceiveWithFd(int socket, void* data, size_t size, int flags, Fd* fd, bool* truncated) {
  // Room for a few descriptors, so that a sender passing more than one cannot leave any
  // open here unseen (the kernel drops what does not fit, MSG_CTRUNC).
  alignas(cmsghdr) char control[CMSG_SPACE(4 * sizeof(int))] = {};
  iovec iov{data, size};
  msghdr message{};
  message.msg_iov = &iov;
  message.msg_iovlen = 1;
  message.msg_control = control;
  message.msg_controllen = sizeof control;
  ssize_t got;
  do {
    got = ::recvmsg(socket, &message, MSG_CMSG_CLOEXEC | flags);
  } while (got < 0 && errno == EINTR);
  fd->Reset();
  if (got < 0) return got;
  for (cmsghdr* c = CMSG_FIRSTHDR(&message); c; c = CMSG_NXTHDR(&message, c)) {
    if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
    size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    for (size_t i = 0; i < count; ++i) {
      int passed;
      std::memcpy(&passed, CMSG_DATA(c) + i * sizeof(int), sizeof passed);
      if (fd->valid()) {
        ::close(passed);
      } else {
        *fd = Fd::Adopt(passed);
      }
    }
  }
  if (truncated) *truncated = (message.msg_flags & MSG_TRUNC) != 0;
  return got;
}

}  // namespace homeward
