// A lock's holder as the home names it (see ARCHITECTURE.md, "Locks are the home's"):
// F_GETLK through homefs reports the holder by the id its home knows it by, whichever node
// it runs on. Header-only parts are shared with the job shim (no exceptions there).
#pragma once

#include <fcntl.h>
#include <linux/ioctl.h>
#include <sys/types.h>

namespace homeward {

// FUSE's getlk answer loses a pid that is not a process of the asking node (the kernel
// translates it into its own pid namespace: 0), so the job shim asks homefs for the
// holder of the lock F_GETLK just reported with this ioctl on the same descriptor: in, the
// reported lock (type, whence SEEK_SET, start, length); out, the same with l_pid the
// holder's home id (-1: an open file description's lock with no process behind it).
// ENOTTY from anything but homefs; ENOENT when the answer is not the last F_GETLK this
// thread asked of homefs on this file.
inline constexpr unsigned long kHomefsLockHolder = _IOWR('h', 0x4c, struct flock);

// The home id of process `pid` of this node: for a process of a job (in a pid namespace
// below this one, with the job's HOMEWARD_HOME_PID, HOMEWARD_HOME_PPID and
// HOMEWARD_PID_BASE), its pid in the job mapped as the job's shim maps it
// (preload/pid_map.h: the program is its mosrun at home); any other process, `pid`
// itself. A process gone meanwhile: `pid`.
pid_t HomeIdOf(pid_t pid);

// Process `pid`'s pid in its innermost pid namespace (NStgid's last field: a job's own),
// 0 when it is in this node's own (one level) or gone.
long InnermostPid(pid_t pid);

}  // namespace homeward
