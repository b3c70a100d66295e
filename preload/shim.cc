// The shim's start-up and its SIGSYS handler. On load it reads the job's variables,
// installs the handler with its own rt_sigaction (the inherited filter would trap libc's)
// and, unless the process inherited it, the seccomp filter.
#include <dlfcn.h>
#include <fcntl.h>
#include <linux/audit.h>
#include <sys/syscall.h>
#include <ucontext.h>
#include <unistd.h>

#include <cerrno>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "c_boundary.h"
#include "credentials.h"
#include "emulate.h"
#include "filter.h"
#include "home_ids.h"
#include "posix_locks.h"
#include "raw_syscall.h"
#include "shim_state.h"

extern "C" void homeward_preload_restore_rt();
// The signal return trampoline the kernel's rt_sigaction needs on x86-64 (libc's is
// private to libc).
__asm__(
    ".text\n"
    ".align 16\n"
    ".type homeward_preload_restore_rt,@function\n"
    "homeward_preload_restore_rt:\n"
    "  movq $15, %rax\n"  // SYS_rt_sigreturn
    "  syscall\n"
    "  hlt\n"
    ".size homeward_preload_restore_rt,.-homeward_preload_restore_rt\n");

namespace homeward::preload {
namespace {

// From the kernel's uapi, which glibc's headers do not always expose.
constexpr int kSysSeccomp = 1;                     // si_code of a seccomp trap.
constexpr unsigned long kSaRestorer = 0x04000000;  // sa_flags: sa_restorer is set.

void* Disposition(__sighandler_t handler) {
  return reinterpret_cast<void*>(handler);
}

ShimState g_state;

// Hands a SIGSYS that is not the shim's to the program's own disposition.
void Chain(int sig, siginfo_t* info, void* context) {
  ShimState& state = State();
  KernelSigaction act = state.user_sigsys;
  bool trap = info->si_code == kSysSeccomp;
  if (act.handler == Disposition(SIG_IGN) && !trap) return;
  if (act.handler == Disposition(SIG_DFL) || act.handler == Disposition(SIG_IGN)) {
    // What the kernel does with an unhandled SIGSYS: end the process (with a core).
    KernelSigaction dfl = {};
    RawSyscall(SYS_rt_sigaction, SIGSYS, reinterpret_cast<long>(&dfl), 0, sizeof(dfl.mask));
    RawSyscall(SYS_tgkill, RawSyscall(SYS_getpid), RawSyscall(SYS_gettid), SIGSYS);
    return;
  }
  if (act.flags & SA_RESETHAND) state.user_sigsys.handler = Disposition(SIG_DFL);
  if (act.flags & SA_SIGINFO) {
    // A SIGSYS sent by a process (kill, sigqueue) names its sender as any signal does.
    if (!trap) SiginfoToHome(state.map, info);
    reinterpret_cast<void (*)(int, siginfo_t*, void*)>(act.handler)(sig, info, context);
  } else {
    reinterpret_cast<void (*)(int)>(act.handler)(sig);
  }
}

void Handle(int sig, siginfo_t* info, void* context) {
  auto* uc = static_cast<ucontext_t*>(context);
  greg_t* regs = uc->uc_mcontext.gregs;
  long nr = info->si_syscall;
  // A call carrying the magic was trapped by a filter of the program's own: that filter
  // wanted it, so the program's handler answers (else this would loop).
  bool ours = info->si_code == kSysSeccomp && info->si_arch == AUDIT_ARCH_X86_64 &&
              static_cast<uint64_t>(regs[REG_R9]) != kSyscallMagic;
  if (ours && (nr == SYS_getpid || nr == SYS_recvmsg) && regs[REG_R9] == kProbe) {
    regs[REG_RAX] = kProbeAnswer;
    return;
  }
  long args[6] = {regs[REG_RDI], regs[REG_RSI], regs[REG_RDX],
                  regs[REG_R10], regs[REG_R8],  regs[REG_R9]};
  if (!ours || !Emulates(nr, args)) {
    Chain(sig, info, context);
    return;
  }
  regs[REG_RAX] = Emulate(nr, args, uc);
}

// The SIGSYS handler, a C boundary like the libc hooks.
void Handler(int sig, siginfo_t* info, void* context) {
  GuardedCall("SIGSYS", [&] { Handle(sig, info, context); });
}

// The names of the variables, in the order of ShimState::env.
constexpr const char* kEnvNames[kEnvCount] = {"LD_PRELOAD",        "HOMEWARD_HOME",
                                              "HOMEWARD_HOME_PID", "HOMEWARD_HOME_PPID",
                                              "HOMEWARD_PID_BASE", "HOMEWARD_CHECKPOINT_SIGNAL"};

// The helpers below may run before the shim's own relocations are complete (see Early), so
// they call nothing outside this file: no libc, and no loops the compiler could turn into
// memcpy calls (the library is built with -fno-tree-loop-distribute-patterns).
size_t Length(const char* s) {
  size_t n = 0;
  while (s[n] != '\0') ++n;
  return n;
}

// Stores `entry` ("NAME=value") in its slot if it is one of the job's variables.
void Keep(const char* entry) {
  ShimState& state = g_state;
  for (int i = 0; i < kEnvCount; ++i) {
    const char* name = kEnvNames[i];
    size_t n = 0;
    while (name[n] != '\0' && entry[n] == name[n]) ++n;
    if (name[n] != '\0' || entry[n] != '=') continue;
    size_t k = 0;
    for (; entry[k] != '\0' && k + 1 < kMaxEnvEntry; ++k) state.env[i][k] = entry[k];
    state.env[i][k] = '\0';
  }
}

const char* Value(int index) {
  const char* entry = g_state.env[index];
  return entry[0] == '\0' ? nullptr : entry + Length(kEnvNames[index]) + 1;
}

// Turns the kept variables into the pid map and host name. False when they are not a
// job's (then the shim stays out of the way: a program not run as a job sees the kernel).
bool Activate() {
  ShimState& state = g_state;
  const char* home = Value(1);
  if (home == nullptr || *home == '\0' || !MakePidMap(Value(2), Value(3), Value(4), &state.map)) {
    return false;
  }
  size_t k = 0;
  for (; home[k] != '\0' && k + 1 < sizeof(state.hostname); ++k) state.hostname[k] = home[k];
  state.hostname[k] = '\0';
  state.checkpoint_signal = 0;
  if (const char* sig = Value(5)) {
    int number = 0;
    for (; *sig >= '0' && *sig <= '9' && number < 1000; ++sig) number = number * 10 + (*sig - '0');
    if (*sig == '\0' && number > 0 && number < 65) state.checkpoint_signal = number;
  }
  return true;
}

// mosrun -S: the checkpoint signal, delivered to a process of the job, asks the job's init
// (pid 1 of its namespace) for a checkpoint with a queued SIGCONT carrying kCheckpointAsk.
void AskForCheckpoint(int, siginfo_t*, void*) {
  siginfo_t info = {};
  info.si_signo = SIGCONT;
  info.si_code = SI_QUEUE;
  info.si_pid = static_cast<pid_t>(RawSyscall(SYS_getpid));
  info.si_uid = static_cast<uid_t>(RawSyscall(SYS_getuid));
  info.si_value.sival_int = kCheckpointAsk;
  RawSyscall(SYS_rt_sigqueueinfo, 1, SIGCONT, reinterpret_cast<long>(&info));
}

// A program that sets its own handler for the signal takes it over (the shim does not
// trap rt_sigaction for it).
void InstallCheckpointHandler() {
  int sig = g_state.checkpoint_signal;
  if (sig == 0 || sig == SIGSYS) return;
  KernelSigaction act = {};
  act.handler = reinterpret_cast<void*>(&AskForCheckpoint);
  act.flags = SA_SIGINFO | SA_RESTART | kSaRestorer;
  act.restorer = reinterpret_cast<void*>(&homeward_preload_restore_rt);
  RawSyscall(SYS_rt_sigaction, sig, reinterpret_cast<long>(&act), 0, sizeof(act.mask));
}

// Installs the SIGSYS handler with a raw rt_sigaction (an inherited filter traps libc's).
// SA_NODEFER: the handler must take a trap while it runs (a chained program handler, a
// signal handler interrupting it, may call getpid).
bool InstallHandler() {
  KernelSigaction act = {};
  act.handler = reinterpret_cast<void*>(&Handler);
  act.flags = SA_SIGINFO | SA_NODEFER | SA_RESTART | kSaRestorer;
  act.restorer = reinterpret_cast<void*>(&homeward_preload_restore_rt);
  KernelSigaction old = {};
  if (RawSyscall(SYS_rt_sigaction, SIGSYS, reinterpret_cast<long>(&act),
                 reinterpret_cast<long>(&old), sizeof(act.mask)) != 0) {
    return false;
  }
  g_state.user_sigsys = old;
  unsigned long sigsys = 1UL << (SIGSYS - 1);
  RawSyscall(SYS_rt_sigprocmask, SIG_UNBLOCK, reinterpret_cast<long>(&sigsys), 0, sizeof(sigsys));
  return true;
}

// The earliest start: the process may have inherited the filter through execve, and the
// constructors of the program's libraries run before the shim's (ld.so initialises
// dependencies first), so a library calling getpid or sigaction in its constructor would
// meet the trap with no handler and die. Relocations come before every constructor, and
// an IFUNC resolver runs during the shim's own relocation: there the job's variables are
// read from /proc/self/environ (libc's environ is not set up yet) and the handler put in.
void Early() {
  static char entry[kMaxEnvEntry];
  static char chunk[4096];
  long fd = RawSyscall(SYS_openat, AT_FDCWD, reinterpret_cast<long>("/proc/self/environ"),
                       O_RDONLY | O_CLOEXEC);
  if (fd < 0) return;
  size_t used = 0;
  bool overflow = false;
  for (;;) {
    long n = RawSyscall(SYS_read, fd, reinterpret_cast<long>(chunk), sizeof(chunk));
    if (n == -EINTR) continue;
    if (n <= 0) break;
    for (long i = 0; i < n; ++i) {
      if (chunk[i] == '\0') {
        entry[used] = '\0';
        if (!overflow) Keep(entry);
        used = 0;
        overflow = false;
      } else if (used + 1 < sizeof(entry)) {
        entry[used++] = chunk[i];
      } else {
        overflow = true;
      }
    }
  }
  RawSyscall(SYS_close, fd);
  if (Activate() && InstallHandler()) g_state.active = true;
}

void Nothing() {}

}  // namespace
}  // namespace homeward::preload

