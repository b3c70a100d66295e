// One handler per file service request. Each takes the node or open file it works on as
// a shared_ptr and keeps it until its last system call on the descriptor has returned, so
// a FORGET or RELEASE that arrives meanwhile cannot close the descriptor under it.
#include <fcntl.h>
#include <sys/inotify.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/uio.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <algorithm>
#include <climits>

#include <capnp/orphan.h>
#include <fmt/format.h>

#include "file_ops.h"

namespace homeward {

using namespace file_ops;
using Op = schema::FileOp;

namespace {

// FUSE_SET_ATTR_* bits, as the client forwards them.
constexpr uint32_t kSetMode = 1 << 0, kSetUid = 1 << 1, kSetGid = 1 << 2, kSetSize = 1 << 3,
                   kSetAtime = 1 << 4, kSetMtime = 1 << 5, kSetAtimeNow = 1 << 7,
                   kSetMtimeNow = 1 << 8;

// Open flags the client's kernel has already acted on, which the home's own descriptor must
// not take. O_DIRECT asks for buffers and offsets aligned to the home's disk blocks, and the
// service's buffers are not: every read and write would fail with EINVAL. The job's O_DIRECT
// is kept where it means something, on its own node, whose kernel sends such a file's reads
// and writes to the home uncached; the home reads and writes through its page cache, as NFS
// servers do.
constexpr int kClientOnlyFlags = O_NOCTTY | O_DIRECT;

timespec Ts(int64_t ns) {
  return timespec{static_cast<time_t>(ns / 1'000'000'000), static_cast<long>(ns % 1'000'000'000)};
}

timespec SetTime(uint32_t valid, uint32_t set, uint32_t now, int64_t ns) {
  if (!(valid & set)) return {0, UTIME_OMIT};
  return (valid & now) ? timespec{0, UTIME_NOW} : Ts(ns);
}

// The directory a request just changed, for the client (dirAttr): left out if it cannot
// be read, as the change is made either way.
void ReportDir(int dir, schema::Attr::Builder (schema::FileResponse::Builder::*init)(),
               schema::FileResponse::Builder rs) {
  struct stat st;
  if (::fstat(dir, &st) == 0) FillAttr(st, (rs.*init)());
}
void ReportDir(int dir, schema::FileResponse::Builder rs) {
  ReportDir(dir, &schema::FileResponse::Builder::initDirAttr, rs);
}

}  // namespace

void FileOps::Hello(FileSession& s, Rq rq, Rs rs) {
  if (rq.getVersion() != schema::FILES_VERSION) {
    rs.setMessage(
        fmt::format("file service version {} is not {}", rq.getVersion(), schema::FILES_VERSION));
    throw OpError{EPROTO};
  }
  FillAttr(StatFd(s.root_), rs.initEntry().initAttr());
  rs.getEntry().setNode(1);
  s.client_ = rq.getClient();
  s.AdoptKept();  // what the lock keeper held for it across a restart of the daemon
}

void FileOps::Lookup(FileSession& s, Rq rq, Rs rs) {
  auto dir = s.GetNode(rq.getNode());
  s.LookupInto(dir->fd.get(), rq.getName(), rs.initEntry());
}

void FileOps::Forget(FileSession& s, Rq rq, Rs) {
  std::shared_ptr<FileSession::Node> gone;  // closed after the lock, when no request holds it
  std::lock_guard lock(s.mutex_);
  auto it = s.nodes_.find(rq.getNode());
  if (it == s.nodes_.end() || rq.getNode() == 1) return;
  if (it->second->nlookup > rq.getSize()) {
    it->second->nlookup -= rq.getSize();
    return;
  }
  s.by_inode_.erase(it->second->key);
  if (it->second->listed) s.open_nodes_.erase(it->second->place);
  it->second->listed = false;
  if (it->second->watch >= 0) {
    // Another node of the same inode cannot exist (by_inode_), so the watch is ours.
    s.watches_.erase(it->second->watch);
    ::inotify_rm_watch(s.inotify_.get(), it->second->watch);
  }
  gone = std::move(it->second);
  s.nodes_.erase(it);
}

void FileOps::Getattr(FileSession& s, Rq rq, Rs rs) {
  struct stat st;
  if (rq.getHasFh()) {
    auto handle = s.GetHandle(rq.getFh());
    Check(::fstat(handle->fd.get(), &st));
  } else {
    auto node = s.GetNode(rq.getNode());
    st = StatFd(node->fd.get());
  }
  FillAttr(st, rs.initEntry().initAttr());
}

void FileOps::Setattr(FileSession& s, Rq rq, Rs rs) {
  auto node = s.GetNode(rq.getNode());
  std::shared_ptr<FileSession::OpenFile> handle;
  if (rq.getHasFh()) handle = s.GetHandle(rq.getFh());
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
    Check(handle ? ::ftruncate(handle->fd.get(), size) : ::truncate(path.c_str(), size));
  }
  if (valid & (kSetAtime | kSetMtime)) {
    timespec times[2] = {SetTime(valid, kSetAtime, kSetAtimeNow, rq.getAtimeNs()),
                         SetTime(valid, kSetMtime, kSetMtimeNow, rq.getMtimeNs())};
    if (handle) {
      Check(::futimens(handle->fd.get(), times));
    } else {
      // By the node's own O_PATH descriptor: a symlink's own times too.
      Check(::utimensat(fd, "", times, AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW));
    }
  }
  FillAttr(StatFd(fd), rs.initEntry().initAttr());
}

