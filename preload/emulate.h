// The shim's answer to one system call: the call made for real with pids translated
// between the job's home ids and the kernel's, and results translated back. Used both by
// the libc wrappers and by the SIGSYS handler, so both paths give the same answers.
#pragma once

#include <ucontext.h>

namespace homeward::preload {

// True when the SIGSYS handler answers `nr` with arguments `a` itself (the filter traps
// it); a trap of the same call with other arguments is a filter of the program's own.
bool Emulates(long nr, const long a[6]);

// Makes system call `nr` with arguments `a` as the job would see it; returns the kernel's
// form of the result (-errno on failure). `uc` is the trapped context when called from
// the SIGSYS handler (fork-like calls need it), else null. Async-signal-safe.
long Emulate(long nr, const long a[6], ucontext_t* uc);

// Converts a kernel-style result to libc's: -1 with errno set on failure.
long ToLibc(long result);

}  // namespace homeward::preload
