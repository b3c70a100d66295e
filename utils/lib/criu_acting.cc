#include "criu_acting.h"

#include <dirent.h>
#include <fcntl.h>
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

std::optional<FsIdentity> CriuActingFor(const std::string& dir, pid_t pid) {
  struct stat ns;
  if (::stat(fmt::format("/proc/{}/ns/mnt", pid).c_str(), &ns) < 0) return std::nullopt;
  // The directory is checked before anything in it is read, and the entry is read only
  // if it is root's own file, never through a link.
  if (!Trusted(dir)) return std::nullopt;
  Fd entry = Fd::Adopt(::open(EntryPath(dir, ns.st_ino).c_str(),
                              O_RDONLY | O_NOFOLLOW | O_CLOEXEC));
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

void ClearCriuActing(const std::string& dir) { EmptyDirectory(dir); }

}  // namespace homeward
