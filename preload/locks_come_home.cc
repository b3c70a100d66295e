// Locks of a job that comes home, from the shim's side; see locks_come_home.h.
#include "locks_come_home.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/socket.h>
#include <sys/statfs.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <sys/un.h>
#include <unistd.h>

#include <atomic>
#include <cstddef>

#include "lock_handover.h"
#include "lock_holder.h"
#include "raw_syscall.h"
#include "shim_state.h"

namespace homeward::preload {
namespace {

constexpr long kFuseSuperMagic = 0x65735546;

// The files (by st_ino, which homefs gives as the home's) the process locked through
// homefs, and of what kinds. Beyond kAwaySlots files, a lock is not taken back home: the
// home lets go of it when the job no longer has the file open.
struct LockedAway {
  unsigned long long ino = 0;
  int kinds = 0;
};
constexpr int kAwaySlots = 32;
LockedAway locked_away[kAwaySlots];
std::atomic<int> away_count{0};
// Guards the table; never held across a call that waits.
std::atomic<bool> away_busy{false};

struct AwayGuard {
  AwayGuard() {
    while (away_busy.exchange(true, std::memory_order_acquire)) RawSyscall(SYS_sched_yield);
  }
  ~AwayGuard() { away_busy.store(false, std::memory_order_release); }
};

}  // namespace

bool IsFuse(long fd) {
  struct statfs fs;
  return RawSyscall(SYS_fstatfs, fd, reinterpret_cast<long>(&fs)) == 0 &&
         fs.f_type == kFuseSuperMagic;
}

long ConnectLockService() {
  sockaddr_un address{};
  address.sun_family = AF_UNIX;
  size_t at = 0;
  for (const char* c = kLockHolderSocketPath; *c != '\0'; ++c) address.sun_path[at++] = *c;
  long s = RawSyscall(SYS_socket, AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
  if (s < 0) return -1;
  ucred peer{};
  socklen_t peer_size = sizeof peer;
  timeval wait{1, 0};
  if (RawSyscall(SYS_connect, s, reinterpret_cast<long>(&address),
                 static_cast<long>(offsetof(sockaddr_un, sun_path) + at)) == 0 &&
      RawSyscall(SYS_getsockopt, s, SOL_SOCKET, SO_PEERCRED, reinterpret_cast<long>(&peer),
                 reinterpret_cast<long>(&peer_size)) == 0 &&
      peer.uid == 0 &&
      RawSyscall(SYS_setsockopt, s, SOL_SOCKET, SO_RCVTIMEO, reinterpret_cast<long>(&wait),
                 sizeof wait) == 0) {
    return s;
  }
  RawSyscall(SYS_close, s);
  return -1;
}

bool SendWithFile(long socket, const void* data, unsigned long size, long fd) {
  iovec iov{const_cast<void*>(data), size};
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int))] = {};
  msghdr message{};
  message.msg_iov = &iov;
  message.msg_iovlen = 1;
  message.msg_control = control;
  message.msg_controllen = sizeof control;
  cmsghdr* rights = CMSG_FIRSTHDR(&message);
  rights->cmsg_level = SOL_SOCKET;
  rights->cmsg_type = SCM_RIGHTS;
  rights->cmsg_len = CMSG_LEN(sizeof(int));
  int passed = static_cast<int>(fd);
  __builtin_memcpy(CMSG_DATA(rights), &passed, sizeof passed);
  return RawSyscall(SYS_sendmsg, socket, reinterpret_cast<long>(&message), MSG_NOSIGNAL) ==
         static_cast<long>(size);
}

void NoteLockedAway(const struct stat& st, int kind) {
  AwayGuard guard;
  int free_slot = -1;
  for (int i = 0; i < kAwaySlots; ++i) {
    if (locked_away[i].kinds != 0 && locked_away[i].ino == st.st_ino) {
      locked_away[i].kinds |= kind;
      return;
    }
    if (locked_away[i].kinds == 0 && free_slot < 0) free_slot = i;
  }
  if (free_slot < 0) return;
  locked_away[free_slot] = {st.st_ino, kind};
  away_count.fetch_add(1, std::memory_order_relaxed);
}

