// CheckpointDir: a user's checkpoint directory, made with the user's rights.
#include "checkpoint_dir.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <memory>
#include <vector>

#include "error.h"

namespace homeward {

CheckpointDir CheckpointDir::Create(const std::string& path, const FsIdentity& who) {
  if (path.empty() || path[0] != '/') {
    Fail(ErrorKind::kInvalidInput, "checkpoint needs an absolute path for the images, not '{}'",
         path);
  }
  std::string trimmed = path;
  while (trimmed.size() > 1 && trimmed.back() == '/') trimmed.pop_back();
  size_t slash = trimmed.rfind('/');
  std::string parent = slash == 0 ? "/" : trimmed.substr(0, slash);
  std::string name = trimmed.substr(slash + 1);
  if (name.empty() || name == "." || name == "..") {
    Fail(ErrorKind::kInvalidInput, "checkpoint directory '{}' must name a new directory", path);
  }
  CheckpointDir dir;
  dir.path_ = path;
  dir.name_ = name;
  dir.who_ = who;
  {
    // Everything that resolves the user's path happens as the user.
    ScopedFsCredentials as_user(who);
    dir.parent_ = Fd::Adopt(
        HW_SYSCALL(::open(parent.c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC), "open {}", parent));
    HW_SYSCALL(::mkdirat(dir.parent_.get(), name.c_str(), 0700), "create {}", path);
    dir.dir_ = Fd::Adopt(
        ::openat(dir.parent_.get(), name.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
    if (!dir.dir_.valid()) {
      int err = errno;
      ::unlinkat(dir.parent_.get(), name.c_str(), AT_REMOVEDIR);
      throw SystemError(err, fmt::format("open {}", path));
    }
  }
  // Root's until handed over. Anything the user slipped in before this point is found
  // by the emptiness check; after it, the user may not write here at all.
  HW_SYSCALL(::fchown(dir.dir_.get(), 0, 0), "take {} for the checkpoint", path);
  HW_SYSCALL(::fchmod(dir.dir_.get(), 0700), "take {} for the checkpoint", path);
  if (!DirectoryEntries(dir.dir_.get()).empty()) {
    Fail(ErrorKind::kPermissionDenied,
         "{} changed while the checkpoint was being prepared (something was put in it)", path);
  }
  return dir;
}

CheckpointDir::~CheckpointDir() {
  if (!dir_.valid()) return;
  try {
    Remove();
  } catch (...) {
    // Best effort on the failure path: the first error is the one reported.
  }
}

std::string CheckpointDir::fd_path() const {
  return fmt::format("/proc/self/fd/{}", dir_.get());
}

void CheckpointDir::HandOver(const std::string& final_name) {
  for (const auto& name : DirectoryEntries(dir_.get())) {
    HW_SYSCALL(::fchownat(dir_.get(), name.c_str(), who_.uid, who_.gid, AT_SYMLINK_NOFOLLOW),
               "give {}/{} to uid {}", path_, name, who_.uid);
  }
  HW_SYSCALL(::fchown(dir_.get(), who_.uid, who_.gid), "give {} to uid {}", path_, who_.uid);
  if (!final_name.empty()) {
    ScopedFsCredentials as_user(who_);
    if (::renameat2(parent_.get(), name_.c_str(), parent_.get(), final_name.c_str(),
                    RENAME_NOREPLACE) != 0) {
      int err = errno;
      Remove();
      throw SystemError(err, fmt::format("name the checkpoint {}", final_name));
    }
  }
  dir_.Reset();
  parent_.Reset();
}

void CheckpointDir::Remove() {
  // Root made everything inside (the directory was root's), so root removes it by the
  // held descriptor; the directory itself is removed by name in its parent as the user,
  // who made it there: whatever that name is by now, nothing is removed with root's rights.
  for (const auto& name : DirectoryEntries(dir_.get())) {
    ::unlinkat(dir_.get(), name.c_str(), 0);
  }
  // The user's again, so that the user may remove it even from a sticky directory.
  (void)!::fchown(dir_.get(), who_.uid, who_.gid);
  dir_.Reset();
  ScopedFsCredentials as_user(who_);
  ::unlinkat(parent_.get(), name_.c_str(), AT_REMOVEDIR);
  parent_.Reset();
}

}  // namespace homeward
