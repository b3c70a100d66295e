// POSIX locks as OFD locks on a description of the process's own; see posix_locks.h.
#include "posix_locks.h"

#include <dirent.h>
#include <fcntl.h>
#include <linux/close_range.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdint>

#include "lock_handover.h"
#include "lock_holder.h"
#include "locks_come_home.h"
#include "raw_syscall.h"
#include "shim_state.h"

namespace homeward::preload {
namespace {

// The process's descriptions go above the descriptors programs use: a shell's dup2 onto
// a low number would otherwise close one (and drop its locks).
// (The home's file service knows the number, lock_holder.h.)
constexpr long kFirstOwnFd = kShimLockFdBase;
constexpr int kSlots = 64;

struct Slot {
  int fd = -1;   // the description that holds the locks (close-on-exec but across an exec)
  long pid = 0;  // the process it is of, as the kernel names it in the job
};

Slot slots[kSlots];
std::atomic<int> used{0};
// Guards the slots; never held across a call that waits. A plain flag, not a mutex: a
// fork's child resets it (ForgetInheritedLocks).
std::atomic<bool> busy{false};

struct Guard {
  Guard() {
    while (busy.exchange(true, std::memory_order_acquire)) {
      RawSyscall(SYS_sched_yield);
    }
  }
  ~Guard() { busy.store(false, std::memory_order_release); }
};

bool SameFile(int fd, const struct stat& st) {
  struct stat mine;
  return RawSyscall(SYS_fstat, fd, reinterpret_cast<long>(&mine)) == 0 &&
         mine.st_dev == st.st_dev && mine.st_ino == st.st_ino;
}

// Whether `fd` is one of the shim's descriptions (under the guard).
bool IsOwn(int fd) {
  for (const Slot& slot : slots) {
    if (slot.fd == fd) return true;
  }
  return false;
}

// The slot of this process's description of the file `st` (under the guard), or -1.
int Find(const struct stat& st, long pid) {
  for (int i = 0; i < kSlots; ++i) {
    if (slots[i].fd >= 0 && slots[i].pid == pid && SameFile(slots[i].fd, st)) return i;
  }
  return -1;
}

// Calls `visit` with each descriptor number the directory `dir` (/proc/self/fd) lists.
template <typename Visit>
void ForEachFd(long dir, Visit visit) {
  alignas(8) char buffer[2048];
  for (;;) {
    long n = RawSyscall(SYS_getdents64, dir, reinterpret_cast<long>(buffer), sizeof buffer);
    if (n <= 0) return;
    for (long at = 0; at < n;) {
      auto* entry = reinterpret_cast<const dirent64*>(buffer + at);
      at += entry->d_reclen;
      const char* name = entry->d_name;
      if (name[0] < '0' || name[0] > '9') continue;
      int fd = 0;
      for (const char* c = name; *c >= '0' && *c <= '9'; ++c) fd = fd * 10 + (*c - '0');
      visit(fd);
    }
  }
}

// /proc/self/fdinfo/FD, or /proc/self/fd/FD with `fd_dir`, in `path` (32 bytes).
void ProcSelfPath(long fd, bool fd_dir, char* path) {
  const char* prefix = fd_dir ? "/proc/self/fd/" : "/proc/self/fdinfo/";
  int at = 0;
  while (prefix[at] != '\0') {
    path[at] = prefix[at];
    ++at;
  }
  char digits[16];
  int n = 0;
  for (long v = fd; n == 0 || v > 0; v /= 10) digits[n++] = static_cast<char>('0' + v % 10);
  while (n > 0) path[at++] = digits[--n];
  path[at] = '\0';
}

// Whether the description open as `fd` holds an OFD lock (its fdinfo lists the locks held
// through it; the first come within the first lines).
bool HoldsOfdLock(long fd) {
  char path[32];
  ProcSelfPath(fd, false, path);
  long info = RawSyscall(SYS_openat, AT_FDCWD, reinterpret_cast<long>(path), O_RDONLY | O_CLOEXEC);
  if (info < 0) return false;
  char text[4096];
  long n = RawSyscall(SYS_read, info, reinterpret_cast<long>(text), sizeof text);
  RawSyscall(SYS_close, info);
  constexpr char kOfd[] = "OFDLCK";
  for (long i = 0; i + 6 <= n; ++i) {
    long k = 0;
    while (k < 6 && text[i + k] == kOfd[k]) ++k;
    if (k == 6) return true;
  }
  return false;
}

// Whether the locks held through `own` survive an exec as the kernel's POSIX locks would:
// the process has the file open (besides the shim's descriptions) and none of its
// descriptors of it is close-on-exec (the exec's close of one drops them).
bool KeptAcrossExec(int own) {
  struct stat st;
  if (RawSyscall(SYS_fstat, own, reinterpret_cast<long>(&st)) != 0) return false;
  long dir = RawSyscall(SYS_openat, AT_FDCWD, reinterpret_cast<long>("/proc/self/fd"),
                        O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dir < 0) return false;
  bool open = false, closing = false;
  ForEachFd(dir, [&](int fd) {
    if (fd == dir || IsOwn(fd) || !SameFile(fd, st)) return;
    open = true;
    if (RawSyscall(SYS_fcntl, fd, F_GETFD) != 0) closing = true;
  });
  RawSyscall(SYS_close, dir);
  return open && !closing;
}

// A description of the file open as `fd`, of its own: read and write when the process may
// (so that read and write locks both work whatever descriptor asks), else as `fd` is.
int OpenOwn(long fd) {
  char path[32];
  ProcSelfPath(fd, true, path);
  constexpr long kFlags = O_CLOEXEC | O_NOCTTY | O_NONBLOCK;
  long own = RawSyscall(SYS_openat, AT_FDCWD, reinterpret_cast<long>(path), O_RDWR | kFlags);
  if (own < 0) {
    long mode = RawSyscall(SYS_fcntl, fd, F_GETFL);
    if (mode < 0) return -1;
    own =
        RawSyscall(SYS_openat, AT_FDCWD, reinterpret_cast<long>(path), (mode & O_ACCMODE) | kFlags);
    if (own < 0) return -1;
  }
  long high = RawSyscall(SYS_fcntl, own, F_DUPFD_CLOEXEC, kFirstOwnFd);
  if (high >= 0) {
    RawSyscall(SYS_close, own);
    own = high;
  }
  return static_cast<int>(own);
}

// The first free slot (under the guard), or -1.
int FreeSlot() {
  for (int i = 0; i < kSlots; ++i) {
    if (slots[i].fd < 0) return i;
  }
  return -1;
}

// The description the process's POSIX locks on the file `st` (open as `fd`) are taken
// through, its own, made if need be; -1 when they are the kernel's or homefs's to take
// (`asks`: an unlock or F_GETLK, which makes none). A process that locked the file
// through homefs and came home takes the description the home's file service held its
// locks on meanwhile (locks_come_home.h): its own from now on.
int OwnDescription(long fd, const struct stat& st, long pid, bool asks) {
  int own = -1;
  {
    Guard guard;
    int slot = Find(st, pid);
    if (slot >= 0) own = slots[slot].fd;
  }
  if (own >= 0 && IsFuse(own)) {
    // Taken at home and carried away: its locks are the home's through homefs now.
    if (!asks) NoteLockedAway(st, kHandPosix);
    return own;
  }
  if (own < 0 && IsFuse(fd)) {
    if (!asks) NoteLockedAway(st, kHandPosix);
    return -1;  // homefs's: its locks are the home's
  }
  // Asked without the guard: the service's answer is waited for.
  int got = 0;
  int carried = TakeLockedAway(st, kHandPosix) ? TakeCarried(fd, kHandPosix, &got) : -1;
  if (own >= 0) {
    // criu's new description, which holds nothing, gives way to the carried one.
    if (carried >= 0) RawSyscall(SYS_dup3, carried, own, O_CLOEXEC);
    if (carried >= 0) RawSyscall(SYS_close, carried);
    return own;
  }
  // Nothing held through its own description: an unlock or a question goes to the kernel
  // as asked.
  if (carried < 0 && asks) return -1;
  Guard guard;
  int free_slot = FreeSlot();
  if (free_slot < 0) {
    if (carried >= 0) RawSyscall(SYS_close, carried);  // more files than kept: it goes
    return -1;  // the kernel's POSIX lock then: it pins the job
  }
  own = carried >= 0 ? carried : OpenOwn(fd);
  if (own < 0) return -1;
  slots[free_slot] = {own, pid};
  used.fetch_add(1, std::memory_order_relaxed);
  return own;
}

}  // namespace

bool PosixLockAsOfd(long fd, long cmd, long lock, long* result, long* asked) {
  *asked = fd;
  if (cmd != F_SETLK && cmd != F_SETLKW && cmd != F_GETLK) return false;
  if (!State().active || lock == 0) return false;
  struct stat st;
  if (RawSyscall(SYS_fstat, fd, reinterpret_cast<long>(&st)) != 0) return false;
  // Only files with a name: a memfd or an unlinked file cannot be carried anyway, and a
  // process's own lock on one stays the kernel's (F_GETLK names its holder).
  if (!S_ISREG(st.st_mode) || st.st_nlink == 0) return false;
  auto* fl = reinterpret_cast<struct flock*>(lock);
  long pid = RawSyscall(SYS_getpid);
  int own = OwnDescription(fd, st, pid, cmd == F_GETLK || fl->l_type == F_UNLCK);
  if (own < 0) return false;
  struct flock ofd = *fl;
  if (ofd.l_whence == SEEK_CUR) {
    // Relative to the offset of the descriptor the program asked through, not its own.
    long at = RawSyscall(SYS_lseek, fd, 0, SEEK_CUR);
    if (at < 0) {
      *result = at;
      return true;
    }
    ofd.l_start += at;
    ofd.l_whence = SEEK_SET;
  }
  ofd.l_pid = 0;  // F_OFD_* require it
  if (cmd != F_GETLK && ofd.l_type != F_UNLCK) {
    // As for the program's own descriptor: a read lock needs it readable, a write lock
    // writable.
    long mode = RawSyscall(SYS_fcntl, fd, F_GETFL);
    if (mode < 0) {
      *result = mode;
      return true;
    }
    if ((ofd.l_type == F_RDLCK && (mode & O_ACCMODE) == O_WRONLY) ||
        (ofd.l_type == F_WRLCK && (mode & O_ACCMODE) == O_RDONLY)) {
      *result = -EBADF;
      return true;
    }
  }
  long ofd_cmd = cmd == F_GETLK ? F_OFD_GETLK : cmd == F_SETLKW ? F_OFD_SETLKW : F_OFD_SETLK;
  *result = RawSyscall(SYS_fcntl, own, ofd_cmd, reinterpret_cast<long>(&ofd));
  if (cmd == F_GETLK && *result == 0) *fl = ofd;
  // The holder's name is asked through the description that asked (homefs keeps its
  // answer per file handle).
  *asked = own;
  return true;
}

int HomeHolderOf(long fd, short type, const struct flock& found) {
  long s = ConnectLockService();
  if (s < 0) return -1;
  LockHolderQuestion question{};
  question.version = kLockHolderQuestionVersion;
  question.start = found.l_start;
  question.end = found.l_len == 0 ? INT64_MAX : found.l_start + found.l_len - 1;
  question.type = type;
  LockHolderAnswer answer{-1};
  // The file is named by passing it open: the service tells only of files one has open.
  if (!SendWithFile(s, &question, sizeof question, fd) ||
      RawSyscall(SYS_recvfrom, s, reinterpret_cast<long>(&answer), sizeof answer, 0, 0) !=
          static_cast<long>(sizeof answer)) {
    answer.pid = -1;
  }
  RawSyscall(SYS_close, s);
  return answer.pid;
}

int DetachOnClose(int fd) {
  bool away = AnyLockedAway();
  if (used.load(std::memory_order_relaxed) == 0 && !away) return -1;
  struct stat st;
  if (RawSyscall(SYS_fstat, fd, reinterpret_cast<long>(&st)) != 0 || !S_ISREG(st.st_mode)) {
    return -1;
  }
  long pid = RawSyscall(SYS_getpid);
  {
    Guard guard;
    int slot = Find(st, pid);
    if (slot >= 0) {
      int own = slots[slot].fd;
      slots[slot] = {};
      used.fetch_sub(1, std::memory_order_relaxed);
      return own;
    }
  }
  if (!away || IsFuse(fd) || !TakeLockedAway(st, kHandAny)) return -1;
  // Come home: what the home's file service held for it on this file (its POSIX locks,
  // or the flock of the file it closes) goes as the close would have dropped it away.
  int got = 0;
  return TakeCarried(fd, kHandAny, &got);
}

void CloseDetached(int own, int closed) {
  if (own < 0 || own == closed) return;
  // Unlocked first: a copy of a description handed by the home's file service may still
  // be open in its lock keeper for a moment (locks_come_home.h).
  UnlockAll(own);
  RawSyscall(SYS_close, own);  // its locks go with it
}

long CloseRange(unsigned first, unsigned last, int flags) {
  auto plain = [&] { return RawSyscall(SYS_close_range, first, last, flags); };
  if ((flags & CLOSE_RANGE_CLOEXEC) != 0) return plain();  // closes nothing now
  if (used.load(std::memory_order_relaxed) == 0 && !AnyLockedAway()) return plain();
  // The files the range closes a descriptor of lose their locks, as close() would: their
  // descriptions are taken from the table first.
  struct Detached {
    int own, fd;
  } detached[kSlots];
  int n = 0;
  long dir = RawSyscall(SYS_openat, AT_FDCWD, reinterpret_cast<long>("/proc/self/fd"),
                        O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dir < 0) return plain();
  ForEachFd(dir, [&](int fd) {
    if (fd == dir || static_cast<unsigned>(fd) < first || static_cast<unsigned>(fd) > last ||
        n == kSlots) {
      return;
    }
    {
      Guard guard;
      if (IsOwn(fd)) return;
    }
    int own = DetachOnClose(fd);
    if (own >= 0) detached[n++] = {own, fd};
  });
  RawSyscall(SYS_close, dir);
  // The shim's descriptions in the range are not the program's to close: the range is
  // closed around them (the detached ones close below, unlocked first).
  int keep[2 * kSlots];
  int kept = 0;
  {
    Guard guard;
    for (const Slot& slot : slots) {
      if (slot.fd >= 0) keep[kept++] = slot.fd;
    }
  }
  for (int i = 0; i < n; ++i) keep[kept++] = detached[i].own;
  for (int i = 1; i < kept; ++i) {  // in order, a handful at most
    for (int j = i; j > 0 && keep[j - 1] > keep[j]; --j) {
      int t = keep[j];
      keep[j] = keep[j - 1];
      keep[j - 1] = t;
    }
  }
  long result = 0;
  unsigned from = first;
  bool more = true;
  for (int i = 0; i < kept && more && result == 0; ++i) {
    auto fd = static_cast<unsigned>(keep[i]);
    if (fd < from || fd > last) continue;
    if (fd > from) result = RawSyscall(SYS_close_range, from, fd - 1, flags);
    more = fd < last;
    from = fd + 1;
  }
  if (more && result == 0) result = RawSyscall(SYS_close_range, from, last, flags);
  for (int i = 0; i < n; ++i) CloseDetached(detached[i].own, detached[i].fd);
  return result;
}

void BeforeExec() {
  if (used.load(std::memory_order_relaxed) == 0) return;
  long pid = RawSyscall(SYS_getpid);
  Guard guard;
  for (const Slot& slot : slots) {
    // A vfork child's table is its parent's: those descriptions close with its exec.
    if (slot.fd < 0 || slot.pid != pid) continue;
    if (HoldsOfdLock(slot.fd) && KeptAcrossExec(slot.fd)) {
      RawSyscall(SYS_fcntl, slot.fd, F_SETFD, 0);
    }
  }
}

void AfterFailedExec() {
  if (used.load(std::memory_order_relaxed) == 0) return;
  long pid = RawSyscall(SYS_getpid);
  Guard guard;
  for (const Slot& slot : slots) {
    if (slot.fd >= 0 && slot.pid == pid) RawSyscall(SYS_fcntl, slot.fd, F_SETFD, FD_CLOEXEC);
  }
}

void FindKeptLocks() {
  long pid = RawSyscall(SYS_getpid);
  long dir = RawSyscall(SYS_openat, AT_FDCWD, reinterpret_cast<long>("/proc/self/fd"),
                        O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dir < 0) return;
  ForEachFd(dir, [pid](int fd) {
    // Kept by the image before this one: above the base, not close-on-exec, a regular
    // file's description holding an OFD lock (a program's own descriptors there are
    // close-on-exec or hold no OFD lock, but for a rare program's own OFD lock).
    if (fd < kFirstOwnFd || RawSyscall(SYS_fcntl, fd, F_GETFD) != 0) return;
    struct stat st;
    if (RawSyscall(SYS_fstat, fd, reinterpret_cast<long>(&st)) != 0 || !S_ISREG(st.st_mode) ||
        !HoldsOfdLock(fd)) {
      return;
    }
    Guard guard;
    for (auto& slot : slots) {
      if (slot.fd >= 0) continue;
      slot = {fd, pid};
      used.fetch_add(1, std::memory_order_relaxed);
      RawSyscall(SYS_fcntl, fd, F_SETFD, FD_CLOEXEC);
      return;
    }
  });
  RawSyscall(SYS_close, dir);
}

void ForgetInheritedLocks() {
  busy.store(false, std::memory_order_relaxed);
  ForgetLockedAwayGuard();
  for (auto& slot : slots) {
    if (slot.fd >= 0) RawSyscall(SYS_close, slot.fd);
    slot = {};
  }
  used.store(0, std::memory_order_relaxed);
}

}  // namespace homeward::preload