bool AnyLockedAway() { return away_count.load(std::memory_order_relaxed) > 0; }

int TakeLockedAway(const struct stat& st, int kinds) {
  if (!AnyLockedAway()) return 0;
  AwayGuard guard;
  for (auto& away : locked_away) {
    if (away.kinds == 0 || away.ino != st.st_ino) continue;
    int taken = away.kinds & kinds;
    away.kinds &= ~kinds;
    if (away.kinds == 0) away_count.fetch_sub(1, std::memory_order_relaxed);
    return taken;
  }
  return 0;
}

int TakeCarried(long fd, int kinds, int* got) {
  *got = 0;
  long s = ConnectLockService();
  if (s < 0) return -1;
  LockHandoverQuestion question{kLockHandoverQuestionVersion, kinds};
  LockHandoverAnswer answer{};
  iovec iov{&answer, sizeof answer};
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int))] = {};
  msghdr message{};
  message.msg_iov = &iov;
  message.msg_iovlen = 1;
  message.msg_control = control;
  message.msg_controllen = sizeof control;
  int carried = -1;
  if (SendWithFile(s, &question, sizeof question, fd) &&
      RawSyscall(SYS_recvmsg, s, reinterpret_cast<long>(&message), MSG_CMSG_CLOEXEC) ==
          static_cast<long>(sizeof answer)) {
    for (cmsghdr* c = CMSG_FIRSTHDR(&message); c; c = CMSG_NXTHDR(&message, c)) {
      if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS) {
        __builtin_memcpy(&carried, CMSG_DATA(c), sizeof carried);
      }
    }
  }
  RawSyscall(SYS_close, s);
  if (carried < 0) return -1;
  *got = answer.kind;
  long high = RawSyscall(SYS_fcntl, carried, F_DUPFD_CLOEXEC, kShimLockFdBase);
  if (high >= 0) {
    RawSyscall(SYS_close, carried);
    carried = static_cast<int>(high);
  }
  return carried;
}

void UnlockAll(long fd) {
  struct flock all {};
  all.l_type = F_UNLCK;
  all.l_whence = SEEK_SET;
  RawSyscall(SYS_fcntl, fd, F_OFD_SETLK, reinterpret_cast<long>(&all));
  RawSyscall(SYS_flock, fd, LOCK_UN);
}

void FlockHook(int fd, int op) {
  if (!State().active) return;
  if (!AnyLockedAway() && !(op & (LOCK_SH | LOCK_EX))) return;
  struct stat st;
  if (RawSyscall(SYS_fstat, fd, reinterpret_cast<long>(&st)) != 0 || !S_ISREG(st.st_mode)) return;
  if (IsFuse(fd)) {
    if (op & (LOCK_SH | LOCK_EX)) NoteLockedAway(st, kHandFlock);
    return;
  }
  if (!TakeLockedAway(st, kHandFlock)) return;
  // Its description replaces the program's, with the program's offset, status flags and
  // close-on-exec, and the flock call goes to it.
  int got = 0;
  int carried = TakeCarried(fd, kHandFlock, &got);
  if (carried < 0) return;
  long flags = RawSyscall(SYS_fcntl, fd, F_GETFL);
  if (flags >= 0) RawSyscall(SYS_fcntl, carried, F_SETFL, flags);
  long at = RawSyscall(SYS_lseek, fd, 0, SEEK_CUR);
  if (at >= 0) RawSyscall(SYS_lseek, carried, at, SEEK_SET);
  long fd_flags = RawSyscall(SYS_fcntl, fd, F_GETFD);
  RawSyscall(SYS_dup3, carried, fd, fd_flags > 0 && (fd_flags & FD_CLOEXEC) ? O_CLOEXEC : 0);
  RawSyscall(SYS_close, carried);
}

void ForgetLockedAwayGuard() { away_busy.store(false, std::memory_order_relaxed); }

}  // namespace homeward::preload
