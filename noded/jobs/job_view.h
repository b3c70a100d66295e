// The job's mount view, as mosjob-init builds it (see job_init.cc).
//
// A job's mount namespace has two roots. Its root mount is a small tmpfs of the init's
// own, holding the node's /proc (CRIU, which runs in this namespace to dump the job, needs
// the node's pids there), the OS paths CRIU and its action scripts run from, a copy of
// this program, and at kJobView the job's view: the home's tree (or at home the node's
// own), with the job's own /proc, a minimal /dev and a read-only /sys. The init stays at
// the root mount; the user's program is chrooted into the view, without the capabilities
// that could leave it (CAP_SYS_CHROOT, CAP_SYS_ADMIN; a chrooted process may not create a
// user namespace), and the init itself is out of its reach: ptrace and /proc/1/root need
// the init's uid and a superset of its capabilities.
#pragma once

#include <string>

namespace homeward::job_init {

inline constexpr char kJobView[] = "/job";
// The copy of this program in the job's root, which the init runs itself again from.
inline constexpr char kInitCopy[] = "/mosjob-init";

// Reports `what` and errno on the init's status descriptor and exits (job_init.cc).
[[noreturn]] void Die(const std::string& what);

// The job's own /proc (of the calling process's pid namespace) in its view, with what a
// job must not change or read of its node read-only or hidden.
void MountJobProc();
// Builds the job's mount namespace as described at kJobView and moves into its root.
// `root` is the home's tree ("/" at home); `own_proc`: mount the job's /proc now.
void BuildJobRoot(const std::string& root, bool own_proc);
// Brings up the loopback of a new network namespace (a guest's).
void BringUpLoopback();

}  // namespace homeward::job_init