void FileOps::Readlink(FileSession& s, Rq rq, Rs rs) {
  auto node = s.GetNode(rq.getNode());
  char buffer[PATH_MAX];
  ssize_t n = Check(::readlinkat(node->fd.get(), "", buffer, sizeof buffer));
  rs.setData(kj::arrayPtr(reinterpret_cast<capnp::byte*>(buffer), static_cast<size_t>(n)));
}

void FileOps::Mknod(FileSession& s, Rq rq, Rs rs) {
  std::string name = rq.getName();
  CheckName(name);
  auto dir = s.GetNode(rq.getNode());
  mode_t type = rq.getMode() & S_IFMT;
  // Devices need CAP_MKNOD, which a non-zero fsuid does not drop: check it here.
  if ((type == S_IFCHR || type == S_IFBLK) && current_credentials.uid != 0) {
    throw OpError{EPERM};
  }
  Check(::mknodat(dir->fd.get(), name.c_str(), rq.getMode(), rq.getRdev()));
  s.LookupInto(dir->fd.get(), name, rs.initEntry());
  ReportDir(dir->fd.get(), rs);
}

void FileOps::Mkdir(FileSession& s, Rq rq, Rs rs) {
  std::string name = rq.getName();
  CheckName(name);
  auto dir = s.GetNode(rq.getNode());
  Check(::mkdirat(dir->fd.get(), name.c_str(), rq.getMode()));
  s.LookupInto(dir->fd.get(), name, rs.initEntry());
  ReportDir(dir->fd.get(), rs);
}

void FileOps::Unlink(FileSession& s, Rq rq, Rs rs) {
  std::string name = rq.getName();
  CheckName(name);
  auto dir = s.GetNode(rq.getNode());
  Check(::unlinkat(dir->fd.get(), name.c_str(), rq.getOp() == Op::RMDIR ? AT_REMOVEDIR : 0));
  ReportDir(dir->fd.get(), rs);
}

void FileOps::Symlink(FileSession& s, Rq rq, Rs rs) {
  std::string name = rq.getName();
  CheckName(name);
  auto dir = s.GetNode(rq.getNode());
  std::string target(reinterpret_cast<const char*>(rq.getData().begin()), rq.getData().size());
  if (target.find('\0') != std::string::npos) throw OpError{EINVAL};
  Check(::symlinkat(target.c_str(), dir->fd.get(), name.c_str()));
  s.LookupInto(dir->fd.get(), name, rs.initEntry());
  ReportDir(dir->fd.get(), rs);
}

