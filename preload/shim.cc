// The shim's start-up and its SIGSYS handler. On load it reads the job's variables,
// installs the handler with its own rt_sigaction (the inherited filter would trap libc's)
// and, unless the process inherited it, the seccomp filter.
#include <dlfcn.h>
#include <linux/audit.h>
#include <sys/syscall.h>
#include <ucontext.h>
#include <unistd.h>

#include <csignal>
#include <cstdlib>
#include <cstring>

#include "emulate.h"
#include "filter.h"
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

// getpid with this in r9 asks whether the filter is already there (inherited across
// execve): the handler answers kProbeAnswer, which getpid never returns.
constexpr long kProbe = 0x70726f6265;
constexpr long kProbeAnswer = -4095;
// From the kernel's uapi, which glibc's headers do not always expose.
constexpr int kSysSeccomp = 1;                   // si_code of a seccomp trap.
constexpr unsigned long kSaRestorer = 0x04000000;  // sa_flags: sa_restorer is set.

void* Disposition(__sighandler_t handler) { return reinterpret_cast<void*>(handler); }

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
    reinterpret_cast<void (*)(int, siginfo_t*, void*)>(act.handler)(sig, info, context);
  } else {
    reinterpret_cast<void (*)(int)>(act.handler)(sig);
  }
}

void Handler(int sig, siginfo_t* info, void* context) {
  auto* uc = static_cast<ucontext_t*>(context);
  greg_t* regs = uc->uc_mcontext.gregs;
  long nr = info->si_syscall;
  // A call carrying the magic was trapped by a filter of the program's own: that filter
  // wanted it, so the program's handler answers (else this would loop).
  bool ours = info->si_code == kSysSeccomp && info->si_arch == AUDIT_ARCH_X86_64 &&
              static_cast<uint64_t>(regs[REG_R9]) != kSyscallMagic;
  if (ours && nr == SYS_getpid && regs[REG_R9] == kProbe) {
    regs[REG_RAX] = kProbeAnswer;
    return;
  }
  if (!ours || !Emulates(nr)) {
    Chain(sig, info, context);
    return;
  }
  long args[6] = {regs[REG_RDI], regs[REG_RSI], regs[REG_RDX],
                  regs[REG_R10], regs[REG_R8],  regs[REG_R9]};
  regs[REG_RAX] = Emulate(nr, args, uc);
}

void CopyEntry(char* out, const char* name, const char* value) {
  size_t n = strlen(name);
  size_t m = strlen(value);
  if (n + 1 + m + 1 > kMaxEnvEntry) m = kMaxEnvEntry - n - 2;
  memcpy(out, name, n);
  out[n] = '=';
  memcpy(out + n + 1, value, m);
  out[n + 1 + m] = '\0';
}

void Warn(const char* message) {
  RawSyscall(SYS_write, 2, reinterpret_cast<long>(message), static_cast<long>(strlen(message)));
}

// Runs before main (and before the constructors of the program's own libraries that
// come after the shim in load order).
__attribute__((constructor(101))) void Start() {
  ShimState& state = g_state;
  const char* home = getenv("HOMEWARD_HOME");
  const char* home_pid = getenv("HOMEWARD_HOME_PID");
  const char* home_ppid = getenv("HOMEWARD_HOME_PPID");
  const char* base = getenv("HOMEWARD_PID_BASE");
  if (home == nullptr || *home == '\0' || !MakePidMap(home_pid, home_ppid, base, &state.map)) {
    return;  // Not a job (or a broken environment): stay out of the way.
  }
  size_t home_len = strlen(home);
  if (home_len >= sizeof(state.hostname)) home_len = sizeof(state.hostname) - 1;
  memcpy(state.hostname, home, home_len);
  Dl_info self;
  const char* library = "libmosix_preload.so";
  if (dladdr(reinterpret_cast<void*>(&Start), &self) != 0 && self.dli_fname != nullptr) {
    library = self.dli_fname;
  }
  CopyEntry(state.library, "", library);
  memmove(state.library, state.library + 1, strlen(state.library));  // Drop the "=".
  CopyEntry(state.env[0], "LD_PRELOAD", library);
  CopyEntry(state.env[1], "HOMEWARD_HOME", home);
  CopyEntry(state.env[2], "HOMEWARD_HOME_PID", home_pid);
  CopyEntry(state.env[3], "HOMEWARD_HOME_PPID", home_ppid);
  CopyEntry(state.env[4], "HOMEWARD_PID_BASE", base);
  state.active = true;

  // SA_NODEFER: the handler must take a trap while it runs (a chained program handler, a
  // signal handler interrupting it, may call getpid). Nothing blocked while it runs.
  KernelSigaction act = {};
  act.handler = reinterpret_cast<void*>(&Handler);
  act.flags = SA_SIGINFO | SA_NODEFER | SA_RESTART | kSaRestorer;
  act.restorer = reinterpret_cast<void*>(&homeward_preload_restore_rt);
  KernelSigaction old = {};
  long err = RawSyscall(SYS_rt_sigaction, SIGSYS, reinterpret_cast<long>(&act),
                        reinterpret_cast<long>(&old), sizeof(act.mask));
  if (err != 0) {
    Warn("libmosix_preload: cannot install the SIGSYS handler; raw system calls see local ids\n");
    return;
  }
  state.user_sigsys = old;
  unsigned long sigsys = 1UL << (SIGSYS - 1);
  RawSyscall(SYS_rt_sigprocmask, SIG_UNBLOCK, reinterpret_cast<long>(&sigsys), 0, sizeof(sigsys));
  if (RawSyscall6(SYS_getpid, 0, 0, 0, 0, 0, kProbe) == kProbeAnswer) return;
  if (InstallFilter() != 0) {
    Warn("libmosix_preload: cannot install the seccomp filter; raw system calls see local ids\n");
  }
}

}  // namespace

ShimState& State() { return g_state; }

}  // namespace homeward::preload
