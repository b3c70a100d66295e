// libc functions whose results carry pids in memory that no system call trap can reach
// cheaply: reads of a signalfd (read is too hot to trap; the shim marks the descriptors
// signalfd made) and unix socket credentials passed with recvmsg, sendmsg, recvmmsg and
// sendmmsg. Each calls libc's own function (keeping its cancellation points) and
// translates around it.
#undef _FILE_OFFSET_BITS  // fcntl and fcntl64, preadv and preadv64 are each defined here.

#include <dirent.h>
#include <dlfcn.h>
#include <fcntl.h>
#include <sys/file.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <unistd.h>

#include <cstdarg>

#include <atomic>
#include <cerrno>
#include <cstdint>

#include "c_boundary.h"
#include "credentials.h"
#include "home_ids.h"
#include "locks_come_home.h"
#include "next_symbol.h"
#include "posix_locks.h"
#include "raw_syscall.h"
#include "shim_state.h"

namespace {

using homeward::preload::RawSyscall;
using homeward::preload::State;

using homeward::preload::Next;

// The descriptors signalfd returned (and dup, dup2, dup3, fcntl's F_DUPFD copied; close
// unmarks), one bit each (below kMarkedFds; a
// signalfd above is read untranslated). A mark outlives the descriptor's close, so a marked
// descriptor is checked to still be a signalfd before its data is touched.
constexpr int kMarkedFds = 65536;
std::atomic<uint64_t> g_signalfds[kMarkedFds / 64];

void Mark(int fd, bool on) {
  if (fd < 0 || fd >= kMarkedFds) return;
  uint64_t bit = uint64_t{1} << (fd % 64);
  if (on) {
    g_signalfds[fd / 64].fetch_or(bit, std::memory_order_relaxed);
  } else {
    g_signalfds[fd / 64].fetch_and(~bit, std::memory_order_relaxed);
  }
}

bool Marked(int fd) {
  return fd >= 0 && fd < kMarkedFds &&
         (g_signalfds[fd / 64].load(std::memory_order_relaxed) >> (fd % 64) & 1) != 0;
}

// True when `fd` is (still) a signalfd: its /proc link names one.
bool IsSignalfd(int fd) {
  char path[40] = "/proc/self/fd/";
  size_t n = 14;
  char digits[12];
  int k = 0;
  for (int v = fd; k == 0 || v > 0; v /= 10) digits[k++] = static_cast<char>('0' + v % 10);
  while (k > 0) path[n++] = digits[--k];
  path[n] = '\0';
  char link[32];
  long length = RawSyscall(SYS_readlinkat, AT_FDCWD, reinterpret_cast<long>(path),
                           reinterpret_cast<long>(link), sizeof(link));
  const char want[] = "anon_inode:[signalfd]";
  if (length != static_cast<long>(sizeof(want) - 1)) return false;
  for (long i = 0; i < length; ++i) {
    if (link[i] != want[i]) return false;
  }
  return true;
}

// After a read of `n` bytes into `buffer` from `fd`.
void AfterRead(int fd, void* buffer, long n) {
  if (n <= 0 || !Marked(fd) || !State().active) return;
  if (!IsSignalfd(fd)) {
    Mark(fd, false);
    return;
  }
  homeward::preload::SignalfdToHome(State().map, static_cast<signalfd_siginfo*>(buffer),
                                    static_cast<size_t>(n));
}

// After a readv of `n` bytes into `iov`: each whole record, gathered from wherever the
// vectors split it, translated and put back.
void AfterReadv(int fd, const iovec* iov, int count, long n) {
  if (n <= 0 || !Marked(fd) || !State().active || iov == nullptr) return;
  if (!IsSignalfd(fd)) {
    Mark(fd, false);
    return;
  }
  int vector = 0;
  size_t offset = 0;  // within iov[vector]
  for (long left = n; left >= static_cast<long>(sizeof(signalfd_siginfo));
       left -= sizeof(signalfd_siginfo)) {
    signalfd_siginfo record;
    auto* bytes = reinterpret_cast<char*>(&record);
    int start_vector = vector;
    size_t start_offset = offset;
    for (size_t i = 0; i < sizeof(record); ++i) {
      while (vector < count && offset >= iov[vector].iov_len) {
        ++vector;
        offset = 0;
      }
      if (vector >= count) return;
      bytes[i] = static_cast<char*>(iov[vector].iov_base)[offset++];
    }
    homeward::preload::SignalfdToHome(State().map, &record, sizeof(record));
    vector = start_vector;
    offset = start_offset;
    for (size_t i = 0; i < sizeof(record); ++i) {
      while (offset >= iov[vector].iov_len) {
        ++vector;
        offset = 0;
      }
      static_cast<char*>(iov[vector].iov_base)[offset++] = bytes[i];
    }
  }
}

// fcntl's third argument, taken as glibc takes it (an int or a pointer, one register).
int Fcntl(const char* name, std::atomic<void*>& slot, int fd, int command, void* arg) {
  return homeward::GuardedCall(name, [&] {
    int result = Next<int (*)(int, int, ...)>(slot, name)(fd, command, arg);
    if (result >= 0 && (command == F_DUPFD || command == F_DUPFD_CLOEXEC)) {
      Mark(result, Marked(fd));
    }
    return result;
  });
}

using Preadv2 = ssize_t (*)(int, const iovec*, int, off_t, int);

ssize_t Readv(const char* name, std::atomic<void*>& slot, int fd, const iovec* iov, int count,
              off_t offset, int flags) {
  return homeward::GuardedCall(name, [&] {
    ssize_t n = Next<Preadv2>(slot, name)(fd, iov, count, offset, flags);
    AfterReadv(fd, iov, count, n);
    return n;
  });
}

}  // namespace

