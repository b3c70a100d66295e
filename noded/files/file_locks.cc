// Locks taken through homefs, held by the file service on the home's file: each client's
// lock owner (a process's POSIX locks, an open file's OFD locks) gets a description of its
// own holding OFD locks; flock locks are taken on the client's open file itself. So they
// exclude each other, other nodes' and local processes' locks exactly as the home's kernel
// decides. A request that must wait does so in HomeLocks (home_locks.h).
#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <climits>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string>
#include <tuple>
#include <vector>

#include <spdlog/spdlog.h>

#include "file_ops.h"
#include "lock_holder.h"
#include "lock_holder_socket.h"

namespace homeward {

using namespace file_ops;
using Op = schema::FileOp;

namespace {

// The OFD locks description `fd` holds, as the kernel says (`/proc/self/fdinfo/FD`'s
// "lock:" lines: only the locks whose owner is that description): type, start, end
// (inclusive, kToEnd for EOF).
std::vector<std::tuple<short, int64_t, int64_t>> OfdLocksOf(int fd) {
  std::vector<std::tuple<short, int64_t, int64_t>> held;
  std::ifstream in("/proc/self/fdinfo/" + std::to_string(fd));
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("lock:", 0) != 0) continue;
    std::istringstream fields(line.substr(5));
    std::string id, kind, mode, access, pid, inode, start, end;
    if (!(fields >> id >> kind >> mode >> access >> pid >> inode >> start >> end)) continue;
    if (kind != "OFDLCK") continue;
    try {
      held.emplace_back(access == "READ" ? F_RDLCK : F_WRLCK, std::stoll(start),
                        end == "EOF" ? HomeLocks::kToEnd : std::stoll(end));
    } catch (const std::exception&) {
    }
  }
  return held;
}

bool Busy(int err) {
  return err == EAGAIN || err == EWOULDBLOCK || err == EACCES;
}

