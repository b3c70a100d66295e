// Locks taken through homefs, held by the file service on the home's file: each client's
// lock owner (a process's POSIX locks, an open file's OFD locks) gets a description of its
// own holding OFD locks; flock locks are taken on the client's open file itself. So they
// exclude each other, other nodes' and local processes' locks exactly as the home's kernel
// decides. A request that must wait does so in HomeLocks (home_locks.h).
#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <climits>

#include <spdlog/spdlog.h>

#include "file_ops.h"

namespace homeward {

using namespace file_ops;
using Op = schema::FileOp;

namespace {

bool Busy(int err) {
  return err == EAGAIN || err == EWOULDBLOCK || err == EACCES;
}

std::pair<uint64_t, uint64_t> InodeOf(int fd) {
  struct stat st;
  Check(::fstat(fd, &st));
  return {st.st_dev, st.st_ino};
}

// A range as fcntl takes it, checked: start and length as the client's kernel sent them.
struct Range {
  struct flock fl {};
  int64_t end = 0;  // last byte, HomeLocks::kToEnd for "to the end"
};

Range ToRange(schema::FileLock::Reader lock) {
  Range r;
  uint64_t start = lock.getStart(), length = lock.getLength();
  if (start > static_cast<uint64_t>(INT64_MAX) || length > static_cast<uint64_t>(INT64_MAX)) {
    throw OpError{EINVAL};
  }
  if (length != 0 && start + length - 1 > static_cast<uint64_t>(INT64_MAX)) throw OpError{EINVAL};
  short type = lock.getType();
  if (type != F_RDLCK && type != F_WRLCK && type != F_UNLCK) throw OpError{EINVAL};
  r.fl.l_type = type;
  r.fl.l_whence = SEEK_SET;
  r.fl.l_start = static_cast<off_t>(start);
  r.fl.l_len = static_cast<off_t>(length);
  r.fl.l_pid = 0;  // F_OFD_* require it
  r.end = length == 0 ? HomeLocks::kToEnd : static_cast<int64_t>(start + length - 1);
  return r;
}

}  // namespace

std::shared_ptr<FileSession::LockOwner> FileSession::OwnerOf(uint64_t fh, const OpenFile& file,
                                                            uint64_t owner, bool create) {
  auto inode = InodeOf(file.fd.get());
  {
    std::lock_guard lock(owners_mutex_);
    auto it = owners_.find({owner, inode});
    if (it != owners_.end()) {
      it->second->handles.insert(fh);
      return it->second;
    }
  }
  if (!create) return nullptr;
  // A description of the owner's own, opened with the caller's rights: read and write
  // when the caller may (so read and write locks both work), else as the client opened it.
  auto made = std::make_shared<LockOwner>();
  made->owner = owner;
  made->inode = inode;
  made->handles.insert(fh);
  std::string path = ProcPath(file.fd.get());
  int fd = ::open(path.c_str(), O_RDWR | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
  made->access = O_RDWR;
  if (fd < 0) {
    made->access = Check(::fcntl(file.fd.get(), F_GETFL)) & O_ACCMODE;
    fd = Check(::open(path.c_str(), made->access | O_CLOEXEC | O_NOCTTY | O_NONBLOCK));
  }
  made->fd = Fd::Adopt(fd);
  std::lock_guard lock(owners_mutex_);
  auto [it, added] = owners_.try_emplace({owner, inode}, made);
  it->second->handles.insert(fh);
  return it->second;  // another request of the owner may have made one meanwhile
}

void FileSession::DropOwner(std::pair<uint64_t, uint64_t> inode, uint64_t owner) {
  std::shared_ptr<LockOwner> gone;  // closed after the lock: its locks go then
  {
    std::lock_guard lock(owners_mutex_);
    auto it = owners_.find({owner, inode});
    if (it == owners_.end()) return;
    gone = std::move(it->second);
    owners_.erase(it);
  }
  locks_->Forget(inode, {this, owner});
}

void FileSession::DropOwnersOf(uint64_t fh) {
  // An owner that locked through this file only goes with it: an OFD owner is the file
  // itself, and a process's close of it (a POSIX owner) was a flush that dropped it already.
  std::vector<std::shared_ptr<LockOwner>> gone;
  {
    std::lock_guard lock(owners_mutex_);
    for (auto it = owners_.begin(); it != owners_.end();) {
      auto& handles = it->second->handles;
      if (handles.erase(fh) && handles.empty()) {
        gone.push_back(std::move(it->second));
        it = owners_.erase(it);
      } else {
        ++it;
      }
    }
  }
  for (auto& owner : gone) locks_->Forget(owner->inode, {this, owner->owner});
}

void FileSession::EndLockWaits(int err) {
  locks_->EndSession(this, err);
}

void FileSession::DropLocks() {
  locks_->CancelAll(this, ENOLCK);
  std::map<std::pair<uint64_t, std::pair<uint64_t, uint64_t>>, std::shared_ptr<LockOwner>> gone;
  {
    std::lock_guard lock(owners_mutex_);
    gone.swap(owners_);
  }
  std::vector<std::shared_ptr<OpenFile>> files;
  {
    std::lock_guard lock(mutex_);
    for (auto& [fh, file] : handles_) {
      if (file->flocked) files.push_back(file);
    }
  }
  for (auto& file : files) {
    ::flock(file->fd.get(), LOCK_UN);
    file->flocked = false;
  }
  locks_->ForgetSession(this);
  size_t count = gone.size();
  gone.clear();  // the descriptions close: their locks go
  spdlog::info("file service: dropped the locks of a lost node's client ({} owners, {} flocks)",
               count, files.size());
}

void FileOps::Getlk(FileSession& s, Rq rq, Rs rs) {
  auto handle = s.GetHandle(rq.getFh());
  Range range = ToRange(rq.getLock());
  if (range.fl.l_type == F_UNLCK) throw OpError{EINVAL};
  // Asked through the owner's own description, its own locks do not count (as a process's
  // own locks do not for F_GETLK); an owner without one holds nothing here.
  auto owner = s.OwnerOf(rq.getFh(), *handle, rq.getOwner(), false);
  struct flock fl = range.fl;
  Check(::fcntl(owner ? owner->fd.get() : handle->fd.get(), F_OFD_GETLK, &fl));
  auto out = rs.initLock();
  out.setType(fl.l_type);
  if (fl.l_type == F_UNLCK) return;
  out.setStart(static_cast<uint64_t>(fl.l_start));
  out.setLength(static_cast<uint64_t>(fl.l_len));
  int pid = fl.l_pid;
  if (pid == -1) {
    // An OFD lock: a client's (named by what its node said) or a local OFD user's.
    int64_t end = fl.l_len == 0 ? HomeLocks::kToEnd : fl.l_start + fl.l_len - 1;
    pid = s.locks_->Holder(InodeOf(handle->fd.get()), {&s, rq.getOwner()}, range.fl.l_type,
                           fl.l_start, end)
              .value_or(-1);
  }
  out.setPid(pid);
}

bool FileOps::Setlk(FileSession& s, Rq rq, Rs, FileSession::Later& later) {
  uint64_t fh = rq.getFh();
  auto handle = s.GetHandle(fh);
  HomeLocks::Attempt attempt;
  std::function<void()> got;
  bool wait;
  if (rq.getOp() == Op::FLOCK) {
    int op = static_cast<int>(rq.getFlags());
    int kind = op & (LOCK_SH | LOCK_EX | LOCK_UN);
    if (kind != LOCK_SH && kind != LOCK_EX && kind != LOCK_UN) throw OpError{EINVAL};
    if (kind == LOCK_UN) {
      Check(::flock(handle->fd.get(), LOCK_UN));
      handle->flocked = false;
      return true;
    }
    wait = !(op & LOCK_NB);
    attempt = [handle, kind](bool block) {
      return ::flock(handle->fd.get(), kind | (block ? 0 : LOCK_NB)) == 0 ? 0 : errno;
    };
    got = [handle] { handle->flocked = true; };
  } else {
    Range range = ToRange(rq.getLock());
    short type = range.fl.l_type;
    auto owner = s.OwnerOf(fh, *handle, rq.getOwner(), type != F_UNLCK);
    if (type == F_UNLCK) {
      if (owner) {
        Check(::fcntl(owner->fd.get(), F_OFD_SETLK, &range.fl));
        s.locks_->Unheld(owner->inode, {&s, owner->owner}, range.fl.l_start, range.end);
      }
      return true;
    }
    // As for one descriptor: a read lock needs it readable, a write lock writable.
    if ((type == F_RDLCK && owner->access == O_WRONLY) ||
        (type == F_WRLCK && owner->access == O_RDONLY)) {
      throw OpError{EBADF};
    }
    wait = rq.getFlags() & 1;
    attempt = [owner, fl = range.fl](bool block) mutable {
      return ::fcntl(owner->fd.get(), block ? F_OFD_SETLKW : F_OFD_SETLK, &fl) == 0 ? 0 : errno;
    };
    got = [locks = s.locks_, owner, key = HomeLocks::Owner{&s, owner->owner},
           pid = rq.getLock().getPid(), type, start = range.fl.l_start, end = range.end] {
      locks->Held(owner->inode, key, pid, type, start, end);
    };
  }
  int err = attempt(false);
  if (err == 0) {
    got();
    return true;
  }
  // A lock held by another: EAGAIN, as fcntl and flock answer. A client that cannot be
  // answered later (none given) gets the same.
  if (!Busy(err) || !wait || !later) throw OpError{Busy(err) ? EAGAIN : err};
  s.locks_->Wait({&s, rq.getId()}, std::move(attempt),
                 [later = std::move(later), got = std::move(got)](int err) {
                   if (err == 0) got();
                   later(err);
                 });
  return false;
}

void FileOps::UnlockOwner(FileSession& s, Rq rq, Rs) {
  auto handle = s.GetHandle(rq.getFh());
  s.DropOwner(InodeOf(handle->fd.get()), rq.getOwner());
}

}  // namespace homeward
