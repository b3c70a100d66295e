#include "criu_acting.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/inotify.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>

#include <fstream>
#include <memory>
#include <sstream>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "error.h"
#include "fd.h"

namespace homeward {

namespace {

std::string EntryPath(const std::string& dir, ino_t ns) {
  return fmt::format("{}/mnt-{}", dir, ns);
}

// A directory of root's that only root may write (or nothing).
bool Trusted(const std::string& dir) {
  struct stat st;
  return ::lstat(dir.c_str(), &st) == 0 && S_ISDIR(st.st_mode) && st.st_uid == 0 &&
         (st.st_mode & 022) == 0;
}

}  // namespace

std::string CriuActingDir(const std::string& state_dir) { return state_dir + "/criu-acting"; }

CriuActingAs::CriuActingAs(const ActingUser& user, int mount_ns_fd) {
  struct stat ns;
  HW_SYSCALL(::fstat(mount_ns_fd, &ns), "stat the job's mount namespace");
  if (::mkdir(user.dir.c_str(), 0700) < 0 && errno != EEXIST) {
    throw SystemError(errno, fmt::format("create {}", user.dir));
  }
  if (!Trusted(user.dir)) {
    Fail(ErrorKind::kPermissionDenied, "{} must be a directory of root's that only root writes",
         user.dir);
  }
  path_ = EntryPath(user.dir, ns.st_ino);
  std::string line = fmt::format("{} {}", user.who.uid, user.who.gid);
  for (gid_t group : user.who.groups) line += fmt::format(" {}", group);
  line += "\n";
  // Written whole under another name, then renamed: a reader sees all of it or nothing.
  std::string partial = path_ + ".new";
  {
    Fd out = Fd::Open(partial, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    std::string what = "write " + partial;
    WriteAll(out.get(), line.data(), line.size(), what.c_str());
  }
  HW_SYSCALL(::rename(partial.c_str(), path_.c_str()), "rename {}", partial);
}

CriuActingAs::~CriuActingAs() {
  if (::unlink(path_.c_str()) < 0 && errno != ENOENT) {
    spdlog::warn("cannot remove {}: {}", path_, std::strerror(errno));
  }
}

namespace {

// The user written down for mount namespace `ns`, if any.
std::optional<FsIdentity> ReadEntry(const std::string& dir, ino_t ns) {
  // The directory is checked before anything in it is read, and the entry is read only
  // if it is root's own file, never through a link.
  if (!Trusted(dir)) return std::nullopt;
  Fd entry = Fd::Adopt(::open(EntryPath(dir, ns).c_str(), O_RDONLY | O_NOFOLLOW | O_CLOEXEC));
  struct stat st;
  if (!entry.valid() || ::fstat(entry.get(), &st) < 0 || !S_ISREG(st.st_mode) ||
      st.st_uid != 0) {
    return std::nullopt;
  }
  char text[4096];
  ssize_t n = ::read(entry.get(), text, sizeof text - 1);
  if (n <= 0) return std::nullopt;
  FsIdentity who;
  std::istringstream fields(std::string(text, static_cast<size_t>(n)));
  if (!(fields >> who.uid >> who.gid)) return std::nullopt;
  gid_t group;
  while (fields >> group) who.groups.push_back(group);
  return who;
}

std::optional<ino_t> MountNamespaceOf(pid_t pid) {
  struct stat ns;
  if (::stat(fmt::format("/proc/{}/ns/mnt", pid).c_str(), &ns) < 0) return std::nullopt;
  return ns.st_ino;
}

// Whether `dir` holds no entry (false when it cannot be read: then entries are looked up).
bool DirectoryEmpty(const std::string& dir) {
  std::unique_ptr<DIR, int (*)(DIR*)> listing(::opendir(dir.c_str()), ::closedir);
  if (!listing) return false;
  while (const dirent* entry = ::readdir(listing.get())) {
    if (std::strcmp(entry->d_name, ".") != 0 && std::strcmp(entry->d_name, "..") != 0) {
      return false;
    }
  }
  return true;
}

// At most this many namespaces are remembered; past it the cache starts again.
constexpr size_t kCachedNamespaces = 1024;

}  // namespace

std::optional<FsIdentity> CriuActingFor(const std::string& dir, pid_t pid) {
  std::optional<ino_t> ns = MountNamespaceOf(pid);
  if (!ns) return std::nullopt;
  return ReadEntry(dir, *ns);
}

bool CriuActingCache::Current() {
  if (!inotify_.valid()) {
    inotify_ = Fd::Adopt(::inotify_init1(IN_NONBLOCK | IN_CLOEXEC));
    if (!inotify_.valid()) return false;
  }
  if (!watching_) {
    by_namespace_.clear();
    empty_.reset();
    // Set up before anything is read: a change from here on is seen. Without the
    // directory (no criu has acted yet) the cache is not used.
    if (::inotify_add_watch(inotify_.get(), dir_.c_str(),
                            IN_CREATE | IN_DELETE | IN_MOVED_FROM | IN_MOVED_TO | IN_MODIFY |
                                IN_CLOSE_WRITE | IN_ATTRIB | IN_DELETE_SELF | IN_MOVE_SELF |
                                IN_ONLYDIR | IN_DONT_FOLLOW) < 0) {
      return false;
    }
    watching_ = true;
    return true;
  }
  alignas(inotify_event) char events[4096];
  bool changed = false, lost = false;
  for (;;) {
    ssize_t n = ::read(inotify_.get(), events, sizeof events);
    if (n <= 0) break;  // EAGAIN: nothing more pending
    changed = true;
    for (ssize_t at = 0; at < n;) {
      const auto* event = reinterpret_cast<const inotify_event*>(events + at);
      // The directory itself went (or the queue overflowed): watch anew.
      if (event->mask & (IN_IGNORED | IN_DELETE_SELF | IN_MOVE_SELF | IN_Q_OVERFLOW)) lost = true;
      at += static_cast<ssize_t>(sizeof(inotify_event) + event->len);
    }
  }
  if (changed) empty_.reset();
  if (changed || by_namespace_.size() >= kCachedNamespaces) by_namespace_.clear();
  if (lost) {
    watching_ = false;  // watched anew (the same instance)
    return Current();
  }
  return true;
}

std::optional<FsIdentity> CriuActingCache::For(pid_t pid) {
  std::unique_lock lock(mutex_);
  bool current = Current();
  // Nothing written down (no criu at work: nearly always): whoever the caller is, there is
  // no entry for it, and its namespace need not be looked up.
  if (current && KnownEmpty()) return std::nullopt;
  // Looked up without the lock: other callers need not wait on /proc. What the watch said
  // stays good: an entry read below is read after it, and a change after it is seen by
  // the next call's Current, which empties the cache.
  lock.unlock();
  std::optional<ino_t> ns = MountNamespaceOf(pid);
  lock.lock();
  ++namespace_lookups_;
  if (!ns) return std::nullopt;
  if (current) {
    if (auto it = by_namespace_.find(*ns); it != by_namespace_.end()) return it->second;
  }
  ++disk_reads_;
  std::optional<FsIdentity> who = ReadEntry(dir_, *ns);
  if (current) by_namespace_[*ns] = who;
  return who;
}

bool CriuActingCache::KnownEmpty() {
  if (!empty_) {
    ++disk_reads_;
    empty_ = DirectoryEmpty(dir_);
  }
  return *empty_;
}

uint64_t CriuActingCache::namespace_lookups() const {
  std::lock_guard lock(mutex_);
  return namespace_lookups_;
}

uint64_t CriuActingCache::disk_reads() const {
  std::lock_guard lock(mutex_);
  return disk_reads_;
}

void ClearCriuActing(const std::string& dir) {
  if (::mkdir(dir.c_str(), 0700) < 0 && errno != EEXIST) {
    spdlog::warn("cannot create {}: {}", dir, std::strerror(errno));
  }
  EmptyDirectory(dir);
}

}  // namespace homeward
