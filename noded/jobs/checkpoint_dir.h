// A directory a user names for a job's checkpoint: made and opened with the user's own
// rights, then held by descriptor, so that nothing root does afterwards resolves the
// user's path again (no symlink, rename or planted file can redirect a root write).
#pragma once

#include <string>

#include "fd.h"
#include "fs_credentials.h"

namespace homeward {

class CheckpointDir {
 public:
  // Creates `path` (absolute; it must not exist) as `who`, with mode 0700, and opens it.
  // Then, until HandOver, the directory belongs to root with mode 0700, so the user
  // cannot add or swap anything in it while root writes there; it must still be empty
  // when taken. Errors name the path and the cause, as the user would see them.
  static CheckpointDir Create(const std::string& path, const FsIdentity& who);

  CheckpointDir(CheckpointDir&&) = default;
  CheckpointDir& operator=(CheckpointDir&&) = default;
  // Removes the directory and what is in it unless handed over.
  ~CheckpointDir();

  // The directory as a path that names exactly the held descriptor (/proc/self/fd/N).
  std::string fd_path() const;
  const std::string& path() const { return path_; }
  // Gives the directory and every file in it to the user: the checkpoint is theirs.
  // With `final_name`, the user then renames it to that name in the same parent (as the
  // user, replacing nothing): a checkpoint appears under its name only when complete.
  void HandOver(const std::string& final_name = {});
  // The held directory, for writing into it while it is root's.
  int fd() const { return dir_.get(); }

 private:
  CheckpointDir() = default;
  void Remove();
  std::string path_;
  std::string name_;
  FsIdentity who_;
  Fd parent_;
  Fd dir_;
};

}  // namespace homeward
