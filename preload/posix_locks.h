// A job's POSIX record locks (fcntl F_SETLK, F_SETLKW, F_GETLK) on the home's own files,
// taken as OFD locks on a description of the process's own, one per file, so that a job
// at home that holds one can move (see ARCHITECTURE.md, "Locks of a job that leaves
// home"). The kernel has no call that hands a POSIX lock, owned by a process's file
// table, to another owner without a moment when it is free; an OFD lock belongs to an
// open file description, which the home's daemon takes a descriptor of from the frozen
// job (pidfd_getfd) and keeps, so the lock stays held while the job moves and is bound
// again to the job's restored description on the target. One description per process and
// file keeps POSIX semantics where they matter: the process's locks merge and split as
// one owner's, exclude every other process's (and local processes' POSIX locks), and go
// when the process closes the file (close(), close_range(), closefrom(), fclose(), see
// DetachOnClose and CloseRange) or ends,
// and stay across execve.
//
// Files of homefs (a job away) are left to homefs, which holds them as OFD locks at the
// home already, unless the process took its lock at home and carried it here: then its
// own description is used, as before the move. A process that took locks through homefs
// and came home takes the descriptions the home's file service held them through for it
// as it next locks, unlocks or closes the file (locks_come_home.h). Async-signal-safe:
// reached from the SIGSYS handler; nothing allocates.
#pragma once

#include <fcntl.h>

namespace homeward::preload {

// Whether fcntl(fd, cmd, lock) is answered here (`*result` set, kernel form): a POSIX
// lock command on a regular, linked file this process locks as OFD, or will. `*asked`:
// the descriptor the kernel was asked through (F_GETLK's holder is named from it).
bool PosixLockAsOfd(long fd, long cmd, long lock, long* result, long* asked);

// At home, the holder of a lock the home's kernel reported as an open file description's
// (pid -1) on the file open as `fd`, asked of the home's file service (lock_holder.h): a
// homefs client's lock by its home id. -1 when the service names no one (a local OFD
// lock, one of a job at home) or cannot be asked. `type`: what F_GETLK asked about.
int HomeHolderOf(long fd, short type, const struct flock& found);

// The process closes `fd` (close, fclose, freopen): if it is a file it locked through its
// own description, that description leaves the table and is returned (else -1), for
// CloseDetached to close once the program's own close is done (after fclose's flush), as
// a close drops a process's POSIX locks.
int DetachOnClose(int fd);
void CloseDetached(int own, int closed);

// close_range(first, last, flags) (and closefrom, which is one), kernel form: each file
// the process locked and closes a descriptor of here loses its locks, as by close(); the
// shim's own descriptions in the range stay open, so a process that closes the range but
// keeps a locked file open elsewhere keeps its locks.
long CloseRange(unsigned first, unsigned last, int flags);

// execve keeps a process's POSIX locks, unless it closes a descriptor of the file (one
// close-on-exec). Before this process's exec, the descriptions that hold locks on a file
// it keeps open across the exec lose their close-on-exec flag (the others close with the
// exec, and their locks go); AfterFailedExec puts it back. The new image's shim takes them
// into its table again (FindKeptLocks, at its start). A vfork child's exec keeps none (its
// table is its parent's).
void BeforeExec();
void AfterFailedExec();
void FindKeptLocks();

// In a fork's child: the parent's descriptions are not the child's (POSIX locks are not
// inherited), so the child's copies close and it starts with none.
void ForgetInheritedLocks();

}  // namespace homeward::preload
