// libc functions whose results carry pids in memory that no system call trap can reach
// cheaply: reads of a signalfd (read is too hot to trap; the shim marks the descriptors
// signalfd made) and unix socket credentials passed with recvmsg and sendmsg. Each calls
// libc's own function (keeping its cancellation points) and translates around it.
#include <dlfcn.h>
#include <fcntl.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdint>

#include "c_boundary.h"
#include "home_ids.h"
#include "next_symbol.h"
#include "raw_syscall.h"
#include "shim_state.h"

namespace {

using homeward::preload::RawSyscall;
using homeward::preload::State;

using homeward::preload::Next;

// The descriptors signalfd returned (and dup, dup2, dup3 copied), one bit each (below kMarkedFds; a
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

}  // namespace

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
    ssize_t n = Next<ssize_t (*)(int, msghdr*, int)>(slot, "recvmsg")(fd, msg, flags);
    if (n >= 0 && State().active) homeward::preload::CredentialsToHome(State().map, msg);
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

}  // extern "C"
#pragma GCC visibility pop
