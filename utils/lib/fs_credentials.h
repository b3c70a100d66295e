// Acting on files with a user's rights from one thread of a root process. setfsuid,
// setfsgid and the raw setgroups system call change only the calling thread (glibc's
// setgroups() would change every thread), and a non-zero fsuid drops the thread's fs
// capabilities, so the kernel checks every path component as for the user's own process.
#pragma once

#include <sys/types.h>

#include <vector>

namespace homeward {

struct FsIdentity {
  uid_t uid = 0;
  gid_t gid = 0;
  std::vector<gid_t> groups;
};

// Takes `who`'s file-system identity on this thread until destroyed, then gives back the
// thread's own. Throws kPermissionDenied-kind errors when the kernel refuses an id.
class ScopedFsCredentials {
 public:
  explicit ScopedFsCredentials(const FsIdentity& who);
  ScopedFsCredentials(const ScopedFsCredentials&) = delete;
  ScopedFsCredentials& operator=(const ScopedFsCredentials&) = delete;
  ~ScopedFsCredentials();

 private:
  void Restore();
  uid_t saved_uid_;
  gid_t saved_gid_;
  std::vector<gid_t> saved_groups_;
};

// The process's own fs ids (root's, with its fs capabilities) on this thread until
// destroyed, then the thread's ids again, whatever it acts as meanwhile: for what a
// daemon writes in its own state directory from a thread that serves a user.
class ScopedDaemonFsIds {
 public:
  ScopedDaemonFsIds();
  ScopedDaemonFsIds(const ScopedDaemonFsIds&) = delete;
  ScopedDaemonFsIds& operator=(const ScopedDaemonFsIds&) = delete;
  ~ScopedDaemonFsIds();

 private:
  uid_t saved_uid_;
  gid_t saved_gid_;
};

}  // namespace homeward
