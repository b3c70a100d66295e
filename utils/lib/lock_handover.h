// Locks of a job that comes home (see ARCHITECTURE.md, "Locks of a job that comes home"):
// the question a job's shim asks the home's file service on the lock holder socket
// (lock_holder.h), and its answer. Header-only, shared with the job shim.
#pragma once

#include "lock_holder.h"

namespace homeward {

// A job that came home holds the locks it held away through descriptions the home's file
// service held for it; its shim asks for one, on the lock holder socket, when the process
// next locks, unlocks, flocks or closes the file, and the service hands it over
// (SCM_RIGHTS with the answer) and lets go of it: the process's own from then on.
//
// As a LockHolderQuestion, the question names no file: it comes with a descriptor of the
// file (SCM_RIGHTS, not O_PATH), whose fstat the service takes. Nor does it name the
// asker: the service takes its pid and uid from SO_PEERCRED, and hands over only to a
// process of the job that came home (in its mount namespace, of its user), and only
// what that process held (a POSIX owner is a process: the asker itself). Told apart from
// a LockHolderQuestion by its version. The answer's kind is -1 when the question is
// refused, 0 when nothing is held for the asker on that file.
inline constexpr unsigned kLockHandoverQuestionVersion = 0x4c480001;  // "LH", 1
inline constexpr int kHandPosix = 1;  // the process's POSIX locks (the shim's own description)
inline constexpr int kHandFlock = 2;  // a flock (it replaces the program's descriptor)
inline constexpr int kHandAny = 3;    // either: the process closes the file
struct LockHandoverQuestion {
  unsigned version;  // kLockHandoverQuestionVersion
  int kind;          // kHandPosix, kHandFlock or kHandAny
};
struct LockHandoverAnswer {
  int kind;  // what the descriptor sent with it holds (kHandPosix, kHandFlock); 0, -1
  int left;  // descriptions still held for the job after this one
};
static_assert(sizeof(LockHandoverQuestion) != sizeof(LockHolderQuestion));

}  // namespace homeward
