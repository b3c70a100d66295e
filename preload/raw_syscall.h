// The shim's own system calls. Each carries a fixed magic value in the sixth argument
// register, which none of the calls the filter traps uses, so the filter lets exactly
// these through while the same call made by the program traps.
#pragma once

#include <cstdint>

#if !defined(__x86_64__)
#error "the job shim is written for x86-64 (the ucontext registers and the syscall stub)"
#endif

namespace homeward::preload {

// Chosen at random; a program would have to leave exactly this in r9 to slip past.
inline constexpr uint64_t kSyscallMagic = 0x6d6f73697848776dULL;

// getpid (or recvmsg) with this in r9 asks whether the filter (or the credential traps,
// credentials.h) is already there, inherited across execve: the handler answers
// kProbeAnswer, which neither call returns.
inline constexpr long kProbe = 0x70726f6265;
inline constexpr long kProbeAnswer = -4095;

// A system call with the magic set: returns the kernel's result (-errno on failure), never
// touches errno, and is safe in a signal handler and in a vfork child.
//
// The magic exists only inside this one asm statement: it is put in r9 right before the
// `syscall` and r9 is cleared right after (in the parent and in a child of clone alike).
// Left there, it would let the program's next call slip past the filter: libc's 5-argument
// calls (fork's clone among them) leave r9 as they find it, so `setsid(); fork()` made an
// untrapped clone and saw the namespace's pid. Nor may the compiler keep a copy of the
// value in another register or on the stack (glibc's syscall() loads r9 from there), which
// an immediate operand rules out.
inline long RawSyscall(long nr, long a0 = 0, long a1 = 0, long a2 = 0, long a3 = 0, long a4 = 0) {
  long result;
  register long r10 __asm__("r10") = a3;
  register long r8 __asm__("r8") = a4;
  __asm__ volatile(
      "movabsq %[magic], %%r9\n\t"
      "syscall\n\t"
      "xorl %%r9d, %%r9d"
      : "=a"(result)
      : "0"(nr), "D"(a0), "S"(a1), "d"(a2), "r"(r10), "r"(r8), [magic] "i"(kSyscallMagic)
      : "rcx", "r11", "r9", "memory");
  return result;
}

// The same with the sixth argument given: used to probe whether the filter is already in
// place (a value other than the magic traps).
inline long RawSyscall6(long nr, long a0, long a1, long a2, long a3, long a4, long a5) {
  long result;
  register long r10 __asm__("r10") = a3;
  register long r8 __asm__("r8") = a4;
  register long r9 __asm__("r9") = a5;
  __asm__ volatile("syscall"
                   : "=a"(result)
                   : "0"(nr), "D"(a0), "S"(a1), "d"(a2), "r"(r10), "r"(r8), "r"(r9)
                   : "rcx", "r11", "memory");
  return result;
}

}  // namespace homeward::preload
