// ScopedFsCredentials: a user's file-system identity on one thread.
#include "fs_credentials.h"

#include <sys/syscall.h>
#include <unistd.h>

#include "error.h"

namespace homeward {

namespace {

// setfsuid/setfsgid report no error; asking with -1 (which changes nothing) reads the
// current value back.
uid_t CurrentFsUid() {
  return static_cast<uid_t>(::syscall(SYS_setfsuid, -1));
}
gid_t CurrentFsGid() {
  return static_cast<gid_t>(::syscall(SYS_setfsgid, -1));
}

}  // namespace

ScopedFsCredentials::ScopedFsCredentials(const FsIdentity& who)
    : saved_uid_(CurrentFsUid()), saved_gid_(CurrentFsGid()) {
  int count = HW_SYSCALL(static_cast<int>(::syscall(SYS_getgroups, 0, nullptr)), "getgroups");
  saved_groups_.resize(static_cast<size_t>(count));
  HW_SYSCALL(static_cast<int>(::syscall(SYS_getgroups, count, saved_groups_.data())), "getgroups");
  HW_SYSCALL(static_cast<int>(::syscall(SYS_setgroups, who.groups.size(), who.groups.data())),
             "take the groups of uid {}", who.uid);
  ::syscall(SYS_setfsgid, who.gid);
  ::syscall(SYS_setfsuid, who.uid);
  if (CurrentFsUid() != who.uid || CurrentFsGid() != who.gid) {
    Restore();
    Fail(ErrorKind::kPermissionDenied, "cannot act as uid {} gid {}", who.uid, who.gid);
  }
}

ScopedFsCredentials::~ScopedFsCredentials() {
  Restore();
}

void ScopedFsCredentials::Restore() {
  // Back to the thread's own ids first: they give back the capability to set groups.
  ::syscall(SYS_setfsuid, saved_uid_);
  ::syscall(SYS_setfsgid, saved_gid_);
  ::syscall(SYS_setgroups, saved_groups_.size(), saved_groups_.data());
}

// setfsuid and setfsgid return the ids they replace.
ScopedDaemonFsIds::ScopedDaemonFsIds()
    : saved_uid_(static_cast<uid_t>(::syscall(SYS_setfsuid, ::geteuid()))),
      saved_gid_(static_cast<gid_t>(::syscall(SYS_setfsgid, ::getegid()))) {}

ScopedDaemonFsIds::~ScopedDaemonFsIds() {
  ::syscall(SYS_setfsgid, saved_gid_);
  ::syscall(SYS_setfsuid, saved_uid_);
}

}  // namespace homeward
