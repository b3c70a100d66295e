// /proc/<home id>/... names the job's own processes by the ids it sees, but the job's
// /proc is its pid namespace's and lists inner pids: the path functions of libc translate
// the one to the other, so `cat /proc/$$/status` works in a job.
#pragma once

#include <cstddef>

#include "pid_map.h"

namespace homeward::preload {

inline constexpr size_t kProcPathMax = 4096;

// When `path` is "/proc/<id>" or starts with "/proc/<id>/" and <id> is one of the job's
// home ids, or goes on with "/task/<tid>" (after <id> or "self") and <tid> is one,
// writes the path with the inner pid and tid into `out` (kProcPathMax bytes) and
// returns it; otherwise returns `path` itself. No allocation, no library calls.
// A job sees a /proc of its own pid namespace (mosjob-init mounts it in the job's view),
// so every inner pid names that process there; the caller's own id (`self_inner`, its
// inner pid) becomes "/proc/self", which names the same process in any /proc.
const char* TranslateProcPath(const PidMap& map, const char* path, char* out,
                              long self_inner = -1);

}  // namespace homeward::preload
