// The file service: one session per connection, requests on a pool of worker threads
// that each act with the caller's fs credentials.
#include "file_server.h"

#include <dirent.h>
#include <fcntl.h>
#include <linux/openat2.h>
#include <poll.h>
#include <sched.h>
#include <sys/inotify.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/syscall.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <cstring>

#include <capnp/message.h>
#include <kj/exception.h>
#include <spdlog/spdlog.h>

#include "error.h"
#include "frame_stream.h"

namespace homeward {

namespace {

// FUSE_SET_ATTR_* bits, as the client forwards them.
constexpr uint32_t kSetMode = 1 << 0, kSetUid = 1 << 1, kSetGid = 1 << 2, kSetSize = 1 << 3,
                   kSetAtime = 1 << 4, kSetMtime = 1 << 5, kSetAtimeNow = 1 << 7,
                   kSetMtimeNow = 1 << 8;

// A failed operation: carries the errno to answer with.
struct OpError {
  int err;
};

template <typename T>
T Check(T result) {
  if (result < 0) throw OpError{errno};
  return result;
}

std::string ProcPath(int fd) {
  return "/proc/self/fd/" + std::to_string(fd);
}

// Opens `name` beneath `dir_fd`; "..", absolute paths and symlinks that lead outside
// fail with EXDEV, magic links with ELOOP.
int OpenBeneath(int dir_fd, const std::string& name, uint64_t flags, uint64_t mode) {
  open_how how{};
  how.flags = flags | O_CLOEXEC;
  how.mode = (flags & (O_CREAT | O_TMPFILE)) ? (mode & 07777) : 0;
  how.resolve = RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS;
  for (;;) {
    long fd = ::syscall(SYS_openat2, dir_fd, name.c_str(), &how, sizeof how);
    if (fd >= 0) return static_cast<int>(fd);
    if (errno != EINTR && errno != EAGAIN) throw OpError{errno};
  }
}

// A name the client may use in a directory: one component, not "." or "..". The kernel
// never sends anything else; a client that does is refused before any system call.
void CheckName(const std::string& name) {
  if (name.size() > 255) throw OpError{ENAMETOOLONG};
  if (name.empty() || name == "." || name == ".." || name.find('/') != std::string::npos) {
    throw OpError{EINVAL};
  }
}

int64_t Ns(const timespec& t) {
  return int64_t{t.tv_sec} * 1'000'000'000 + t.tv_nsec;
}
timespec Ts(int64_t ns) {
  return timespec{static_cast<time_t>(ns / 1'000'000'000), static_cast<long>(ns % 1'000'000'000)};
}

void FillAttr(const struct stat& st, schema::Attr::Builder attr) {
  attr.setIno(st.st_ino);
  attr.setMode(st.st_mode);
  attr.setNlink(st.st_nlink);
  attr.setUid(st.st_uid);
  attr.setGid(st.st_gid);
  attr.setRdev(st.st_rdev);
  attr.setSize(st.st_size);
  attr.setBlocks(st.st_blocks);
  attr.setBlksize(static_cast<int32_t>(st.st_blksize));
  attr.setAtimeNs(Ns(st.st_atim));
  attr.setMtimeNs(Ns(st.st_mtim));
  attr.setCtimeNs(Ns(st.st_ctim));
  attr.setDev(st.st_dev);
}

struct stat StatFd(int fd) {
  struct stat st;
  Check(::fstatat(fd, "", &st, AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW));
  return st;
}

// The credentials this thread acts with. setfsuid/setfsgid and the raw setgroups system
// call change only the calling thread (glibc's setgroups() would change every thread of
// the daemon), and a non-zero fsuid drops the fs capabilities, so the kernel checks each
// operation exactly as it would for the caller's own process.
struct ThreadCredentials {
  uint32_t uid = 0, gid = 0;
  std::vector<gid_t> groups;
};
thread_local ThreadCredentials current_credentials;

// A peer's root is squashed to nobody unless this node trusts it: root on one machine
// must not be root over every other machine's files.
void Become(schema::Credentials::Reader cred, FileSession::Root peer_root) {
  auto& cur = current_credentials;
  if (cred.getGroups().size() > 65536) throw OpError{EINVAL};
  uint32_t uid = cred.getUid(), gid = cred.getGid();
  std::vector<gid_t> groups;
  if (uid == 0 && peer_root == FileSession::Root::kSquash) {
    uid = gid = FileSession::kSquashedId;
  } else {
    groups.reserve(cred.getGroups().size());
    for (uint32_t g : cred.getGroups()) groups.push_back(g);
  }
  if (groups != cur.groups) {
    if (::syscall(SYS_setgroups, groups.size(), groups.data()) < 0) throw OpError{errno};
    cur.groups = std::move(groups);
  }
  if (gid != cur.gid) {
    ::syscall(SYS_setfsgid, gid);
    cur.gid = gid;
  }
  if (uid != cur.uid) {
    ::syscall(SYS_setfsuid, uid);
    cur.uid = uid;
  }
  // setfsuid reports no error; reading it back (an invalid id changes nothing) does.
  if (static_cast<uint32_t>(::syscall(SYS_setfsuid, -1)) != uid ||
      static_cast<uint32_t>(::syscall(SYS_setfsgid, -1)) != gid) {
    throw OpError{EPERM};
  }
}

}  // namespace

struct FileSession::Node {
  Fd fd;  // O_PATH
  uint64_t nlookup = 0;
  std::pair<uint64_t, uint64_t> key;
  int watch = -1;
};

struct FileSession::OpenFile {
  Fd fd;
  uint64_t node = 0;
  DIR* dir = nullptr;
  std::mutex dir_mutex;  // a DIR stream has one position
  ~OpenFile() {
    if (dir) ::closedir(dir);  // closes fd's descriptor too (released below)
  }
};

// ---------------------------------------------------------------------------------------

WorkerPool::WorkerPool(int threads) {
  for (int i = 0; i < threads; ++i) threads_.emplace_back([this] { Run(); });
}

WorkerPool::~WorkerPool() {
  {
    std::lock_guard lock(mutex_);
    stopping_ = true;
  }
  ready_.notify_all();
  for (auto& t : threads_) t.join();
}

void WorkerPool::Post(std::function<void()> job) {
  {
    std::lock_guard lock(mutex_);
    jobs_.push_back(std::move(job));
  }
  ready_.notify_one();
}

void WorkerPool::Run() {
  // Its own fs context, so umask 0 here leaves the daemon's umask alone: the client's
  // kernel has already applied the caller's umask to every mode it sends.
  if (::unshare(CLONE_FS) == 0) ::umask(0);
  for (;;) {
    std::function<void()> job;
    {
      std::unique_lock lock(mutex_);
      ready_.wait(lock, [&] { return stopping_ || !jobs_.empty(); });
      if (jobs_.empty()) return;
      job = std::move(jobs_.front());
      jobs_.pop_front();
    }
    job();
  }
}

// ---------------------------------------------------------------------------------------

FileSession::FileSession(int root, Root peer_root) : root_(root), peer_root_(peer_root) {
  auto node = std::make_shared<Node>();
  node->fd = Fd::Adopt(HW_SYSCALL(::fcntl(root, F_DUPFD_CLOEXEC, 0), "dup export root"));
  node->nlookup = 1;
  nodes_[1] = node;
}

std::shared_ptr<FileSession::Node> FileSession::GetNode(uint64_t id) {
  std::lock_guard lock(mutex_);
  auto it = nodes_.find(id);
  if (it == nodes_.end()) throw OpError{ESTALE};
  return it->second;
}

std::shared_ptr<FileSession::OpenFile> FileSession::GetHandle(uint64_t fh) {
  std::lock_guard lock(mutex_);
  auto it = handles_.find(fh);
  if (it == handles_.end()) throw OpError{EBADF};
  return it->second;
}

uint64_t FileSession::AddHandle(std::shared_ptr<OpenFile> handle) {
  std::lock_guard lock(mutex_);
  uint64_t fh = next_handle_++;
  handles_[fh] = std::move(handle);
  return fh;
}

void FileSession::Remember(Fd fd, schema::Entry::Builder entry) {
  struct stat st = StatFd(fd.get());
  FillAttr(st, entry.initAttr());
  std::pair<uint64_t, uint64_t> key{st.st_dev, st.st_ino};
  std::lock_guard lock(mutex_);
  auto it = by_inode_.find(key);
  if (it != by_inode_.end()) {
    ++nodes_[it->second]->nlookup;
    entry.setNode(it->second);
    return;
  }
  auto node = std::make_shared<Node>();
  node->fd = std::move(fd);
  node->nlookup = 1;
  node->key = key;
  uint64_t id = next_node_++;
  if (inotify_.valid()) {
    // Watching needs read access, which the caller may lack: the daemon watches as
    // itself for a moment (fsuid 0 also restores its fs capabilities), then goes back.
    auto& cur = current_credentials;
    ::syscall(SYS_setfsuid, 0);
    ::syscall(SYS_setfsgid, 0);
    node->watch =
        ::inotify_add_watch(inotify_.get(), ProcPath(node->fd.get()).c_str(),
                            IN_MODIFY | IN_ATTRIB | IN_CLOSE_WRITE | IN_CREATE | IN_DELETE |
                                IN_MOVED_FROM | IN_MOVED_TO | IN_DELETE_SELF | IN_EXCL_UNLINK);
    ::syscall(SYS_setfsgid, cur.gid);
    ::syscall(SYS_setfsuid, cur.uid);
    if (node->watch >= 0) watches_[node->watch] = id;
  }
  nodes_[id] = std::move(node);
  by_inode_[key] = id;
  entry.setNode(id);
}

void FileSession::LookupInto(int dir_fd, const std::string& name, schema::Entry::Builder entry) {
  CheckName(name);
  Remember(Fd::Adopt(OpenBeneath(dir_fd, name, O_PATH | O_NOFOLLOW, 0)), entry);
}

void FileSession::Handle(schema::FileRequest::Reader request,
                         schema::FileResponse::Builder response) {
  response.setId(request.getId());
  try {
    Become(request.getCred(), peer_root_);
    Dispatch(request, response);
  } catch (const OpError& e) {
    response.setError(e.err);
  } catch (const Error& e) {
    response.setError(e.sys_errno() ? e.sys_errno() : EIO);
  } catch (const std::exception& e) {
    spdlog::warn("file service: request {} failed: {}", static_cast<int>(request.getOp()),
                 e.what());
    response.setError(EIO);
  }
}

void FileSession::Dispatch(schema::FileRequest::Reader rq, schema::FileResponse::Builder rs) {
  using Op = schema::FileOp;
  std::string name = rq.getName();
  if (inotify_.valid()) {
    switch (rq.getOp()) {
      case Op::MKNOD:
      case Op::MKDIR:
      case Op::UNLINK:
      case Op::RMDIR:
      case Op::SYMLINK:
      case Op::CREATE:
        MarkOwn(rq.getNode());
        MarkOwn(0, rq.getNode(), name);
        break;
      case Op::RENAME:
        MarkOwn(0, rq.getNode(), name);
        MarkOwn(0, rq.getNode2(), rq.getName2());
        break;
      case Op::LINK:
        MarkOwn(rq.getNode());
        MarkOwn(0, rq.getNode2(), rq.getName2());
        break;
      case Op::SETATTR:
      case Op::SETXATTR:
      case Op::REMOVEXATTR:
        MarkOwn(rq.getNode());
        break;
      case Op::WRITE:
      case Op::FALLOCATE:
        MarkOwn(GetHandle(rq.getFh())->node);
        break;
      default:
        break;
    }
  }
  switch (rq.getOp()) {
    case Op::HELLO: {
      if (rq.getVersion() != schema::FILES_VERSION) {
        rs.setMessage(fmt::format("file service version {} is not {}", rq.getVersion(),
                                  schema::FILES_VERSION));
        throw OpError{EPROTO};
      }
      FillAttr(StatFd(root_), rs.initEntry().initAttr());
      rs.getEntry().setNode(1);
      return;
    }
    case Op::LOOKUP:
      return LookupInto(GetNode(rq.getNode())->fd.get(), name, rs.initEntry());
    case Op::FORGET: {
      std::lock_guard lock(mutex_);
      auto it = nodes_.find(rq.getNode());
      if (it == nodes_.end() || rq.getNode() == 1) return;
      if (it->second->nlookup <= rq.getSize()) {
        by_inode_.erase(it->second->key);
        if (it->second->watch >= 0) {
          // Another node of the same inode cannot exist (by_inode_), so the watch is ours.
          watches_.erase(it->second->watch);
          ::inotify_rm_watch(inotify_.get(), it->second->watch);
        }
        nodes_.erase(it);
      } else {
        it->second->nlookup -= rq.getSize();
      }
      return;
    }
    case Op::GETATTR: {
      struct stat st;
      if (rq.getHasFh()) {
        Check(::fstat(GetHandle(rq.getFh())->fd.get(), &st));
      } else {
        st = StatFd(GetNode(rq.getNode())->fd.get());
      }
      FillAttr(st, rs.initEntry().initAttr());
      return;
    }
    case Op::SETATTR: {
      auto node = GetNode(rq.getNode());
      std::shared_ptr<OpenFile> handle;
      if (rq.getHasFh()) handle = GetHandle(rq.getFh());
      int fd = node->fd.get();
      std::string path = ProcPath(fd);
      uint32_t valid = rq.getValid();
      if (valid & kSetMode) Check(::fchmodat(AT_FDCWD, path.c_str(), rq.getMode() & 07777, 0));
      if (valid & (kSetUid | kSetGid)) {
        uid_t uid = (valid & kSetUid) ? rq.getUid() : static_cast<uid_t>(-1);
        gid_t gid = (valid & kSetGid) ? rq.getGid() : static_cast<gid_t>(-1);
        Check(::fchownat(fd, "", uid, gid, AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW));
      }
      if (valid & kSetSize) {
        auto size = static_cast<off_t>(rq.getSize());
        if (handle) {
          Check(::ftruncate(handle->fd.get(), size));
        } else {
          Check(::truncate(path.c_str(), size));
        }
      }
      if (valid & (kSetAtime | kSetMtime)) {
        timespec times[2] = {{0, UTIME_OMIT}, {0, UTIME_OMIT}};
        if (valid & kSetAtime)
          times[0] = (valid & kSetAtimeNow) ? timespec{0, UTIME_NOW} : Ts(rq.getAtimeNs());
        if (valid & kSetMtime)
          times[1] = (valid & kSetMtimeNow) ? timespec{0, UTIME_NOW} : Ts(rq.getMtimeNs());
        if (handle) {
          Check(::futimens(handle->fd.get(), times));
        } else if (S_ISLNK(StatFd(fd).st_mode)) {
          throw OpError{EOPNOTSUPP};  // a symlink's own times need its parent; rare
        } else {
          Check(::utimensat(AT_FDCWD, path.c_str(), times, 0));
        }
      }
      FillAttr(StatFd(fd), rs.initEntry().initAttr());
      return;
    }
    case Op::READLINK: {
      char buffer[PATH_MAX];
      ssize_t n = Check(::readlinkat(GetNode(rq.getNode())->fd.get(), "", buffer, sizeof buffer));
      rs.setData(kj::arrayPtr(reinterpret_cast<capnp::byte*>(buffer), static_cast<size_t>(n)));
      return;
    }
    case Op::MKNOD: {
      CheckName(name);
      int fd = GetNode(rq.getNode())->fd.get();
      mode_t type = rq.getMode() & S_IFMT;
      // Devices need CAP_MKNOD, which a non-zero fsuid does not drop: check it here.
      if ((type == S_IFCHR || type == S_IFBLK) && current_credentials.uid != 0) {
        throw OpError{EPERM};
      }
      Check(::mknodat(fd, name.c_str(), rq.getMode(), rq.getRdev()));
      return LookupInto(fd, name, rs.initEntry());
    }
    case Op::MKDIR: {
      CheckName(name);
      int fd = GetNode(rq.getNode())->fd.get();
      Check(::mkdirat(fd, name.c_str(), rq.getMode()));
      return LookupInto(fd, name, rs.initEntry());
    }
    case Op::UNLINK:
    case Op::RMDIR:
      CheckName(name);
      Check(::unlinkat(GetNode(rq.getNode())->fd.get(), name.c_str(),
                       rq.getOp() == Op::RMDIR ? AT_REMOVEDIR : 0));
      return;
    case Op::SYMLINK: {
      CheckName(name);
      int fd = GetNode(rq.getNode())->fd.get();
      std::string target(reinterpret_cast<const char*>(rq.getData().begin()), rq.getData().size());
      if (target.find('\0') != std::string::npos) throw OpError{EINVAL};
      Check(::symlinkat(target.c_str(), fd, name.c_str()));
      return LookupInto(fd, name, rs.initEntry());
    }
    case Op::RENAME: {
      CheckName(name);
      std::string name2 = rq.getName2();
      CheckName(name2);
      Check(::renameat2(GetNode(rq.getNode())->fd.get(), name.c_str(),
                        GetNode(rq.getNode2())->fd.get(), name2.c_str(), rq.getFlags()));
      return;
    }
    case Op::LINK: {
      std::string name2 = rq.getName2();
      CheckName(name2);
      int fd = GetNode(rq.getNode())->fd.get();
      int dir = GetNode(rq.getNode2())->fd.get();
      // Following our own descriptor's /proc link names exactly the looked-up object;
      // AT_EMPTY_PATH would need CAP_DAC_READ_SEARCH, which the caller may not have.
      Check(::linkat(AT_FDCWD, ProcPath(fd).c_str(), dir, name2.c_str(), AT_SYMLINK_FOLLOW));
      return LookupInto(dir, name2, rs.initEntry());
    }
    case Op::OPEN:
    case Op::OPENDIR: {
      int fd = GetNode(rq.getNode())->fd.get();
      int flags = static_cast<int>(rq.getFlags()) & ~(O_CREAT | O_EXCL | O_NOCTTY);
      if (rq.getOp() == Op::OPENDIR) flags = O_RDONLY | O_DIRECTORY;
      auto handle = std::make_shared<OpenFile>();
      handle->node = rq.getNode();
      handle->fd = Fd::Adopt(Check(::open(ProcPath(fd).c_str(), flags | O_CLOEXEC)));
      if (rq.getOp() == Op::OPENDIR) {
        int dup = Check(::fcntl(handle->fd.get(), F_DUPFD_CLOEXEC, 0));
        handle->dir = ::fdopendir(dup);
        if (!handle->dir) {
          ::close(dup);
          throw OpError{errno};
        }
      }
      rs.setFh(AddHandle(std::move(handle)));
      return;
    }
    case Op::CREATE: {
      CheckName(name);
      int dir = GetNode(rq.getNode())->fd.get();
      int flags = static_cast<int>(rq.getFlags()) | O_CREAT | O_NOFOLLOW;
      auto handle = std::make_shared<OpenFile>();
      handle->fd = Fd::Adopt(OpenBeneath(dir, name, flags & ~O_NOCTTY, rq.getMode()));
      Remember(Fd::Adopt(Check(::open(ProcPath(handle->fd.get()).c_str(), O_PATH | O_CLOEXEC))),
               rs.initEntry());
      handle->node = rs.getEntry().getNode();
      if (inotify_.valid()) MarkOwn(handle->node);
      rs.setFh(AddHandle(std::move(handle)));
      return;
    }
    case Op::READ: {
      auto handle = GetHandle(rq.getFh());
      size_t size = std::min<uint64_t>(rq.getSize(), 1 << 20);
      auto orphan = capnp::Orphanage::getForMessageContaining(rs).newOrphan<capnp::Data>(size);
      ssize_t n = Check(::pread(handle->fd.get(), orphan.get().begin(), size,
                                static_cast<off_t>(rq.getOffset())));
      orphan.truncate(static_cast<size_t>(n));
      rs.adoptData(kj::mv(orphan));
      return;
    }
    case Op::WRITE: {
      auto handle = GetHandle(rq.getFh());
      auto data = rq.getData();
      ssize_t n = Check(::pwrite(handle->fd.get(), data.begin(), data.size(),
                                 static_cast<off_t>(rq.getOffset())));
      rs.setSize(static_cast<uint64_t>(n));
      return;
    }
    case Op::FLUSH:
      GetHandle(rq.getFh());
      return;
    case Op::RELEASE:
    case Op::RELEASEDIR: {
      std::lock_guard lock(mutex_);
      handles_.erase(rq.getFh());
      return;
    }
    case Op::FSYNC: {
      int fd = GetHandle(rq.getFh())->fd.get();
      Check((rq.getFlags() & 1) ? ::fdatasync(fd) : ::fsync(fd));
      return;
    }
    case Op::READDIR:
      return ReadDir(rq, rs);
    case Op::STATFS: {
      struct statvfs st;
      Check(::fstatvfs(GetNode(rq.getNode())->fd.get(), &st));
      auto out = rs.initStatfs();
      out.setBsize(st.f_bsize);
      out.setFrsize(st.f_frsize);
      out.setBlocks(st.f_blocks);
      out.setBfree(st.f_bfree);
      out.setBavail(st.f_bavail);
      out.setFiles(st.f_files);
      out.setFfree(st.f_ffree);
      out.setFavail(st.f_favail);
      out.setFsid(st.f_fsid);
      out.setNamemax(st.f_namemax);
      return;
    }
    case Op::ACCESS:
      // AT_EACCESS checks with the fs credentials set above, not the daemon's real ids.
      Check(::faccessat(AT_FDCWD, ProcPath(GetNode(rq.getNode())->fd.get()).c_str(),
                        static_cast<int>(rq.getMode()), AT_EACCESS));
      return;
    case Op::SETXATTR:
    case Op::GETXATTR:
    case Op::LISTXATTR:
    case Op::REMOVEXATTR: {
      std::string path = ProcPath(GetNode(rq.getNode())->fd.get());
      // trusted.* needs CAP_SYS_ADMIN, which a non-zero fsuid does not drop.
      if (name.rfind("trusted.", 0) == 0 && current_credentials.uid != 0) throw OpError{EPERM};
      if (rq.getOp() == Op::SETXATTR) {
        Check(::setxattr(path.c_str(), name.c_str(), rq.getData().begin(), rq.getData().size(),
                         static_cast<int>(rq.getFlags())));
      } else if (rq.getOp() == Op::REMOVEXATTR) {
        Check(::removexattr(path.c_str(), name.c_str()));
      } else {
        size_t size = std::min<uint64_t>(rq.getSize(), 64 << 10);
        std::vector<char> buffer(size);
        ssize_t n = rq.getOp() == Op::GETXATTR
                        ? Check(::getxattr(path.c_str(), name.c_str(), buffer.data(), size))
                        : Check(::listxattr(path.c_str(), buffer.data(), size));
        if (size == 0) {
          rs.setSize(static_cast<uint64_t>(n));
        } else {
          rs.setData(
              kj::arrayPtr(reinterpret_cast<capnp::byte*>(buffer.data()), static_cast<size_t>(n)));
        }
      }
      return;
    }
    case Op::FALLOCATE:
      Check(::fallocate(GetHandle(rq.getFh())->fd.get(), static_cast<int>(rq.getFlags()),
                        static_cast<off_t>(rq.getOffset()), static_cast<off_t>(rq.getSize())));
      return;
  }
  throw OpError{ENOSYS};
}

void FileSession::ReadDir(schema::FileRequest::Reader rq, schema::FileResponse::Builder rs) {
  auto handle = GetHandle(rq.getFh());
  if (!handle->dir) throw OpError{ENOTDIR};
  bool plus = rq.getFlags() == 0;  // flags 1: names only, no lookups
  size_t max = std::clamp<uint64_t>(rq.getSize(), 1, 1024);
  struct Item {
    std::string name;
    uint64_t ino, offset;
    unsigned char type;
  };
  std::vector<Item> items;
  {
    std::lock_guard lock(handle->dir_mutex);
    ::seekdir(handle->dir, static_cast<long>(rq.getOffset()));
    while (items.size() < max) {
      errno = 0;
      dirent* d = ::readdir(handle->dir);
      if (!d) {
        if (errno) throw OpError{errno};
        break;
      }
      items.push_back({d->d_name, d->d_ino, static_cast<uint64_t>(d->d_off), d->d_type});
    }
  }
  auto list = rs.initEntries(static_cast<unsigned>(items.size()));
  int dir_fd = ::dirfd(handle->dir);
  for (size_t i = 0; i < items.size(); ++i) {
    auto entry = list[static_cast<unsigned>(i)];
    entry.setName(items[i].name);
    entry.setOffset(items[i].offset);
    bool dots = items[i].name == "." || items[i].name == "..";
    if (plus && !dots) {
      try {
        LookupInto(dir_fd, items[i].name, entry);
        continue;
      } catch (const OpError&) {
        // Gone since readdir saw it: list the name without attributes.
      }
    }
    auto attr = entry.initAttr();
    attr.setIno(items[i].ino);
    attr.setMode(static_cast<uint32_t>(items[i].type) << 12);
  }
}

namespace {
constexpr auto kOwnChangeWindow = std::chrono::seconds(1);
}

FileSession::~FileSession() {
  stop_watching_ = true;
  if (watcher_.joinable()) watcher_.join();
}

void FileSession::MarkOwn(uint64_t node, uint64_t parent, const std::string& name) {
  auto now = std::chrono::steady_clock::now();
  std::lock_guard lock(mutex_);
  if (own_.size() > 100000) own_.clear();
  own_[{node ? node : parent, node ? std::string() : name}] = now;
}

void FileSession::Watch(Notify notify) {
  int fd = ::inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
  if (fd < 0) {
    spdlog::warn("file service: no change notices: inotify: {}", std::strerror(errno));
    return;
  }
  inotify_ = Fd::Adopt(fd);
  notify_ = std::move(notify);
  watcher_ = std::thread([this] { WatchLoop(); });
}

void FileSession::WatchLoop() {
  alignas(inotify_event) char buffer[64 * 1024];
  while (!stop_watching_) {
    pollfd p{inotify_.get(), POLLIN, 0};
    if (::poll(&p, 1, 100) <= 0) continue;
    ssize_t n = ::read(inotify_.get(), buffer, sizeof buffer);
    if (n <= 0) continue;
    // One notice per object or entry per batch, none for this client's own changes.
    std::set<std::pair<uint64_t, std::string>> changed;
    auto now = std::chrono::steady_clock::now();
    {
      std::lock_guard lock(mutex_);
      for (char* at = buffer; at < buffer + n;) {
        auto* event = reinterpret_cast<inotify_event*>(at);
        at += sizeof(inotify_event) + event->len;
        if (event->mask & IN_IGNORED) {
          watches_.erase(event->wd);
          continue;
        }
        auto it = watches_.find(event->wd);
        if (it == watches_.end()) continue;
        // A directory's event about an entry matters to clients only when the name itself
        // changes: invalidating the entry of a file whose content changed would unhash the
        // dentry of every open file (its path then reads "(deleted)", and CRIU refuses to
        // dump a job holding it). Content changes arrive through the file's own watch.
        constexpr uint32_t kNameChanges = IN_CREATE | IN_DELETE | IN_MOVED_FROM | IN_MOVED_TO;
        if (event->len && !(event->mask & kNameChanges)) continue;
        std::pair<uint64_t, std::string> key{it->second, event->len ? event->name : ""};
        auto own = own_.find(key);
        if (own != own_.end() && now - own->second < kOwnChangeWindow) continue;
        changed.insert(key);
      }
      for (auto it = own_.begin(); it != own_.end();) {
        it = now - it->second > kOwnChangeWindow ? own_.erase(it) : std::next(it);
      }
    }
    for (const auto& [node, name] : changed) {
      try {
        if (name.empty()) {
          notify_(node, 0, "");
        } else {
          notify_(0, node, name);
        }
      } catch (const std::exception& e) {
        spdlog::debug("file service: notice not sent: {}", e.what());
      }
    }
  }
}

// ---------------------------------------------------------------------------------------

FileServer::FileServer(const std::string& export_root, int threads, FileSession::Root peer_root)
    : root_(Fd::Open(export_root, O_PATH | O_DIRECTORY)), peer_root_(peer_root), pool_(threads) {}

FileServer::~FileServer() {
  Stop();
}

void FileServer::Stop() {
  std::unique_lock lock(mutex_);
  stopping_ = true;
  for (int fd : connections_) ::shutdown(fd, SHUT_RDWR);
  idle_.wait(lock, [&] { return connections_.empty(); });
}

void FileServer::Serve(Fd connection, const PeerIdentity& peer) {
  {
    std::lock_guard lock(mutex_);
    if (stopping_) return;
    connections_.insert(connection.get());
  }
  spdlog::info("file service: {} connected", peer.address);
  // Requests also run on this thread (below): like the workers, it needs an fs context of
  // its own with umask 0, so that it never changes the daemon's.
  if (::unshare(CLONE_FS) == 0) ::umask(0);
  auto session = std::make_shared<FileSession>(root_.get(), peer_root_);
  auto stream = std::make_shared<FrameStream>(connection.get(), kMaxFileFrameBytes);
  session->Watch([stream](uint64_t node, uint64_t parent, const std::string& name) {
    capnp::MallocMessageBuilder message(256);
    auto notice = message.initRoot<schema::ServerMessage>().initNotice();
    notice.setNode(node);
    notice.setParent(parent);
    notice.setName(name);
    stream->Write(message);
  });
  // Jobs hold the connection open until their reply is written.
  auto in_flight = std::make_shared<std::atomic<int>>(0);
  std::string why = "closed by peer";
  try {
    while (auto message = stream->Read()) {
      auto shared = std::make_shared<IncomingMessage>(std::move(*message));
      // Read before anything is counted in flight: a message that does not read ends the
      // connection here (below).
      auto request = shared->Root<schema::FileRequest>();
      auto op = request.getOp();
      bool big_read = op == schema::FileOp::READ && request.getSize() > (64 << 10);
      ++*in_flight;
      auto job = [session, stream, shared, in_flight] {
        capnp::MallocMessageBuilder reply(2048);
        try {
          auto request = shared->Root<schema::FileRequest>();
          auto response = reply.initRoot<schema::ServerMessage>().initResponse();
          session->Handle(request, response);
          if (request.getOp() != schema::FileOp::FORGET) stream->Write(reply);
        } catch (const std::exception& e) {
          spdlog::debug("file service: reply not sent: {}", e.what());
        }
        --*in_flight;
      };
      // A request that arrives alone (nothing else of this client's in flight) and is not
      // bulk I/O runs here: handing it to a worker would only add a thread wake-up to its
      // latency. Forgets and releases (a map operation and a close) always do. Concurrent
      // requests go to the pool, so they run in parallel.
      bool bulk = op == schema::FileOp::WRITE || op == schema::FileOp::FSYNC ||
                  op == schema::FileOp::READDIR || op == schema::FileOp::FALLOCATE || big_read;
      bool tiny = op == schema::FileOp::FORGET || op == schema::FileOp::RELEASE ||
                  op == schema::FileOp::RELEASEDIR;
      if (tiny || (!bulk && in_flight->load() == 1)) {
        job();
      } else {
        pool_.Post(std::move(job));
      }
    }
  } catch (const Error& e) {
    why = e.what();
  } catch (const kj::Exception& e) {
    // A frame whose message does not read (no root, a bad pointer): end this connection
    // like a broken one, after its requests in flight, so that their replies never go to
    // a descriptor number reused by then.
    why = fmt::format("malformed message: {}", e.getDescription().cStr());
  }
  ::shutdown(connection.get(), SHUT_RDWR);
  while (*in_flight > 0) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  spdlog::info("file service: {} disconnected: {}", peer.address, why);
  std::lock_guard lock(mutex_);
  connections_.erase(connection.get());
  idle_.notify_all();
}

}  // namespace homeward
