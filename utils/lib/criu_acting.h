// criu runs as root, and a node that squashes its peers' root ([files] trust_root = false,
// the default) has root's file calls served as nobody: criu could not reopen a moved job's
// own files through homefs. So while criu works on a job in a mount namespace of the
// job's own, the daemon writes down the job's user for that namespace, and homefs serves
// root's calls from that namespace with the user's rights: criu opens exactly what the
// job's user may open, and root anywhere else stays squashed.
#pragma once

#include <sys/types.h>

#include <optional>
#include <string>

#include "fs_credentials.h"

namespace homeward {

// Where a daemon writes them down: root's own directory under its state directory.
std::string CriuActingDir(const std::string& state_dir);

struct ActingUser {
  std::string dir;  // CriuActingDir(...)
  FsIdentity who;
};

// Writes down `user.who` for the mount namespace open as `mount_ns_fd` until destroyed.
class CriuActingAs {
 public:
  CriuActingAs(const ActingUser& user, int mount_ns_fd);
  CriuActingAs(const CriuActingAs&) = delete;
  CriuActingAs& operator=(const CriuActingAs&) = delete;
  ~CriuActingAs();

 private:
  std::string path_;
};

// The user written down for the mount namespace process `pid` is in, if any. Only a
// directory of root's that nobody else may write is believed.
std::optional<FsIdentity> CriuActingFor(const std::string& dir, pid_t pid);

// Forgets everything written down (a daemon starting: no criu of the last one runs).
void ClearCriuActing(const std::string& dir);

}  // namespace homeward
