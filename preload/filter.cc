// Builds and loads the filter with libseccomp. Only called from the shim's constructor,
// so allocating here is fine.
#include "filter.h"

#include <fcntl.h>
#include <sched.h>
#include <seccomp.h>
#include <sys/socket.h>
#include <cerrno>
#include <csignal>

#include <initializer_list>

#include "raw_syscall.h"

namespace homeward::preload {
namespace {

// Calls whose every use the shim answers.
constexpr int kAlwaysTrapped[] = {
    SCMP_SYS(getpid),  SCMP_SYS(getppid), SCMP_SYS(gettid),          SCMP_SYS(getpgrp),
    SCMP_SYS(getpgid), SCMP_SYS(getsid),  SCMP_SYS(setpgid),         SCMP_SYS(kill),
    SCMP_SYS(tkill),   SCMP_SYS(tgkill),  SCMP_SYS(rt_sigqueueinfo), SCMP_SYS(rt_tgsigqueueinfo),
    SCMP_SYS(wait4),   SCMP_SYS(waitid),  SCMP_SYS(uname),           SCMP_SYS(fork),
    SCMP_SYS(vfork),   SCMP_SYS(execve),  SCMP_SYS(execveat),        SCMP_SYS(rt_sigaction),
    SCMP_SYS(setsid),  SCMP_SYS(clone3),  SCMP_SYS(rt_sigtimedwait),
};

// Calls that take a pid as first argument, where 0 means the caller: only other pids
// need translating, so the common "0" passes at full speed.
constexpr int kTrappedWithPid[] = {
    SCMP_SYS(sched_setaffinity),     SCMP_SYS(sched_getaffinity),  SCMP_SYS(sched_setparam),
    SCMP_SYS(sched_getparam),        SCMP_SYS(sched_setscheduler), SCMP_SYS(sched_getscheduler),
    SCMP_SYS(sched_rr_get_interval), SCMP_SYS(prlimit64),          SCMP_SYS(pidfd_open),
};

struct Context {
  scmp_filter_ctx ctx;
  ~Context() { seccomp_release(ctx); }
};

}  // namespace

int InstallFilter() {
  Context filter{seccomp_init(SCMP_ACT_ALLOW)};
  if (filter.ctx == nullptr) return -ENOMEM;
  scmp_filter_ctx ctx = filter.ctx;
  // A 32-bit call from a 64-bit program is let through rather than killed: the shim does
  // not answer those, and killing would break programs that work without it.
  int err = seccomp_attr_set(ctx, SCMP_FLTATR_ACT_BADARCH, SCMP_ACT_ALLOW);
  if (err == 0) err = seccomp_attr_set(ctx, SCMP_FLTATR_CTL_TSYNC, 1);
  const scmp_arg_cmp not_ours = SCMP_A5(SCMP_CMP_NE, kSyscallMagic);
  for (int nr : kAlwaysTrapped) {
    if (err == 0) err = seccomp_rule_add(ctx, SCMP_ACT_TRAP, nr, 1, not_ours);
  }
  for (int nr : kTrappedWithPid) {
    if (err == 0) {
      err = seccomp_rule_add(ctx, SCMP_ACT_TRAP, nr, 2, not_ours, SCMP_A0(SCMP_CMP_NE, 0));
    }
  }
  for (int nr : {SCMP_SYS(getpriority), SCMP_SYS(setpriority)}) {
    if (err == 0) {
      err = seccomp_rule_add(ctx, SCMP_ACT_TRAP, nr, 2, not_ours, SCMP_A1(SCMP_CMP_NE, 0));
    }
  }
  // Fork-like clones only: a clone with CLONE_VM or its own stack (a thread, posix_spawn)
  // cannot be made from the handler, whose frame the child would not have. Its result is
  // the kernel's tid, which libc keeps to itself.
  if (err == 0) {
    err = seccomp_rule_add(ctx, SCMP_ACT_TRAP, SCMP_SYS(clone), 3, not_ours,
                           SCMP_A0(SCMP_CMP_MASKED_EQ, CLONE_VM, 0), SCMP_A1(SCMP_CMP_EQ, 0));
  }
  // clone3 passes its flags in memory, out of the filter's sight: it is always trapped, and
  // the handler makes a fork-like one itself and answers ENOSYS to the others, so that
  // libc falls back to clone, which the filter can read (kAlwaysTrapped).
  // The calls that report another process's pid in memory, trapped only when they do: a
  // lock's owner (F_GETLK, F_OFD_GETLK) and a unix socket's peer (SO_PEERCRED). And the
  // POSIX locks, which a job takes as OFD locks of its own on the home's files so that
  // they can move with it (posix_locks.h).
  for (scmp_datum_t cmd : {F_GETLK, F_OFD_GETLK, F_SETLK, F_SETLKW}) {
    if (err == 0) {
      err = seccomp_rule_add(ctx, SCMP_ACT_TRAP, SCMP_SYS(fcntl), 2, not_ours,
                             SCMP_A1(SCMP_CMP_EQ, cmd));
    }
  }
  if (err == 0) {
    err = seccomp_rule_add(ctx, SCMP_ACT_TRAP, SCMP_SYS(getsockopt), 3, not_ours,
                           SCMP_A1(SCMP_CMP_EQ, SOL_SOCKET), SCMP_A2(SCMP_CMP_EQ, SO_PEERCRED));
  }
  // SO_PASSCRED turned on arms the traps of raw recvmsg and sendmsg (credentials.h).
  if (err == 0) {
    err = seccomp_rule_add(ctx, SCMP_ACT_TRAP, SCMP_SYS(setsockopt), 3, not_ours,
                           SCMP_A1(SCMP_CMP_EQ, SOL_SOCKET), SCMP_A2(SCMP_CMP_EQ, SO_PASSCRED));
  }
  // Blocking or setting the signal mask: the handler keeps SIGSYS out of it.
  for (scmp_datum_t how : {SIG_BLOCK, SIG_SETMASK}) {
    if (err == 0) {
      err = seccomp_rule_add(ctx, SCMP_ACT_TRAP, SCMP_SYS(rt_sigprocmask), 3, not_ours,
                             SCMP_A0(SCMP_CMP_EQ, how), SCMP_A1(SCMP_CMP_NE, 0));
    }
  }
  if (err == 0) err = seccomp_load(ctx);
  return err;
}

}  // namespace homeward::preload
