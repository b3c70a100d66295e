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

// At home, a job's F_GETLK goes to the home's kernel, which reports a lock the file
// service holds for a homefs client as an open file description's (pid -1). The job shim
// then asks the file service, which knows the holder's home id, on a unix socket at this
// name under the node's /mosix (its own on every node, and in a job at home's view, which
// is a copy of the node's tree), served by root only (the shim checks SO_PEERCRED). One
// question, one answer, as these structures. The question names no file: it comes with a
// descriptor of the file (SCM_RIGHTS, opened for reading or writing, not O_PATH), whose
// fstat the service takes, so that no one learns of locks on a file it cannot open. The
// answer's pid is -1 when no one is found, and when the question is refused (another
// version or size, no descriptor, not a regular file).
inline constexpr char kLockHolderSocketName[] = "lock-holders";
inline constexpr char kLockHolderSocketPath[] = "/mosix/lock-holders";  // the shim's
inline constexpr unsigned kLockHolderQuestionVersion = 2;  // 1 named the file by dev, ino
struct LockHolderQuestion {
  unsigned version;       // kLockHolderQuestionVersion
  short type;             // the type F_GETLK asked about
  long long start, end;   // the conflicting lock's range (end: INT64_MAX to EOF)
};
struct LockHolderAnswer {
  int pid;
};

// The job shim keeps the descriptions it takes a process's POSIX locks through at or above
// this descriptor (preload/posix_locks.h): the home's file service names the holder of an
// OFD lock held through one of these by its process, where the kernel gives no owner for a
// program's own OFD lock.
inline constexpr int kShimLockFdBase = 700;

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