void FileOps::Rename(FileSession& s, Rq rq, Rs rs) {
  std::string name = rq.getName(), name2 = rq.getName2();
  CheckName(name);
  CheckName(name2);
  auto from = s.GetNode(rq.getNode());
  auto to = s.GetNode(rq.getNode2());
  Check(::renameat2(from->fd.get(), name.c_str(), to->fd.get(), name2.c_str(), rq.getFlags()));
  ReportDir(from->fd.get(), rs);
  if (to != from) ReportDir(to->fd.get(), &schema::FileResponse::Builder::initDir2Attr, rs);
}

void FileOps::Link(FileSession& s, Rq rq, Rs rs) {
  std::string name2 = rq.getName2();
  CheckName(name2);
  auto node = s.GetNode(rq.getNode());
  auto dir = s.GetNode(rq.getNode2());
  // Following our own descriptor's /proc link names exactly the looked-up object;
  // AT_EMPTY_PATH would need CAP_DAC_READ_SEARCH, which the caller may not have.
  Check(::linkat(AT_FDCWD, ProcPath(node->fd.get()).c_str(), dir->fd.get(), name2.c_str(),
                 AT_SYMLINK_FOLLOW));
  s.LookupInto(dir->fd.get(), name2, rs.initEntry());
  ReportDir(dir->fd.get(), rs);
}

