// File descriptor ownership and checked whole-buffer I/O.
#include "fd.h"

#include <dirent.h>
#include <fcntl.h>
#include <unistd.h>

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

}  // namespace homeward
