// Fd: the single owner of a file descriptor. Move-only; closes on destruction.
#pragma once

#include <sys/types.h>
#include <sys/uio.h>

#include <string>
#include <utility>
#include <vector>

namespace homeward {

class Fd {
 public:
  Fd() = default;
  // Takes ownership of `fd` (which may be -1 for "none").
  static Fd Adopt(int fd) { return Fd(fd); }
  // Opens `path`, throwing an Error that names the path on failure. O_CLOEXEC is added.
  static Fd Open(const std::string& path, int flags, int mode = 0);

  Fd(Fd&& other) noexcept : fd_(std::exchange(other.fd_, -1)) {}
  Fd& operator=(Fd&& other) noexcept {
    if (this != &other) Reset(std::exchange(other.fd_, -1));
    return *this;
  }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  ~Fd() { Reset(); }

  int get() const { return fd_; }
  bool valid() const { return fd_ >= 0; }
  // Gives up ownership and returns the descriptor.
  int Release() { return std::exchange(fd_, -1); }
  // Closes the owned descriptor (if any) and owns `fd` instead.
  void Reset(int fd = -1);

 private:
  explicit Fd(int fd) : fd_(fd) {}
  int fd_ = -1;
};

// A pipe's two ends, both close-on-exec.
struct Pipe {
  Fd read;
  Fd write;
  static Pipe Create(int extra_flags = 0);
};

// The whole of a (small, text) file such as /proc/<pid>/status; empty when it cannot be
// read, as for a process that is gone.
std::string ReadTextFile(const std::string& path);

// The names in the directory open as `dir_fd` (not "." nor ".."), read through a
// descriptor of its own, so `dir_fd`'s position is untouched. Throws on error.
std::vector<std::string> DirectoryEntries(int dir_fd);

// Writes all of `data`, retrying short writes and EINTR; throws on error.
void WriteAll(int fd, const void* data, size_t size, const char* what);
// Sends all of `data` on a stream socket, retrying short sends and EINTR; throws a
// SystemError naming `what`. Sent with MSG_NOSIGNAL: a peer gone is an error (EPIPE),
// never a SIGPIPE that kills the process. A descriptor that is not a socket (a pipe, a
// file) is written with write().
void SendAll(int fd, const void* data, size_t size, const char* what);
// The same for a gather list of `count` pieces, sent with as few system calls as the
// socket takes. `iov` is used up: its pieces are advanced past what was sent.
void SendAll(int fd, iovec* iov, size_t count, const char* what);
// Removes the files (not the directories) in `dir`, as far as it can; a missing `dir` is
// empty already.
void EmptyDirectory(const std::string& dir);
// Reads up to `size` bytes, retrying EINTR; returns 0 at end of file; throws on error.
size_t ReadSome(int fd, void* data, size_t size, const char* what);

// One message on a unix socket with a descriptor passed along (SCM_RIGHTS; -1: none),
// MSG_NOSIGNAL and `flags`, EINTR retried: the bytes sent, or -1 (errno).
ssize_t SendWithFd(int socket, const void* data, size_t size, int fd, int flags = 0);
// One message into `data` (at most `size` bytes), `flags` as for recvmsg, EINTR retried,
// with the first descriptor it carried in `*fd` (close-on-exec; every other one passed is
// closed): the bytes, 0 at the end, or -1 (errno). `*truncated`: the message was longer.
ssize_t ReceiveWithFd(int socket, void* data, size_t size, int flags, Fd* fd,
                      bool* truncated = nullptr);

}  // namespace homeward