// What the lock keeper is told of a moving job's lock: a restart drops it.
LockKeeper::Meta ParkedMeta() {
  LockKeeper::Meta meta;
  meta.kind = LockKeeper::Kind::kParked;
  return meta;
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
                                                            uint64_t owner, bool create,
                                                            uint64_t carry, int32_t carry_pid) {
  auto inode = InodeOf(file.fd.get());
  {
    std::lock_guard lock(owners_mutex_);
    auto it = owners_.find({owner, inode});
    if (it != owners_.end()) {
      it->second->handles.insert(fh);
      return it->second;
    }
    // A process of a job that moved here, first seen with this owner: the description
    // that held its locks on the old node is its description from now on.
    auto claimed = carry ? claimed_.find(carry) : claimed_.end();
    if (claimed != claimed_.end()) {
      auto& posix = claimed->second->posix;
      auto match = std::find_if(posix.begin(), posix.end(), [&](const Carried::Posix& p) {
        return p.inode == inode && p.pid == carry_pid;
      });
      if (match != posix.end()) {
        auto bound = std::make_shared<LockOwner>();
        bound->fd = std::move(match->fd);
        bound->access = match->access;
        bound->owner = owner;
        bound->inode = inode;
        bound->handles.insert(fh);
        bound->kept = std::move(match->kept);
        if (bound->kept) bound->kept->Describe(OwnerMeta(owner, inode, 0, bound->access));
        locks_->Rekey(inode, {claimed->second.get(), static_cast<uint64_t>(match->pid)},
                      {this, owner});
        posix.erase(match);
        owners_[{owner, inode}] = bound;
        spdlog::debug("file service: a carried lock owner (pid {} of its job) bound again",
                      carry_pid);
        return bound;
      }
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
  // Kept across a restart of the daemon (only a client that named itself in its hello can
  // take it back); set before anyone else can see the owner.
  if (locks_->keeper && client_ != 0) {
    made->kept = locks_->keeper->Keep(made->fd.get(), OwnerMeta(owner, inode, 0, made->access));
  }
  std::lock_guard lock(owners_mutex_);
  auto [it, added] = owners_.try_emplace({owner, inode}, made);
  it->second->handles.insert(fh);
  return it->second;  // another request of the owner may have made one meanwhile
}

LockKeeper::Meta FileSession::OwnerMeta(uint64_t owner, std::pair<uint64_t, uint64_t> inode,
                                        int pid, int access) const {
  LockKeeper::Meta meta;
  meta.kind = owner == 0 ? LockKeeper::Kind::kFlock : LockKeeper::Kind::kPosix;
  meta.client = client_;
  meta.owner = owner;
  meta.inode = inode;
  meta.pid = pid;
  meta.access = access;
  meta.host = host_;
  return meta;
}

void FileSession::AdoptKept() {
  if (!locks_->keeper || client_ == 0) return;
  auto orphans = locks_->keeper->Adopt(client_);
  if (orphans.empty()) return;
  size_t owners = 0, flocks = 0;
  std::lock_guard lock(owners_mutex_);
  for (auto& orphan : orphans) {
    const auto& meta = orphan.meta;
    if (meta.kind == LockKeeper::Kind::kFlock) {
      kept_flocks_.emplace(meta.inode, std::move(orphan));
      ++flocks;
      continue;
    }
    int fd = ::fcntl(orphan.kept->fd(), F_DUPFD_CLOEXEC, 0);
    if (fd < 0) continue;
    auto owner = std::make_shared<LockOwner>();
    owner->fd = Fd::Adopt(fd);
    owner->access = meta.access;
    owner->owner = meta.owner;
    owner->inode = meta.inode;
    owner->kept = std::move(orphan.kept);
    owner->described_pid = meta.pid;
    // F_GETLK's holder for what it holds, as its kernel says: a description that held
    // nothing (a waiter's, whose request is sent again) must not name its client.
    for (auto [type, start, end] : OfdLocksOf(owner->fd.get())) {
      locks_->Held(meta.inode, {this, meta.owner}, meta.pid, type, start, end);
    }
    owners_[{meta.owner, meta.inode}] = std::move(owner);
    ++owners;
  }
  spdlog::info("file service: {} lock owners and {} flocks of {} held across the restart", owners,
               flocks, host_);
}

void FileSession::BindKeptFlock(OpenFile& file) {
  std::lock_guard lock(owners_mutex_);
  if (kept_flocks_.empty()) return;
  auto it = kept_flocks_.find(InodeOf(file.fd.get()));
  if (it == kept_flocks_.end()) return;
  int fd = ::fcntl(it->second.kept->fd(), F_DUPFD_CLOEXEC, 0);
  if (fd < 0) return;
  file.carried_flock = Fd::Adopt(fd);
  file.kept_flock = std::move(it->second.kept);
  file.flocked = true;
  kept_flocks_.erase(it);
}

void FileSession::BindCarriedFlock(uint64_t carry, OpenFile& file) {
  auto inode = InodeOf(file.fd.get());
  std::lock_guard lock(owners_mutex_);
  auto claimed = claimed_.find(carry);
  if (claimed == claimed_.end()) return;
  auto& flocks = claimed->second->flocks;
  auto match = std::find_if(flocks.begin(), flocks.end(),
                            [&](const Carried::Flock& f) { return f.inode == inode; });
  if (match == flocks.end()) return;
  file.carried_flock = std::move(match->fd);
  file.kept_flock = std::move(match->kept);
  if (file.kept_flock) file.kept_flock->Describe(OwnerMeta(0, inode, 0, 0));
  file.flocked = true;
  flocks.erase(match);
  spdlog::debug("file service: a carried flock bound again");
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
  {
    std::lock_guard lock(owners_mutex_);
    claimed_.clear();  // what moved here with a job goes as the job's other locks do
  }
  std::vector<std::shared_ptr<OpenFile>> files;
  {
    std::lock_guard lock(mutex_);
    for (auto& [fh, file] : handles_) {
      if (file->flocked) files.push_back(file);
    }
  }
  for (auto& file : files) {
    ::flock(file->FlockFd(), LOCK_UN);
    file->flocked = false;
    std::lock_guard kept(file->kept_mutex);
    file->kept_flock.reset();
  }
  {
    std::lock_guard lock(owners_mutex_);
    kept_flocks_.clear();
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
  auto owner =
      s.OwnerOf(rq.getFh(), *handle, rq.getOwner(), false, rq.getCarry(), rq.getCarryPid());
  struct flock fl = range.fl;
  Check(::fcntl(owner ? owner->fd.get() : handle->fd.get(), F_OFD_GETLK, &fl));
  auto out = rs.initLock();
  out.setType(fl.l_type);
  if (fl.l_type == F_UNLCK) return;
  out.setStart(static_cast<uint64_t>(fl.l_start));
  out.setLength(static_cast<uint64_t>(fl.l_len));
  // The holder as the home knows it: a local process by its pid, a job's (at home) by its
  // home id; a client's lock by the home id its node sent with it.
  int pid = fl.l_pid > 0 ? HomeIdOf(fl.l_pid) : fl.l_pid;
  if (pid == -1) {
    // An OFD lock: a client's (named by what its node said) or a local OFD user's.
    int64_t end = fl.l_len == 0 ? HomeLocks::kToEnd : fl.l_start + fl.l_len - 1;
    auto inode = InodeOf(handle->fd.get());
    pid = s.locks_->Holder(inode, {&s, rq.getOwner()}, range.fl.l_type, fl.l_start, end)
              .value_or(-1);
    // Else a job's at home (its shim's OFD lock for a POSIX lock), found by its description.
    if (pid == -1) {
      pid = OfdHolderAtHome(s.locks_->JobInits(), inode.first, inode.second, range.fl.l_type,
                            fl.l_start, end);
    }
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
      Check(::flock(handle->FlockFd(), LOCK_UN));
      handle->flocked = false;
      std::lock_guard kept(handle->kept_mutex);
      handle->kept_flock.reset();
      return true;
    }
    wait = !(op & LOCK_NB);
    attempt = [handle, kind](bool block) {
      return ::flock(handle->FlockFd(), kind | (block ? 0 : LOCK_NB)) == 0 ? 0 : errno;
    };
    // Kept across a restart of the daemon, as the client's flock of this file (only a client
    // that named itself in its hello can take it back).
    std::shared_ptr<LockKeeper> keeper = s.client_ != 0 ? s.locks_->keeper : nullptr;
    auto meta = s.OwnerMeta(0, InodeOf(handle->FlockFd()), 0, 0);
    got = [handle, keeper, meta] {
      handle->flocked = true;
      std::lock_guard kept(handle->kept_mutex);
      if (keeper && !handle->kept_flock) handle->kept_flock = keeper->Keep(handle->FlockFd(), meta);
    };
  } else {
    Range range = ToRange(rq.getLock());
    short type = range.fl.l_type;
    auto owner = s.OwnerOf(fh, *handle, rq.getOwner(), type != F_UNLCK, rq.getCarry(),
                           rq.getCarryPid());
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
    int pid = rq.getLock().getPid();
    auto meta = s.OwnerMeta(owner->owner, owner->inode, pid, owner->access);
    got = [locks = s.locks_, owner, key = HomeLocks::Owner{&s, owner->owner}, pid, meta, type,
           start = range.fl.l_start, end = range.end] {
      locks->Held(owner->inode, key, pid, type, start, end);
      // The keeper learns the holder's pid once (F_GETLK names it after a restart too).
      if (owner->kept && owner->described_pid.exchange(pid) != pid) owner->kept->Describe(meta);
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
  // A process of a moved job closing the file drops what it carried too.
  if (rq.getCarry()) s.OwnerOf(rq.getFh(), *handle, rq.getOwner(), false, rq.getCarry(),
                               rq.getCarryPid());
  s.DropOwner(InodeOf(handle->fd.get()), rq.getOwner());
}

// Locks across a move. The source parks what the job holds before its frozen copy is
// killed (the copy's closes then drop only the source's own references: the parked
// descriptors keep the descriptions, and so the locks, open); the target claims them
// before criu restores the job, and its restore and the job's requests bind them again.
// At no moment is a lock free, so no waiter slips in between.
void FileOps::ParkLocks(FileSession& s, Rq rq, Rs) {
  uint64_t token = rq.getCarry();
  if (token == 0) throw OpError{EINVAL};
  auto carried = std::make_shared<FileSession::Carried>();
  if (uint64_t earlier = rq.getCarriedFrom()) {
    // Moving on again: what the job carried here and never touched goes along.
    std::lock_guard lock(s.owners_mutex_);
    auto it = s.claimed_.find(earlier);
    if (it != s.claimed_.end()) {
      for (auto& p : it->second->posix) {
        s.locks_->Rekey(p.inode, {it->second.get(), static_cast<uint64_t>(p.pid)},
                        {carried.get(), static_cast<uint64_t>(p.pid)});
        p.from_claim = true;
        carried->posix.push_back(std::move(p));
      }
      for (auto& f : it->second->flocks) {
        f.from_claim = true;
        carried->flocks.push_back(std::move(f));
      }
      s.claimed_.erase(it);
    }
  }
  for (auto parked : rq.getParked()) {
    try {
      if (parked.getFlock()) {
        auto handle = s.GetHandle(parked.getFh());
        if (!handle->flocked) continue;
        std::shared_ptr<LockKeeper::Kept> kept;
        {
          std::lock_guard guard(handle->kept_mutex);
          kept = handle->kept_flock;
        }
        if (kept) kept->Describe(ParkedMeta());
        carried->flocks.push_back({InodeOf(handle->fd.get()),
                                   Fd::Adopt(Check(::fcntl(handle->FlockFd(), F_DUPFD_CLOEXEC, 0))),
                                   false, kept});
        continue;
      }
      auto node = s.GetNode(parked.getNode());
      auto inode = InodeOf(node->fd.get());
      std::lock_guard lock(s.owners_mutex_);
      auto it = s.owners_.find({parked.getOwner(), inode});
      if (it == s.owners_.end()) continue;  // it holds nothing here
      FileSession::Carried::Posix p;
      p.inode = inode;
      p.pid = parked.getPid();
      p.owner = parked.getOwner();
      p.fd = Fd::Adopt(Check(::fcntl(it->second->fd.get(), F_DUPFD_CLOEXEC, 0)));
      p.access = it->second->access;
      p.kept = it->second->kept;
      if (p.kept) p.kept->Describe(ParkedMeta());
      s.locks_->Rekey(inode, {&s, parked.getOwner()},
                      {carried.get(), static_cast<uint64_t>(p.pid)});
      carried->posix.push_back(std::move(p));
    } catch (const OpError& e) {
      // A file closed or forgotten meanwhile holds nothing to carry.
      spdlog::debug("file service: a lock not parked: {}", std::strerror(e.err));
    }
  }
  spdlog::info("file service: {} lock owners and {} flocks of a moving job kept for it",
               carried->posix.size(), carried->flocks.size());
  s.locks_->Park(token, std::move(carried));
}

size_t FileSession::ParkHomeJob(HomeLocks& locks, uint64_t token,
                                const std::vector<HomeJobLock>& held) {
  // The job's own descriptions, so its own locks: no moment without them once the frozen
  // copy is killed, and the target binds them as it binds a guest's (a flock at the
  // restore's open of its file, an OFD owner at its process's first lock request).
  auto carried = std::make_shared<FileSession::Carried>();
  for (const HomeJobLock& lock : held) {
    try {
      auto inode = InodeOf(lock.fd);
      Fd fd = Fd::Adopt(Check(::fcntl(lock.fd, F_DUPFD_CLOEXEC, 0)));
      std::shared_ptr<LockKeeper::Kept> kept;
      if (locks.keeper) kept = locks.keeper->Keep(fd.get(), ParkedMeta());
      if (lock.flock) {
        carried->flocks.push_back({inode, std::move(fd), false, std::move(kept)});
        continue;
      }
      FileSession::Carried::Posix p;
      p.inode = inode;
      p.pid = lock.pid;
      p.access = Check(::fcntl(fd.get(), F_GETFL)) & O_ACCMODE;
      p.fd = std::move(fd);
      p.kept = std::move(kept);
      carried->posix.push_back(std::move(p));
    } catch (const OpError& e) {
      spdlog::warn("file service: a lock of a job leaving home not kept: {}",
                   std::strerror(e.err));
    }
  }
  size_t count = carried->posix.size() + carried->flocks.size();
  if (count == 0) return 0;
  spdlog::info("file service: {} lock owners and {} flocks of a job leaving home kept for it",
               carried->posix.size(), carried->flocks.size());
  locks.Park(token, std::move(carried));
  return count;
}

void FileOps::UnparkLocks(FileSession& s, Rq rq, Rs) {
  auto carried = std::static_pointer_cast<FileSession::Carried>(s.locks_->Unpark(rq.getCarry()));
  if (!carried) {
    // The target's restore failed after its claim: what it claimed is the source's again.
    std::lock_guard lock(s.owners_mutex_);
    s.claimed_.erase(rq.getCarry());
    return;
  }
  // The job goes on here: its own descriptions still hold its locks, and the parked
  // copies of them close (what the held table says is the parking client's again); what
  // it had carried here and not bound is claimed by this client again (homefs tags the
  // job's requests with this token from now on).
  auto kept = std::make_shared<FileSession::Carried>();
  for (auto& p : carried->posix) {
    if (p.from_claim) {
      s.locks_->Rekey(p.inode, {carried.get(), static_cast<uint64_t>(p.pid)},
                      {kept.get(), static_cast<uint64_t>(p.pid)});
      kept->posix.push_back(std::move(p));
    } else {
      s.locks_->Rekey(p.inode, {carried.get(), static_cast<uint64_t>(p.pid)}, {&s, p.owner});
      if (p.kept) p.kept->Describe(s.OwnerMeta(p.owner, p.inode, 0, p.access));
    }
  }
  for (auto& f : carried->flocks) {
    if (f.from_claim) kept->flocks.push_back(std::move(f));
  }
  std::lock_guard lock(s.owners_mutex_);
  s.claimed_[rq.getCarry()] = std::move(kept);
}

void FileOps::ClaimLocks(FileSession& s, Rq rq, Rs) {
  auto carried = std::static_pointer_cast<FileSession::Carried>(s.locks_->Unpark(rq.getCarry()));
  if (!carried) return;  // nothing parked: the job held no locks through homefs
  spdlog::info("file service: {} lock owners and {} flocks of a job that moved claimed",
               carried->posix.size(), carried->flocks.size());
  std::lock_guard lock(s.owners_mutex_);
  s.claimed_[rq.getCarry()] = std::move(carried);
}

}  // namespace homeward