namespace homeward::preload {

// The signalfds this image inherited through execve: the image that made them had them
// marked, this one starts with none. Each open descriptor is asked, as IsSignalfd does.
void MarkInheritedSignalfds() {
  long dir = RawSyscall(SYS_openat, AT_FDCWD, reinterpret_cast<long>("/proc/self/fd"),
                        O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dir < 0) return;
  alignas(dirent64) char buffer[2048];
  for (;;) {
    long n = RawSyscall(SYS_getdents64, dir, reinterpret_cast<long>(buffer), sizeof(buffer));
    if (n <= 0) break;
    for (long at = 0; at < n;) {
      const auto* entry = reinterpret_cast<const dirent64*>(buffer + at);
      at += entry->d_reclen;
      long fd = 0;
      const char* c = entry->d_name;
      for (; *c >= '0' && *c <= '9' && fd < kMarkedFds; ++c) fd = fd * 10 + (*c - '0');
      if (*c != '\0' || c == entry->d_name || fd == dir || fd >= kMarkedFds) continue;
      if (IsSignalfd(static_cast<int>(fd))) Mark(static_cast<int>(fd), true);
    }
  }
  RawSyscall(SYS_close, dir);
}

void MarkReceivedSignalfds(msghdr* msg) {
  ForEachSocketControl(msg, SCM_RIGHTS, 0, [](cmsghdr* header) {
    size_t count = (header->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    for (size_t i = 0; i < count; ++i) {
      int fd;
      __builtin_memcpy(&fd, CMSG_DATA(header) + i * sizeof(int), sizeof(fd));
      if (IsSignalfd(fd)) Mark(fd, true);
    }
  });
}

}  // namespace homeward::preload

#pragma GCC visibility push(default)
extern "C" {

int signalfd(int fd, const sigset_t* mask, int flags) noexcept {
  static std::atomic<void*> slot;
  return homeward::GuardedCall("signalfd", [&] {
    int result = Next<int (*)(int, const sigset_t*, int)>(slot, "signalfd")(fd, mask, flags);
    if (result >= 0) Mark(result, true);
    return result;
  });
}

// A copy of a signalfd is one too.
int dup(int fd) noexcept {
  static std::atomic<void*> slot;
  return homeward::GuardedCall("dup", [&] {
    int result = Next<int (*)(int)>(slot, "dup")(fd);
    if (result >= 0) Mark(result, Marked(fd));
    return result;
  });
}

int dup2(int fd, int to) noexcept {
  static std::atomic<void*> slot;
  return homeward::GuardedCall("dup2", [&] {
    int result = Next<int (*)(int, int)>(slot, "dup2")(fd, to);
    if (result >= 0) Mark(result, Marked(fd));
    return result;
  });
}

int dup3(int fd, int to, int flags) noexcept {
  static std::atomic<void*> slot;
  return homeward::GuardedCall("dup3", [&] {
    int result = Next<int (*)(int, int, int)>(slot, "dup3")(fd, to, flags);
    if (result >= 0) Mark(result, Marked(fd));
    return result;
  });
}

int close(int fd) {
  static std::atomic<void*> slot;
  return homeward::GuardedCall("close", [&] {
    Mark(fd, false);  // before: the number may be reused once closed
    // A close drops the process's POSIX locks on the file, which the shim holds on a
    // description of the process's own (posix_locks.h): that one closes too. (A close
    // inside libc, as fclose's, comes through close_wrappers.cc, as do close_range and closefrom.)
    int own = homeward::preload::State().active ? homeward::preload::DetachOnClose(fd) : -1;
    int result = Next<int (*)(int)>(slot, "close")(fd);
    homeward::preload::CloseDetached(own, fd);
    return result;
  });
}

int flock(int fd, int operation) {
  static std::atomic<void*> slot;
  return homeward::GuardedCall("flock", [&] {
    // A job that came home takes the flock its home's file service held for it
    // (locks_come_home.h) before the call, which then works on it.
    homeward::preload::FlockHook(fd, operation);
    return Next<int (*)(int, int)>(slot, "flock")(fd, operation);
  });
}

int fcntl(int fd, int command, ...) {
  static std::atomic<void*> slot;
  va_list args;
  va_start(args, command);
  void* arg = va_arg(args, void*);
  va_end(args);
  return Fcntl("fcntl", slot, fd, command, arg);
}

int fcntl64(int fd, int command, ...) {
  static std::atomic<void*> slot;
  va_list args;
  va_start(args, command);
  void* arg = va_arg(args, void*);
  va_end(args);
  return Fcntl("fcntl64", slot, fd, command, arg);
}

ssize_t readv(int fd, const iovec* iov, int count) {
  static std::atomic<void*> slot;
  return homeward::GuardedCall("readv", [&] {
    ssize_t n = Next<ssize_t (*)(int, const iovec*, int)>(slot, "readv")(fd, iov, count);
    AfterReadv(fd, iov, count, n);
    return n;
  });
}

ssize_t preadv(int fd, const iovec* iov, int count, off_t offset) {
  static std::atomic<void*> slot;
  return homeward::GuardedCall("preadv", [&] {
    ssize_t n =
        Next<ssize_t (*)(int, const iovec*, int, off_t)>(slot, "preadv")(fd, iov, count, offset);
    AfterReadv(fd, iov, count, n);
    return n;
  });
}

ssize_t preadv64(int fd, const iovec* iov, int count, off64_t offset) {
  static std::atomic<void*> slot;
  return homeward::GuardedCall("preadv64", [&] {
    ssize_t n = Next<ssize_t (*)(int, const iovec*, int, off64_t)>(slot, "preadv64")(fd, iov, count,
                                                                                     offset);
    AfterReadv(fd, iov, count, n);
    return n;
  });
}

ssize_t preadv2(int fd, const iovec* iov, int count, off_t offset, int flags) {
  static std::atomic<void*> slot;
  return Readv("preadv2", slot, fd, iov, count, offset, flags);
}

ssize_t preadv64v2(int fd, const iovec* iov, int count, off64_t offset, int flags) {
  static std::atomic<void*> slot;
  return Readv("preadv64v2", slot, fd, iov, count, offset, flags);
}

ssize_t read(int fd, void* buffer, size_t count) {
  static std::atomic<void*> slot;
  return homeward::GuardedCall("read", [&] {
    ssize_t n = Next<ssize_t (*)(int, void*, size_t)>(slot, "read")(fd, buffer, count);
    AfterRead(fd, buffer, n);
    return n;
  });
}

// What read becomes in a program built with _FORTIFY_SOURCE.
ssize_t __read_chk(int fd, void* buffer, size_t count, size_t size) {
  static std::atomic<void*> slot;
  return homeward::GuardedCall("__read_chk", [&] {
    ssize_t n =
        Next<ssize_t (*)(int, void*, size_t, size_t)>(slot, "__read_chk")(fd, buffer, count, size);
    AfterRead(fd, buffer, n);
    return n;
  });
}

ssize_t recvmsg(int fd, msghdr* msg, int flags) {
  static std::atomic<void*> slot;
  return homeward::GuardedCall("recvmsg", [&] {
    unsigned trapped = homeward::preload::TranslatedReceives();
    ssize_t n = Next<ssize_t (*)(int, msghdr*, int)>(slot, "recvmsg")(fd, msg, flags);
    // An armed process's call trapped, and the handler translated it already.
    if (n >= 0 && State().active && trapped == homeward::preload::TranslatedReceives()) {
      homeward::preload::CredentialsToHome(State().map, msg);
      homeward::preload::MarkReceivedSignalfds(msg);
    }
    return n;
  });
}

// Credentials a program sends name it by getpid, a home id; the kernel accepts only the
// sender's own pid as it knows it. Translated in a copy of the control messages: the
// program's stay as they were (a larger buffer than the copy's goes as it is).
ssize_t sendmsg(int fd, const msghdr* msg, int flags) {
  static std::atomic<void*> slot;
  return homeward::GuardedCall("sendmsg", [&] {
    auto real = Next<ssize_t (*)(int, const msghdr*, int)>(slot, "sendmsg");
    alignas(cmsghdr) char control[1024];
    if (!State().active || msg == nullptr || msg->msg_control == nullptr ||
        msg->msg_controllen > sizeof(control)) {
      return real(fd, msg, flags);
    }
    msghdr copy = *msg;
    const auto* from = static_cast<const char*>(msg->msg_control);
    for (size_t i = 0; i < msg->msg_controllen; ++i) control[i] = from[i];
    copy.msg_control = control;
    homeward::preload::CredentialsToInner(State().map, &copy);
    return real(fd, &copy, flags);
  });
}

int recvmmsg(int fd, mmsghdr* messages, unsigned int count, int flags, timespec* timeout) {
  static std::atomic<void*> slot;
  return homeward::GuardedCall("recvmmsg", [&] {
    unsigned trapped = homeward::preload::TranslatedReceives();
    int n = Next<int (*)(int, mmsghdr*, unsigned int, int, timespec*)>(slot, "recvmmsg")(
        fd, messages, count, flags, timeout);
    if (n > 0 && messages != nullptr && State().active &&
        trapped == homeward::preload::TranslatedReceives()) {
      for (int i = 0; i < n; ++i) {
        homeward::preload::CredentialsToHome(State().map, &messages[i].msg_hdr);
        homeward::preload::MarkReceivedSignalfds(&messages[i].msg_hdr);
      }
    }
    return n;
  });
}

int sendmmsg(int fd, mmsghdr* messages, unsigned int count, int flags) {
  static std::atomic<void*> slot;
  return homeward::GuardedCall("sendmmsg", [&] {
    auto real = Next<int (*)(int, mmsghdr*, unsigned int, int)>(slot, "sendmmsg");
    if (!State().active || messages == nullptr) return real(fd, messages, count, flags);
    return static_cast<int>(homeward::preload::SendmmsgInner(
        State().map, messages, count,
        [&](unsigned int sent) { return real(fd, messages, sent, flags); }));
  });
}

}  // extern "C"
#pragma GCC visibility pop
