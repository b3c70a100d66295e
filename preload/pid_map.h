// The mapping between the pids a job sees in its own pid namespace ("inner" pids) and
// the ids its home knows it by. Pure functions, shared by the shim's wrappers, its SIGSYS
// handler and the tests; nothing here allocates or calls the kernel.
#pragma once

#include <sys/types.h>

namespace homeward::preload {

// Inner pids are below 2^22 (the kernel's pid_max ceiling), so a per-job base that is a
// multiple of 2^22 gives every job of a home its own block of ids that no real pid uses.
inline constexpr long kPidSpan = 4194304;

struct PidMap {
  long home_pid = 0;   // The job's `mosrun` at home: what inner pid 2 (the program) is.
  long home_ppid = 0;  // mosrun's parent at home: what inner pid 1 (the job init) is.
  long base = 0;       // Every other inner pid p is base + p.

  // An inner pid as the home knows it. 0 and negative values (no process, errors) pass.
  constexpr long ToHome(long inner) const {
    if (inner <= 0) return inner;
    if (inner == 2) return home_pid;
    if (inner == 1) return home_ppid;
    return base + inner;
  }

  // A home id as the kernel knows it here. A value that is none of the job's home ids is
  // taken to be an inner pid already (the kernel hands inner tids to libc, which passes
  // them back, e.g. pthread_kill's tgkill), so it passes unchanged.
  constexpr long ToInner(long home) const {
    if (home <= 0) return home;
    if (home == home_pid) return 2;
    if (home == home_ppid) return 1;
    if (home > base && home < base + kPidSpan) return home - base;
    return home;
  }

  // True when `home` would pass ToInner unchanged: the caller used an inner pid, so the
  // answer about that pid is given in the same form (glibc's system() waits for the
  // inner pid its posix_spawn got and compares waitpid's result with it).
  constexpr bool IsInnerForm(long id) const { return id > 0 && ToInner(id) == id; }

  // A pid argument of kill/wait4: >0 a process, 0 and -1 special, < -1 a process group.
  constexpr long TargetToInner(long target) const {
    if (target < -1) return -ToInner(-target);
    return ToInner(target);
  }
};

// Parses a decimal integer as found in the HOMEWARD_* variables; false on anything else.
// Hand-written because the shim must not depend on locale or allocate.
constexpr bool ParsePid(const char* text, long* out) {
  if (text == nullptr || *text == '\0') return false;
  long value = 0;
  for (const char* c = text; *c != '\0'; ++c) {
    if (*c < '0' || *c > '9') return false;
    if (value > (1L << 50)) return false;
    value = value * 10 + (*c - '0');
  }
  *out = value;
  return true;
}

// Builds the map from the job's environment values; false when one is missing or bad
// (the shim then stays out of the way: a program not started as a job sees the kernel).
constexpr bool MakePidMap(const char* home_pid, const char* home_ppid, const char* base,
                          PidMap* out) {
  PidMap map;
  if (!ParsePid(home_pid, &map.home_pid) || !ParsePid(home_ppid, &map.home_ppid) ||
      !ParsePid(base, &map.base)) {
    return false;
  }
  if (map.home_pid <= 0 || map.base <= 0 || map.base % kPidSpan != 0) return false;
  *out = map;
  return true;
}

}  // namespace homeward::preload
