// System calls as the job sees them; see emulate.h. Every call here is a RawSyscall (the
// magic lets it through the filter), nothing allocates except execve's environment,
// which is mapped with mmap and unmapped if execve returns.
#include "emulate.h"

#include <elf.h>
#include <fcntl.h>
#include <linux/sched.h>
#include <sched.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/statfs.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/utsname.h>
#include <sys/wait.h>

#include <cerrno>
#include <csignal>

#include "credentials.h"
#include "env_inject.h"
#include "home_ids.h"
#include "lock_holder.h"
#include "posix_locks.h"
#include "raw_syscall.h"
#include "shim_state.h"

namespace homeward::preload {
namespace {

constexpr unsigned long kSigsysBit = 1UL << (SIGSYS - 1);
constexpr long kFuseSuperMagic = 0x65735546;

long Raw(long nr, const long a[6]) {
  return RawSyscall(nr, a[0], a[1], a[2], a[3], a[4]);
}

// A terminal's foreground process group and session (tcgetpgrp, tcsetpgrp, tcgetsid) as
// home ids, as getpgrp and getsid give them: a job-control shell compares the two, and
// would otherwise take itself for a background job and stop (SIGTTIN) on its own
// terminal. Reached from those libc functions' wrappers (wrappers.cc) with these three
// requests only; an ioctl made without libc is not trapped and sees the kernel's ids.
long TerminalIoctl(const PidMap& map, const long a[6]) {
  unsigned int request = static_cast<unsigned int>(a[1]);
  if (request == TIOCSPGRP) {
    // Read through the kernel, so that a bad pointer is EFAULT, as the call would give,
    // and not a fault in the handler.
    pid_t group = 0;
    iovec local = {&group, sizeof group};
    iovec remote = {reinterpret_cast<void*>(a[2]), sizeof group};
    long read =
        RawSyscall6(SYS_process_vm_readv, RawSyscall(SYS_getpid), reinterpret_cast<long>(&local), 1,
                    reinterpret_cast<long>(&remote), 1, 0);
    if (read != static_cast<long>(sizeof group)) return -EFAULT;
    group = static_cast<pid_t>(map.ToInner(group));
    return RawSyscall(SYS_ioctl, a[0], a[1], reinterpret_cast<long>(&group));
  }
  long result = Raw(SYS_ioctl, a);
  if (result == 0) {  // the kernel wrote the id: the pointer is good
    pid_t* id = reinterpret_cast<pid_t*>(a[2]);
    *id = static_cast<pid_t>(map.ToHome(*id));
  }
  return result;
}

long Uname(const PidMap&, const long a[6]) {
  long result = Raw(SYS_uname, a);
  if (result == 0 && a[0] != 0) {
    auto* name = reinterpret_cast<struct utsname*>(a[0]);
    const char* home = State().hostname;
    size_t i = 0;
    for (; home[i] != '\0' && i + 1 < sizeof(name->nodename); ++i) name->nodename[i] = home[i];
    for (; i < sizeof(name->nodename); ++i) name->nodename[i] = '\0';
  }
  return result;
}

long Wait4(const PidMap& map, const long a[6]) {
  bool inner_form = map.IsInnerForm(a[0]);
  long result = RawSyscall(SYS_wait4, map.TargetToInner(a[0]), a[1], a[2], a[3]);
  return (result > 0 && !inner_form) ? map.ToHome(result) : result;
}

long Waitid(const PidMap& map, const long a[6]) {
  long id = a[1];
  bool inner_form = false;
  if (a[0] == P_PID || a[0] == P_PGID) {
    inner_form = map.IsInnerForm(id);
    id = map.ToInner(id);
  }
  long result = RawSyscall(SYS_waitid, a[0], id, a[2], a[3], a[4]);
  auto* info = reinterpret_cast<siginfo_t*>(a[2]);
  if (result == 0 && info != nullptr && info->si_pid > 0 && !inner_form) {
    info->si_pid = static_cast<pid_t>(map.ToHome(info->si_pid));
  }
  return result;
}

// fork, vfork and clone without CLONE_VM or a new stack: made here, in the handler, the
// child is a copy that returns from the handler as the parent does. vfork is made a fork,
// as POSIX allows: a vfork child sharing the handler's stack would wreck the parent's
// signal frame.
long Fork(const PidMap& map, long nr, const long a[6]) {
  long result;
  if (nr == SYS_clone) {
    result = Raw(SYS_clone, a);
  } else {
    result = RawSyscall(SYS_clone, SIGCHLD, 0, 0, 0, 0);
  }
  // A child of its own file table holds none of its parent's locks.
  if (result == 0 && !(nr == SYS_clone && (a[0] & CLONE_FILES))) ForgetInheritedLocks();
  return result > 0 ? map.ToHome(result) : result;
}

// clone3 keeps its flags in memory, so the filter traps every one: a fork-like clone3 (no
// CLONE_VM, no stack of its own) is made here as clone is; a thread's or posix_spawn's
// gets ENOSYS, and libc falls back to clone, which the filter lets pass for those.
long Clone3(const PidMap& map, const long a[6]) {
  auto* args = reinterpret_cast<const clone_args*>(a[0]);
  if (args == nullptr || static_cast<size_t>(a[1]) < CLONE_ARGS_SIZE_VER0) return -EINVAL;
  if ((args->flags & CLONE_VM) != 0 || args->stack != 0) return -ENOSYS;
  long result = RawSyscall(SYS_clone3, a[0], a[1]);
  if (result == 0 && !(args->flags & CLONE_FILES)) ForgetInheritedLocks();
  return result > 0 ? map.ToHome(result) : result;
}

// True when the file opened as `fd` is an x86-64 ELF program with no interpreter: the
// shim cannot be preloaded into it, and without the shim's handler the inherited filter's
// first trap would kill it with a bare SIGSYS. The dynamic loader itself, run by name, is
// the one interpreter-less ELF that loads the shim.
bool IsStaticProgram(int fd, const char* path) {
  Elf64_Ehdr header;
  if (RawSyscall(SYS_pread64, fd, reinterpret_cast<long>(&header), sizeof(header), 0) !=
      static_cast<long>(sizeof(header))) {
    return false;
  }
  if (header.e_ident[EI_MAG0] != ELFMAG0 || header.e_ident[EI_MAG1] != ELFMAG1 ||
      header.e_ident[EI_MAG2] != ELFMAG2 || header.e_ident[EI_MAG3] != ELFMAG3 ||
      header.e_ident[EI_CLASS] != ELFCLASS64 || header.e_phentsize != sizeof(Elf64_Phdr)) {
    return false;
  }
  for (unsigned i = 0; i < header.e_phnum; ++i) {
    Elf64_Phdr ph;
    long offset = static_cast<long>(header.e_phoff + i * sizeof(ph));
    if (RawSyscall(SYS_pread64, fd, reinterpret_cast<long>(&ph), sizeof(ph), offset) !=
        static_cast<long>(sizeof(ph))) {
      return false;
    }
    if (ph.p_type == PT_INTERP) return false;
  }
  const char* name = path;
  for (const char* c = path; *c != '\0'; ++c) {
    if (*c == '/') name = c + 1;
  }
  bool loader = name[0] == 'l' && name[1] == 'd' && (name[2] == '-' || name[2] == '.');
  return !loader;
}

size_t Length(const char* s) {
  size_t n = 0;
  while (s[n] != '\0') ++n;
  return n;
}

// Refuses a static program with a line on stderr naming it, rather than letting it die.
long RefuseStatic(long dirfd, const char* path, long flags) {
  if (path == nullptr || path[0] == '\0') return 0;  // execveat(fd, "", AT_EMPTY_PATH)
  long fd = RawSyscall(SYS_openat, dirfd, reinterpret_cast<long>(path),
                       O_RDONLY | O_CLOEXEC | ((flags & AT_SYMLINK_NOFOLLOW) ? O_NOFOLLOW : 0));
  if (fd < 0) return 0;  // Unreadable: the kernel decides.
  bool refuse = IsStaticProgram(static_cast<int>(fd), path);
  RawSyscall(SYS_close, fd);
  if (!refuse) return 0;
  const char* parts[] = {"homeward: cannot run ", path,
                         " in a job: it is statically linked, so the job shim cannot enter it\n"};
  for (const char* part : parts) {
    RawSyscall(SYS_write, 2, reinterpret_cast<long>(part), static_cast<long>(Length(part)));
  }
  return -EPERM;
}

// execve and execveat: the new program gets the job's variables back if it lost them, and
// keeps the process's POSIX locks (posix_locks.h).
long Exec(long nr, const long a[6]) {
  long refused = nr == SYS_execve ? RefuseStatic(AT_FDCWD, reinterpret_cast<const char*>(a[0]), 0)
                                  : RefuseStatic(a[0], reinterpret_cast<const char*>(a[1]), a[4]);
  if (refused != 0) return refused;
  ShimState& state = State();
  const char* entries[kEnvCount];
  int count = 0;  // the variables the job has (HOMEWARD_CHECKPOINT_SIGNAL is optional)
  for (int i = 0; i < kEnvCount; ++i) {
    if (state.env[i][0] != '\0') entries[count++] = state.env[i];
  }
  int env_arg = nr == SYS_execve ? 2 : 3;
  auto* envp = reinterpret_cast<char* const*>(a[env_arg]);
  size_t size = InjectEnvSize(envp, entries, count);
  // mmap takes six arguments, so it goes without the magic (the filter never traps it).
  long mapped = RawSyscall6(SYS_mmap, 0, static_cast<long>(size), PROT_READ | PROT_WRITE,
                            MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (mapped < 0 && mapped > -4096) return mapped;
  char** env =
      InjectEnv(envp, entries, count, state.library, reinterpret_cast<void*>(mapped), size);
  long args[6] = {a[0], a[1], a[2], a[3], a[4], a[5]};
  args[env_arg] = reinterpret_cast<long>(env);
  BeforeExec();  // the process's POSIX locks stay across the exec, as the kernel's do
  long result = Raw(nr, args);
  AfterFailedExec();
  RawSyscall(SYS_munmap, mapped, static_cast<long>(size));
  return result;
}

// The handler the kernel calls for a program's SA_SIGINFO handler: the sender (or child)
// in si_pid becomes a home id, then the program's handler runs with the same arguments.
// The kernel's own restorer (the program's) returns from the signal as before.
void SiginfoTrampoline(int sig, siginfo_t* info, void* context) {
  ShimState& state = State();
  void* handler = sig > 0 && sig < kSignalSlots ? state.siginfo_handlers[sig] : nullptr;
  if (state.active) SiginfoToHome(state.map, info);
  if (handler == nullptr || handler == reinterpret_cast<void*>(SIG_DFL) ||
      handler == reinterpret_cast<void*>(SIG_IGN)) {
    return;
  }
  reinterpret_cast<void (*)(int, siginfo_t*, void*)>(handler)(sig, info, context);
}

// rt_sigaction: SIGSYS stays the shim's; the program's disposition is kept aside and
// reported back. Other signals' handlers must not block SIGSYS (a trap while it is blocked
// kills the process), so it is taken out of their masks. A handler that takes a siginfo
// is called through SiginfoTrampoline, and reported back as the program's own.
long Sigaction(const long a[6]) {
  if (a[3] != sizeof(unsigned long)) return -EINVAL;
  auto* act = reinterpret_cast<const KernelSigaction*>(a[1]);
  auto* old = reinterpret_cast<KernelSigaction*>(a[2]);
  ShimState& state = State();
  if (a[0] == SIGSYS) {
    KernelSigaction previous = state.user_sigsys;
    if (act != nullptr) state.user_sigsys = *act;
    if (old != nullptr) *old = previous;
    return 0;
  }
  long sig = a[0];
  bool slot = sig > 0 && sig < kSignalSlots;
  void* trampoline = reinterpret_cast<void*>(&SiginfoTrampoline);
  void* previous = slot ? state.siginfo_handlers[sig] : nullptr;
  long result;
  if (act == nullptr) {
    result = Raw(SYS_rt_sigaction, a);
  } else {
    KernelSigaction copy = *act;
    copy.mask &= ~kSigsysBit;
    bool wrap = slot && (copy.flags & SA_SIGINFO) != 0 &&
                copy.handler != reinterpret_cast<void*>(SIG_DFL) &&
                copy.handler != reinterpret_cast<void*>(SIG_IGN);
    // The program's handler is in place before the kernel can call the trampoline for it.
    if (wrap) {
      state.siginfo_handlers[sig] = copy.handler;
      copy.handler = trampoline;
    }
    result = RawSyscall(SYS_rt_sigaction, sig, reinterpret_cast<long>(&copy), a[2], a[3]);
    if (result != 0 && wrap) state.siginfo_handlers[sig] = previous;
  }
  if (result == 0 && old != nullptr && old->handler == trampoline) old->handler = previous;
  return result;
}

// rt_sigtimedwait (sigwaitinfo, sigtimedwait): the sender of the signal taken.
long Sigtimedwait(const PidMap& map, const long a[6]) {
  long result = Raw(SYS_rt_sigtimedwait, a);
  if (result > 0) SiginfoToHome(map, reinterpret_cast<siginfo_t*>(a[1]));
  return result;
}

// rt_(tg)sigqueueinfo: the siginfo a program queues names its sender by getpid (a home
// id), which the kernel passes on unchecked; the receiver's side makes every sender home,
// so this one is sent as the kernel would know it. A copy: the program's stays as it was.
long Sigqueueinfo(const PidMap& map, long nr, const long a[6]) {
  int info_arg = nr == SYS_rt_sigqueueinfo ? 2 : 3;
  siginfo_t copy;
  long info = a[info_arg];
  if (info != 0) {
    copy = *reinterpret_cast<const siginfo_t*>(info);
    SiginfoToInner(map, &copy);
    info = reinterpret_cast<long>(&copy);
  }
  if (nr == SYS_rt_sigqueueinfo) return RawSyscall(nr, map.ToInner(a[0]), a[1], info);
  return RawSyscall(nr, map.ToInner(a[0]), map.ToInner(a[1]), a[2], info);
}

// Whether `fd` is a file of a FUSE file system (homefs is one): only there is the lock
// holder's ioctl asked, never of another driver that might read its number otherwise.
bool IsFuse(long fd) {
  struct statfs fs;
  return RawSyscall(SYS_fstatfs, fd, reinterpret_cast<long>(&fs)) == 0 &&
         fs.f_type == kFuseSuperMagic;
}

// F_SETLK and F_SETLKW: a POSIX lock on a home file is taken as an OFD lock on the
// process's own description of it, so that it can move (posix_locks.h).
// F_GETLK and F_OFD_GETLK: the owner of a conflicting lock. An open file description's
// lock has no owner (-1), and one held outside the job's pid namespace shows as 0; both
// stay.
// A lock on a homefs file (its home's) held by no process of this node reads as 0 (-1 to
// F_OFD_GETLK): homefs knows the holder's home id and is asked for it (lock_holder.h).
long Fcntl(const PidMap& map, const long a[6]) {
  long result;
  long asked = a[0];
  bool getlk = (a[1] == F_GETLK || a[1] == F_OFD_GETLK) && a[2] != 0;
  short type = getlk ? reinterpret_cast<struct flock*>(a[2])->l_type : 0;
  if (!PosixLockAsOfd(a[0], a[1], a[2], &result, &asked)) result = Raw(SYS_fcntl, a);
  if (result == 0 && getlk) {
    auto* lock = reinterpret_cast<struct flock*>(a[2]);
    if (lock->l_type != F_UNLCK) {
      struct flock holder = *lock;
      bool fuse = lock->l_pid <= 0 && IsFuse(asked);
      if (fuse && RawSyscall(SYS_ioctl, asked, static_cast<long>(kHomefsLockHolder),
                             reinterpret_cast<long>(&holder)) == 0) {
        lock->l_pid = holder.l_pid;  // a home id already
      } else if (!fuse && lock->l_pid == -1) {
        // At home: an open file description's lock, maybe a homefs client's, which the
        // home's file service can name.
        lock->l_pid = HomeHolderOf(asked, type, *lock);
      } else {
        lock->l_pid = static_cast<pid_t>(LockOwnerToHome(map, lock->l_pid));
      }
    }
  }
  return result;
}

// getsockopt(SOL_SOCKET, SO_PEERCRED) (the only one the filter traps): the peer's pid.
long Getsockopt(const PidMap& map, const long a[6]) {
  long result = Raw(SYS_getsockopt, a);
  if (result == 0 && a[1] == SOL_SOCKET && a[2] == SO_PEERCRED && a[3] != 0 && a[4] != 0 &&
      *reinterpret_cast<const socklen_t*>(a[4]) >= sizeof(ucred)) {
    auto* cred = reinterpret_cast<ucred*>(a[3]);
    cred->pid = static_cast<pid_t>(map.ToHome(cred->pid));
  }
  return result;
}

// rt_sigprocmask: SIGSYS is never blocked, for the same reason. From the handler, the
// new mask goes into the trapped context: the handler's return (rt_sigreturn) installs
// the context's mask, which would undo a mask set with a system call here.
long Sigprocmask(const long a[6], ucontext_t* uc) {
  if (a[3] != sizeof(unsigned long)) return -EINVAL;
  if (uc == nullptr) {
    if (a[1] == 0) return Raw(SYS_rt_sigprocmask, a);
    unsigned long set = *reinterpret_cast<const unsigned long*>(a[1]) & ~kSigsysBit;
    return RawSyscall(SYS_rt_sigprocmask, a[0], reinterpret_cast<long>(&set), a[2], a[3]);
  }
  auto* mask = reinterpret_cast<unsigned long*>(&uc->uc_sigmask);
  unsigned long old = *mask;
  if (a[1] != 0) {
    unsigned long set = *reinterpret_cast<const unsigned long*>(a[1]);
    unsigned long next;
    switch (a[0]) {
      case SIG_BLOCK:
        next = old | set;
        break;
      case SIG_UNBLOCK:
        next = old & ~set;
        break;
      case SIG_SETMASK:
        next = set;
        break;
      default:
        return -EINVAL;
    }
    // As the kernel does: SIGKILL and SIGSTOP cannot be blocked; nor, here, SIGSYS.
    next &= ~(kSigsysBit | (1UL << (SIGKILL - 1)) | (1UL << (SIGSTOP - 1)));
    *mask = next;
  }
  if (a[2] != 0) *reinterpret_cast<unsigned long*>(a[2]) = old;
  return 0;
}

}  // namespace

bool Emulates(long nr, const long a[6]) {
  switch (nr) {
    case SYS_fcntl:
      return a[1] == F_GETLK || a[1] == F_OFD_GETLK || a[1] == F_SETLK || a[1] == F_SETLKW;
    case SYS_getsockopt:
      return a[1] == SOL_SOCKET && a[2] == SO_PEERCRED;
    case SYS_setsockopt:
      return a[1] == SOL_SOCKET && a[2] == SO_PASSCRED;
    case SYS_recvmsg:  // trapped once armed (credentials.h)
    case SYS_recvmmsg:
    case SYS_sendmsg:
    case SYS_sendmmsg:
      return CredentialTrapsArmed();
    case SYS_getpid:
    case SYS_getppid:
    case SYS_gettid:
    case SYS_getpgrp:
    case SYS_getpgid:
    case SYS_getsid:
    case SYS_setpgid:
    case SYS_setsid:
    case SYS_kill:
    case SYS_tkill:
    case SYS_tgkill:
    case SYS_rt_sigqueueinfo:
    case SYS_rt_tgsigqueueinfo:
    case SYS_wait4:
    case SYS_waitid:
    case SYS_uname:
    case SYS_fork:
    case SYS_vfork:
    case SYS_clone:
    case SYS_execve:
    case SYS_execveat:
    case SYS_rt_sigaction:
    case SYS_rt_sigprocmask:
    case SYS_sched_setaffinity:
    case SYS_sched_getaffinity:
    case SYS_sched_setparam:
    case SYS_sched_getparam:
    case SYS_sched_setscheduler:
    case SYS_sched_getscheduler:
    case SYS_sched_rr_get_interval:
    case SYS_prlimit64:
    case SYS_pidfd_open:
    case SYS_getpriority:
    case SYS_setpriority:
    case SYS_clone3:
    case SYS_rt_sigtimedwait:
    case SYS_ioctl:
      return true;
    default:
      return false;
  }
}

long Emulate(long nr, const long a[6], ucontext_t* uc) {
  const ShimState& state = State();
  if (!state.active) return Raw(nr, a);
  const PidMap& map = state.map;
  switch (nr) {
    case SYS_getpid:
    case SYS_getppid:
    case SYS_gettid:
    case SYS_getpgrp:
    case SYS_setsid:
      return map.ToHome(Raw(nr, a));
    case SYS_getpgid:
    case SYS_getsid:
      return map.ToHome(RawSyscall(nr, map.ToInner(a[0])));
    case SYS_setpgid:
      return RawSyscall(nr, map.ToInner(a[0]), map.ToInner(a[1]));
    case SYS_kill:
      return RawSyscall(nr, map.TargetToInner(a[0]), a[1]);
    case SYS_tkill:
      return RawSyscall(nr, map.ToInner(a[0]), a[1]);
    case SYS_tgkill:
      return RawSyscall(nr, map.ToInner(a[0]), map.ToInner(a[1]), a[2]);
    case SYS_rt_sigqueueinfo:
    case SYS_rt_tgsigqueueinfo:
      return Sigqueueinfo(map, nr, a);
    case SYS_rt_sigtimedwait:
      return Sigtimedwait(map, a);
    case SYS_fcntl:
      return Fcntl(map, a);
    case SYS_getsockopt:
      return Getsockopt(map, a);
    case SYS_setsockopt:
      return Setsockopt(a);
    case SYS_recvmsg:
    case SYS_recvmmsg:
    case SYS_sendmsg:
    case SYS_sendmmsg:
      return CredentialCall(map, nr, a);
    case SYS_clone3:
      // Like fork: only from the handler, whose frame the child has too.
      return uc != nullptr ? Clone3(map, a) : -ENOSYS;
    case SYS_wait4:
      return Wait4(map, a);
    case SYS_waitid:
      return Waitid(map, a);
    case SYS_uname:
      return Uname(map, a);
    case SYS_fork:
    case SYS_vfork:
    case SYS_clone:
      // Outside the handler (uc null) these are never asked for: libc's fork is trapped.
      return uc != nullptr ? Fork(map, nr, a) : -ENOSYS;
    case SYS_execve:
    case SYS_execveat:
      return Exec(nr, a);
    case SYS_ioctl:
      return TerminalIoctl(map, a);
    case SYS_rt_sigaction:
      return Sigaction(a);
    case SYS_rt_sigprocmask:
      return Sigprocmask(a, uc);
    case SYS_getpriority:
    case SYS_setpriority:
      if (a[0] == PRIO_PROCESS || a[0] == PRIO_PGRP) {
        return RawSyscall(nr, a[0], map.ToInner(a[1]), a[2]);
      }
      return Raw(nr, a);
    case SYS_sched_setaffinity:
    case SYS_sched_getaffinity:
    case SYS_sched_setparam:
    case SYS_sched_getparam:
    case SYS_sched_setscheduler:
    case SYS_sched_getscheduler:
    case SYS_sched_rr_get_interval:
    case SYS_prlimit64:
    case SYS_pidfd_open:
      return RawSyscall(nr, map.ToInner(a[0]), a[1], a[2], a[3], a[4]);
    default:
      return Raw(nr, a);
  }
}

long ToLibc(long result) {
  if (result < 0 && result > -4096) {
    errno = static_cast<int>(-result);
    return -1;
  }
  return result;
}

}  // namespace homeward::preload