extern "C" __attribute__((used)) void (*homeward_preload_resolve_early())() {
  homeward::preload::Early();
  return &homeward::preload::Nothing;
}

namespace homeward::preload {
namespace {

void Warn(const char* message) {
  RawSyscall(SYS_write, 2, reinterpret_cast<long>(message), static_cast<long>(Length(message)));
}

// The ordinary start, before main: finishes what Early began (or does it all, if /proc
// was not there), names the shim for execve's LD_PRELOAD, and installs the filter unless
// the process inherited it.
__attribute__((constructor(101))) void Start() {
  ShimState& state = g_state;
  if (!state.active) {
    for (const char* name : kEnvNames) {
      const char* value = getenv(name);
      if (value == nullptr) continue;
      static char entry[kMaxEnvEntry];
      snprintf(entry, sizeof(entry), "%s=%s", name, value);
      Keep(entry);
    }
    if (!Activate()) return;
    if (!InstallHandler()) {
      Warn(
          "libmosix_preload: cannot install the SIGSYS handler; raw system calls see local "
          "ids\n");
      return;
    }
    state.active = true;
  }
  Dl_info self;
  if (dladdr(reinterpret_cast<void*>(&Start), &self) != 0 && self.dli_fname != nullptr &&
      strlen(self.dli_fname) + sizeof("LD_PRELOAD=") < kMaxEnvEntry) {
    snprintf(state.library, sizeof(state.library), "%s", self.dli_fname);
    snprintf(state.env[0], sizeof(state.env[0]), "LD_PRELOAD=%s", self.dli_fname);
  }
  InstallCheckpointHandler();
  FindKeptLocks();  // the POSIX locks this process held before its exec
  MarkInheritedSignalfds();
  if (RawSyscall6(SYS_getpid, 0, 0, 0, 0, 0, kProbe) == kProbeAnswer) {
    ProbeCredentialTraps();
    return;
  }
  if (InstallFilter() != 0) {
    Warn("libmosix_preload: cannot install the seccomp filter; raw system calls see local ids\n");
  }
}

}  // namespace

ShimState& State() {
  return g_state;
}

}  // namespace homeward::preload

// The IFUNC whose resolver is Early (above), and a reference to it that the linker must
// resolve with an IRELATIVE relocation, applied when ld.so relocates the shim.
extern "C" void homeward_preload_early() __attribute__((ifunc("homeward_preload_resolve_early")));
extern "C"
    __attribute__((used)) void (*const homeward_preload_early_ref)() = &homeward_preload_early;
