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

// A system call with the magic set: returns the kernel's result (-errno on failure), never
// touches errno, and is safe in a signal handler and in a vfork child.
inline long RawSyscall(long nr, long a0 = 0, long a1 = 0, long a2 = 0, long a3 = 0, long a4 = 0) {
  long result;
  register long r10 __asm__("r10") = a3;
  register long r8 __asm__("r8") = a4;
  register uint64_t r9 __asm__("r9") = kSyscallMagic;
  __asm__ volatile("syscall"
                   : "=a"(result)
                   : "0"(nr), "D"(a0), "S"(a1), "d"(a2), "r"(r10), "r"(r8), "r"(r9)
                   : "rcx", "r11", "memory");
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
