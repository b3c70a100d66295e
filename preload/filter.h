// The shim's seccomp filter: traps, with SIGSYS, the calls whose answers depend on pids or
// on the node's name, unless they carry the shim's magic (see raw_syscall.h).
#pragma once

namespace homeward::preload {

// Installs the filter on every thread of the process. Returns 0 or -errno.
int InstallFilter();

}  // namespace homeward::preload