void FileOps::Open(FileSession& s, Rq rq, Rs rs) {
  auto node = s.GetNode(rq.getNode());
  bool dir = rq.getOp() == Op::OPENDIR;
  int flags = dir ? O_RDONLY | O_DIRECTORY
                  : static_cast<int>(rq.getFlags()) & ~(O_CREAT | O_EXCL | kClientOnlyFlags);
  if (!dir && rq.getNode2() != 0 && rq.getName2().size() > 0) {
    // Close-to-open across renames: the client names the parent and name it found the
    // file under; when that name now holds another object (a rename replaced it, or it
    // is gone), the open fails with ESTALE, and the kernel looks the whole path up again
    // and opens what the name holds now (as it does for NFS). No verdict (the parent
    // forgotten, no search permission) opens the object as asked.
    std::string name = rq.getName2();
    CheckName(name);
    std::shared_ptr<FileSession::Node> parent;
    try {
      parent = s.GetNode(rq.getNode2());
    } catch (const OpError&) {
    }
    struct stat st;
    if (parent && ::fstatat(parent->fd.get(), name.c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0) {
      if (errno == ENOENT) throw OpError{ESTALE};
    } else if (parent && std::pair<uint64_t, uint64_t>{st.st_dev, st.st_ino} != node->key) {
      throw OpError{ESTALE};
    }
  }
  auto handle = std::make_shared<FileSession::OpenFile>();
  handle->node = rq.getNode();
  handle->fd = Fd::Adopt(Check(::open(ProcPath(node->fd.get()).c_str(), flags | O_CLOEXEC)));
  handle->append = (flags & O_APPEND) != 0;
  if (!dir) {
    // The client compares these with what it cached: its pages and attributes go only
    // when the file changed (close-to-open without dropping an unchanged file's pages).
    struct stat st;
    Check(::fstat(handle->fd.get(), &st));
    FillAttr(st, rs.initEntry().initAttr());
  }
  if (dir) {
    int dup = Check(::fcntl(handle->fd.get(), F_DUPFD_CLOEXEC, 0));
    handle->dir = ::fdopendir(dup);
    if (!handle->dir) {
      int err = errno;
      ::close(dup);
      throw OpError{err};
    }
  }
  // The restore of a job whose locks moved with it opens its files: a flock it held binds
  // to this open file before anyone can use it.
  if (!dir && rq.getCarry() != 0) s.BindCarriedFlock(rq.getCarry(), *handle);
  if (!dir) s.BindKeptFlock(*handle);
  rs.setFh(s.AddHandle(std::move(handle)));
}

void FileOps::Create(FileSession& s, Rq rq, Rs rs) {
  std::string name = rq.getName();
  CheckName(name);
  auto dir = s.GetNode(rq.getNode());
  int flags = (static_cast<int>(rq.getFlags()) | O_CREAT | O_NOFOLLOW) & ~kClientOnlyFlags;
  auto handle = std::make_shared<FileSession::OpenFile>();
  handle->fd = Fd::Adopt(OpenBeneath(dir->fd.get(), name, flags, rq.getMode()));
  bool watched = s.Remember(
      Fd::Adopt(Check(::open(ProcPath(handle->fd.get()).c_str(), O_PATH | O_CLOEXEC))),
      rs.initEntry());
  handle->node = rs.getEntry().getNode();
  handle->append = (flags & O_APPEND) != 0;
  // What its watch reports of this create: the truncation of a file this client knew
  // (content and times), and its close once written; a watch begun now saw nothing.
  if (s.inotify_.valid()) {
    bool truncated = watched && (flags & O_TRUNC);
    s.MarkOwn(handle->node, IN_CLOSE_WRITE | (truncated ? IN_MODIFY | IN_ATTRIB : 0u));
  }
  rs.setFh(s.AddHandle(std::move(handle)));
  ReportDir(dir->fd.get(), rs);
}

void FileOps::CreateAgain(FileSession& s, Rq rq, Rs rs) {
  std::string name = rq.getName();
  CheckName(name);
  auto dir = s.GetNode(rq.getNode());
  // The file exists (this very request made it): open it as made, without truncating
  // what the client may have written since.
  int flags =
      (static_cast<int>(rq.getFlags()) | O_NOFOLLOW) &
      ~(O_CREAT | O_EXCL | O_TRUNC | kClientOnlyFlags);
  auto handle = std::make_shared<FileSession::OpenFile>();
  handle->append = (flags & O_APPEND) != 0;
  handle->fd = Fd::Adopt(OpenBeneath(dir->fd.get(), name, flags, 0));
  s.Remember(Fd::Adopt(Check(::open(ProcPath(handle->fd.get()).c_str(), O_PATH | O_CLOEXEC))),
             rs.initEntry());
  handle->node = rs.getEntry().getNode();
  rs.setFh(s.AddHandle(std::move(handle)));
}

void FileOps::Read(FileSession& s, Rq rq, Rs rs) {
  auto handle = s.GetHandle(rq.getFh());
  size_t size = std::min<uint64_t>(rq.getSize(), 1 << 20);
  auto orphan = capnp::Orphanage::getForMessageContaining(rs).newOrphan<capnp::Data>(size);
  ssize_t n = Check(
      ::pread(handle->fd.get(), orphan.get().begin(), size, static_cast<off_t>(rq.getOffset())));
  orphan.truncate(static_cast<size_t>(n));
  rs.adoptData(kj::mv(orphan));
}

void FileOps::Write(FileSession& s, Rq rq, Rs rs) {
  auto handle = s.GetHandle(rq.getFh());
  auto data = rq.getData();
  iovec iov{const_cast<capnp::byte*>(data.begin()), data.size()};
  ssize_t n;
  if (rq.getFlags() & O_APPEND) {
    // The caller's write(2) on an O_APPEND file: placed by the home's kernel at the end of
    // the file as it is now, under the inode's lock, as a local O_APPEND write is. The
    // client's offset is its kernel's idea of the end, stale as soon as another node or
    // a local process appended.
    n = Check(::pwritev2(handle->fd.get(), &iov, 1, 0, RWF_APPEND));
  } else {
    if (handle->append) {
      std::lock_guard lock(handle->append_mutex);
      if (handle->append) {
        int fl = Check(::fcntl(handle->fd.get(), F_GETFL));
        Check(::fcntl(handle->fd.get(), F_SETFL, fl & ~O_APPEND));  // EPERM: append-only
        handle->append = false;
      }
    }
    n = Check(::pwritev(handle->fd.get(), &iov, 1, static_cast<off_t>(rq.getOffset())));
    if (auto due = handle->writeback.Wrote(rq.getOffset(), static_cast<uint64_t>(n))) {
      // Started, not waited for; a failure shows at the writer's fsync, as the flusher's
      // would.
      (void)::sync_file_range(handle->fd.get(), static_cast<off_t>(due->offset),
                              static_cast<off_t>(due->length), SYNC_FILE_RANGE_WRITE);
    }
  }
  rs.setSize(static_cast<uint64_t>(n));
}

void FileOps::Flush(FileSession& s, Rq rq, Rs) {
  s.GetHandle(rq.getFh());  // answered here: every write is already at home
}

void FileOps::Release(FileSession& s, Rq rq, Rs) {
  std::shared_ptr<FileSession::OpenFile> gone;  // closed after the lock, when no request holds it
  {
    std::lock_guard lock(s.mutex_);
    auto it = s.handles_.find(rq.getFh());
    if (it == s.handles_.end()) return;
    gone = std::move(it->second);
    s.handles_.erase(it);
  }
  s.DropOwnersOf(rq.getFh());  // its OFD locks (its flock locks go as it closes)
}

void FileOps::Fsync(FileSession& s, Rq rq, Rs) {
  auto handle = s.GetHandle(rq.getFh());
  int fd = handle->fd.get();
  Check((rq.getFlags() & 1) ? ::fdatasync(fd) : ::fsync(fd));
}

void FileOps::Readdir(FileSession& s, Rq rq, Rs rs) {
  auto handle = s.GetHandle(rq.getFh());
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
        s.LookupInto(dir_fd, items[i].name, entry);
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

void FileOps::Statfs(FileSession& s, Rq rq, Rs rs) {
  auto node = s.GetNode(rq.getNode());
  struct statvfs st;
  Check(::fstatvfs(node->fd.get(), &st));
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
}

void FileOps::Access(FileSession& s, Rq rq, Rs) {
  auto node = s.GetNode(rq.getNode());
  // AT_EACCESS checks with the fs credentials the request runs with, not the daemon's real
  // ids.
  Check(::faccessat(AT_FDCWD, ProcPath(node->fd.get()).c_str(), static_cast<int>(rq.getMode()),
                    AT_EACCESS));
}

void FileOps::Xattr(FileSession& s, Rq rq, Rs rs) {
  std::string name = rq.getName();
  auto node = s.GetNode(rq.getNode());
  std::string path = ProcPath(node->fd.get());
  // trusted.* needs CAP_SYS_ADMIN, which a non-zero fsuid does not drop.
  if (name.rfind("trusted.", 0) == 0 && current_credentials.uid != 0) throw OpError{EPERM};
  if (rq.getOp() == Op::SETXATTR) {
    Check(::setxattr(path.c_str(), name.c_str(), rq.getData().begin(), rq.getData().size(),
                     static_cast<int>(rq.getFlags())));
    return;
  }
  if (rq.getOp() == Op::REMOVEXATTR) {
    Check(::removexattr(path.c_str(), name.c_str()));
    return;
  }
  size_t size = std::min<uint64_t>(rq.getSize(), 64 << 10);
  std::vector<char> buffer(size);
  ssize_t n = rq.getOp() == Op::GETXATTR
                  ? Check(::getxattr(path.c_str(), name.c_str(), buffer.data(), size))
                  : Check(::listxattr(path.c_str(), buffer.data(), size));
  if (size == 0) {
    rs.setSize(static_cast<uint64_t>(n));
  } else {
    rs.setData(kj::arrayPtr(reinterpret_cast<capnp::byte*>(buffer.data()), static_cast<size_t>(n)));
  }
}

void FileOps::Fallocate(FileSession& s, Rq rq, Rs) {
  auto handle = s.GetHandle(rq.getFh());
  Check(::fallocate(handle->fd.get(), static_cast<int>(rq.getFlags()),
                    static_cast<off_t>(rq.getOffset()), static_cast<off_t>(rq.getSize())));
}

}  // namespace homeward
