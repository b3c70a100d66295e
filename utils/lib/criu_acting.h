// criu runs as root, and a node that squashes its peers' root ([files] trust_root = false,
// the default) has root's file calls served as nobody: criu could not reopen a moved job's
// own files through homefs. So while criu works on a job in a mount namespace of the
// job's own, the daemon writes down the job's user for that namespace, and homefs serves
// root's calls from that namespace with the user's rights: criu opens exactly what the
// job's user may open, and root anywhere else stays squashed.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <map>
#include <mutex>
#include <optional>
#include <string>

#include "fd.h"
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

// CriuActingFor for one directory, cached, for homefs, which asks on every call of root's.
// What is written down changes only by a daemon creating, renaming or removing an entry
// (or changing the directory's owner or mode): an inotify watch on the directory is told
// of each such change as the change is made, and any change pending when a call comes
// empties the cache before it is read. So an answer is never older than the last change
// made before the call, and a call costs one read of the watch instead of six system
// calls while nothing is written down (the caller's namespace is looked up only when
// something is: a stat more). Without a watch (no directory yet: a starting
// daemon makes it, ClearCriuActing; inotify refused), every call reads, as CriuActingFor.
// Thread-safe.
class CriuActingCache {
 public:
  explicit CriuActingCache(std::string dir) : dir_(std::move(dir)) {}
  std::optional<FsIdentity> For(pid_t pid);
  // How many times the directory or an entry was read from disk (tests).
  uint64_t disk_reads() const;
  // How many times a caller's mount namespace was looked up (tests).
  uint64_t namespace_lookups() const;

 private:
  // Whether the cache may be used: a watch is up and every change it saw has emptied it.
  bool Current();
  // Whether the directory holds no entry, read once after each change (with Current).
  bool KnownEmpty();

  std::string dir_;
  mutable std::mutex mutex_;
  // One inotify instance for the cache's life: closing one waits for the kernel to free
  // its marks (milliseconds), and while the directory does not exist each call would.
  Fd inotify_;
  bool watching_ = false;
  std::map<ino_t, std::optional<FsIdentity>> by_namespace_;
  std::optional<bool> empty_;  // unknown until read after the last change
  uint64_t disk_reads_ = 0;
  uint64_t namespace_lookups_ = 0;
};

// Forgets everything written down (a daemon starting: no criu of the last one runs), and
// makes the directory if it is not there yet: homefs's cache then watches it from the
// first call, where without it each of root's calls would read the disk.
void ClearCriuActing(const std::string& dir);

}  // namespace homeward
