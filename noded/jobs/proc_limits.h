// A process's resource limits as /proc/<pid>/limits lists them. Anyone who may read the
// process's /proc can read that file, whereas prlimit on another user's process needs
// CAP_SYS_RESOURCE, which root lacks in some containers.
#pragma once

#include <sys/resource.h>

#include <string_view>
#include <vector>

namespace homeward {

struct ProcLimit {
  int resource;  // RLIMIT_*
  rlim_t soft;
  rlim_t hard;
};

// The limits of /proc/<pid>/limits text, in the order the text lists them. "unlimited" is
// RLIM_INFINITY; lines of unknown resources and lines that do not parse are left out.
std::vector<ProcLimit> ParseProcLimits(std::string_view text);

}  // namespace homeward
