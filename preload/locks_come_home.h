// Locks of a job that comes home (see ARCHITECTURE.md, "Locks of a job that comes home"):
// away, the locks a process takes through homefs are held at its home by the home's file
// service; moved home, the service holds the descriptions it held them through for the
// job until its processes take them. This shim notes, in the process's own memory (which
// comes home with it), the files it locked through homefs, and once home takes what the
// service holds for it on such a file as it next locks, unlocks, flocks or closes it
// (utils/lib/lock_handover.h).
//
// Also the connection to the home's file service that F_GETLK's holder question uses.
// Async-signal-safe: reached from the SIGSYS handler; nothing allocates.
#pragma once

#include <sys/stat.h>

namespace homeward::preload {

// Whether `fd` is a file of a FUSE file system (homefs, for a job away).
bool IsFuse(long fd);

// A connection to this node's file service (the lock holder socket), with a second's
// patience for its answers; -1 when it cannot be had. Only the node's daemon (root) is
// believed: anyone could take the name first.
long ConnectLockService();

// Sends `size` bytes of `data` on `socket` with a descriptor of the file open as `fd`
// (SCM_RIGHTS): the service takes the file from it, never from a question's words.
bool SendWithFile(long socket, const void* data, unsigned long size, long fd);

// Away: the process took a lock of `kind` (kHandPosix, kHandFlock) through homefs on the
// file `st`.
void NoteLockedAway(const struct stat& st, int kind);

// Whether any file is noted (a cheap test before the others).
bool AnyLockedAway();

// Home: the kinds among `kinds` noted for the file `st`, taken out of the notes (the
// service is asked for them now).
int TakeLockedAway(const struct stat& st, int kinds);

// The description through which the home's file service held this process's locks of
// `kinds` on the file open as `fd` while it was away, now the process's own
// (close-on-exec, at or above kShimLockFdBase); `*got` says what it holds. -1 when the
// service holds none for it.
int TakeCarried(long fd, int kinds, int* got);

// Lets go of every lock the description open as `fd` holds (OFD locks, a flock).
void UnlockAll(long fd);

// Before flock(fd, op): a process that came home holding a flock on the file, which the
// home's file service held for it, takes that description in place of `fd`'s (criu's
// new one, which holds nothing); away, a flock through homefs is noted.
void FlockHook(int fd, int op);

// In a fork's child: the table's guard is free (the thread that held it is not there).
void ForgetLockedAwayGuard();

}  // namespace homeward::preload
