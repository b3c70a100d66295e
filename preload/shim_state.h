// What the shim knows about its job, read once from the environment when the shim loads
// and then only read. It is the one process-wide object of the shim: the SIGSYS handler
// and the libc wrappers are entered from anywhere in the program with no context to pass,
// so they find it here. Fixed-size storage: nothing in it allocates.
#pragma once

#include <cstddef>

#include "pid_map.h"

namespace homeward::preload {

// The kernel's struct sigaction for rt_sigaction on x86-64 (not glibc's, whose mask is
// 128 bytes); the shim keeps the program's own SIGSYS disposition in this form.
struct KernelSigaction {
  void* handler;
  unsigned long flags;
  void* restorer;
  unsigned long mask;
};

inline constexpr size_t kMaxEnvEntry = 4096;
// LD_PRELOAD, the four HOMEWARD_* variables every job has, and HOMEWARD_CHECKPOINT_SIGNAL.
inline constexpr int kEnvCount = 6;

// What the shim's handler of the checkpoint signal (mosrun -S) sends the job's init, as
// the value of a queued SIGCONT (the one signal a process may send any process of its
// session, the init included): noded/jobs/job_init.cc knows it too.
inline constexpr int kCheckpointAsk = 0x43484b50;

// Signals 1 to 64 (_NSIG - 1 on x86-64), by number.
inline constexpr int kSignalSlots = 65;

struct ShimState {
  bool active = false;  // False when the job's variables are absent: then the shim is inert.
  PidMap map;
  char hostname[65] = {};  // HOMEWARD_HOME, as uname's nodename (at most 64 bytes).
  // "NAME=value" for each variable execve must carry into the next program.
  char env[kEnvCount][kMaxEnvEntry] = {};
  // The shim's own file name, for telling whether LD_PRELOAD still names it.
  char library[kMaxEnvEntry] = {};
  // The program's SIGSYS disposition, as it believes it set it. A program's rt_sigaction on
  // SIGSYS changes this instead of the kernel's, which keeps the shim's handler.
  // Written without a lock (a lock could be inherited held by a forked child); two threads
  // setting SIGSYS at once leave one of the two, as the kernel would.
  KernelSigaction user_sigsys = {};
  int checkpoint_signal = 0;  // mosrun -S: asks the job's init for a checkpoint
  // The program's SA_SIGINFO handlers, by signal: the kernel calls the shim's trampoline,
  // which gives the handler its siginfo with the sender as a home id (emulate.cc).
  // Written without a lock, like user_sigsys.
  void* siginfo_handlers[kSignalSlots] = {};
};

ShimState& State();

}  // namespace homeward::preload
