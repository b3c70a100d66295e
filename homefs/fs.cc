// The homefs operations: each builds a FileRequest with the caller's credentials, sends
// it without waiting, and answers the kernel when the home's reply arrives.
#include "fs.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/statvfs.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <future>
#include <memory>
#include <thread>
#include <vector>

#include <spdlog/spdlog.h>

#include "criu_acting.h"
#include "lock_holder.h"
#include "mounted.h"
#include "unpinned_thread.h"

namespace homeward {

namespace {

using Op = schema::FileOp;
constexpr int kFhGenerationShift = 48;
// A file opened while the home was silent is opened at the home only when it is read
// (StaleOpen): its handle holds this in place of a generation, and the local node id.
constexpr uint64_t kDeferred = 0xFFFF;
// The kernel retries an open refused with ESTALE at once (a lookup, then the open); a
// refusal older than this was given up on (the name vanished meanwhile).
constexpr auto kRetryWindow = std::chrono::seconds(1);
constexpr size_t kMaxRefusedNames = 1024;

bool IsDeferred(uint64_t fh) {
  return (fh >> kFhGenerationShift) == kDeferred;
}

timespec Ts(int64_t ns) {
  return timespec{static_cast<time_t>(ns / 1'000'000'000), static_cast<long>(ns % 1'000'000'000)};
}
int64_t Ns(const timespec& t) {
  return int64_t{t.tv_sec} * 1'000'000'000 + t.tv_nsec;
}

// Whether the kernel sent an interrupt for the request (the caller got a signal). The
// client asks only while the request is unanswered, so the request is still alive. A
// detached request (a write behind) has no caller left to interrupt it.
InterruptProbe InterruptedProbe(const Request& r) {
  fuse_req_t req = r.get();
  if (!req) return {};
  return [req] { return fuse_req_interrupted(req) != 0; };
}

std::string Bytes(capnp::Data::Reader data) {
  return std::string(reinterpret_cast<const char*>(data.begin()), data.size());
}

// When a cache kept for `seconds` (a mount's timeout option) from now runs out.
std::chrono::steady_clock::time_point SecondsFromNow(double seconds) {
  return std::chrono::steady_clock::now() +
         std::chrono::duration_cast<std::chrono::steady_clock::duration>(
             std::chrono::duration<double>(seconds));
}

}  // namespace

struct stat ToStat(schema::Attr::Reader a) {
  struct stat st {};
  st.st_ino = a.getIno();
  st.st_mode = a.getMode();
  st.st_nlink = a.getNlink();
  st.st_uid = a.getUid();
  st.st_gid = a.getGid();
  st.st_rdev = a.getRdev();
  st.st_size = a.getSize();
  st.st_blocks = a.getBlocks();
  st.st_blksize = a.getBlksize();
  st.st_atim = Ts(a.getAtimeNs());
  st.st_mtim = Ts(a.getMtimeNs());
  st.st_ctim = Ts(a.getCtimeNs());
  return st;
}

struct Fs::Prepared {
  capnp::MallocMessageBuilder message{1024};
  schema::FileRequest::Builder rq = message.initRoot<schema::FileRequest>();
  uint64_t generation = 0;
  // What the request names, in this mount's terms: bound to the home's ids of each
  // connection it is sent on (Rebind).
  fuse_ino_t ino = 0, ino2 = 0;
  uint64_t fh = 0;
  bool has_fh = false;
};

Fs::Fs(FileClient& client, FsOptions options, schema::Attr::Reader root)
    : client_(client),
      options_(options),
      root_(options.id_base | FUSE_ROOT_ID),
      next_ino_(options.id_base | 2),
      next_fh_(options.id_base | 1),
      next_lock_wait_(options.id_base | 1) {
  if (!options_.criu_acting_dir.empty()) {
    criu_acting_ = std::make_unique<CriuActingCache>(options_.criu_acting_dir);
  }
  behind_.BeforeWaiting([this] { client_.SendHeld(); });
  Inode& inode = inodes_[root_];
  inode.remote = 1;
  by_remote_[1] = root_;
  inode.lookups = 1;
  inode.key = {root.getDev(), root.getIno()};
  inode.attr = ToStat(root);
  inode.attr.st_ino = root_;
  inode.has_attr = true;
  by_key_[inode.key] = root_;
}

fuse_entry_param Fs::RootEntry() {
  std::lock_guard lock(mutex_);
  fuse_entry_param e{};
  e.ino = root_;
  e.attr = inodes_[root_].attr;
  // The kernel asks the home (getattr) for the attributes of any later stat.
  e.attr_timeout = 0;
  e.entry_timeout = options_.entry_timeout;
  return e;
}

bool Fs::Idle() {
  {
    std::lock_guard lock(mutex_);
    if (!handles_.empty()) return false;
  }
  {
    std::lock_guard lock(locks_mutex_);
    if (!lock_owners_.empty() || !claims_.empty() || !lock_waits_.empty()) return false;
  }
  return notices_.idle() && resends_.idle() && behind_.Idle();
}

bool Fs::MayAnswerFromCache(Request& r) {
  return fuse_req_ctx(r.get())->uid == 0;
}

std::unique_ptr<Fs::Prepared> Fs::Prepare(Request& r, Op op, bool behind) {
  if (op != Op::WRITE && !behind && !AwaitWrites(r)) return nullptr;
  auto p = std::make_unique<Prepared>();
  // Hard mount: waits for the home as long as it takes, unless the caller is interrupted.
  if (int err = client_.WaitConnected(&p->generation, InterruptedProbe(r))) {
    r.Err(err);
    return nullptr;
  }
  p->rq.setOp(op);
  const fuse_ctx* ctx = fuse_req_ctx(r.get());
  auto cred = p->rq.initCred();
  std::optional<FsIdentity> acting;
  if (ctx->uid == 0 && !options_.criu_acting_dir.empty()) {
    acting = criu_acting_->For(ctx->pid);  // criu, on a job's files
  }
  cred.setUid(acting ? acting->uid : ctx->uid);
  cred.setGid(acting ? acting->gid : ctx->gid);
  cred.setUmask(ctx->umask);  // set by the kernel for calls that create
  std::vector<gid_t> groups = acting ? acting->groups : Groups(r.get(), ctx->pid);
  if (!groups.empty()) {
    auto list = cred.initGroups(static_cast<unsigned>(groups.size()));
    for (size_t i = 0; i < groups.size(); ++i) list.set(static_cast<unsigned>(i), groups[i]);
  }
  return p;
}

bool Fs::AwaitWrites(Request& r) {
  bool interrupted = false;
  behind_.Drain([&] {
    if (!client_.Silent()) return false;
    if (MayAnswerFromCache(r)) return true;  // it goes on, to be answered from the cache
    interrupted = fuse_req_interrupted(r.get()) != 0;
    return interrupted;
  });
  if (interrupted) r.Err(EINTR);
  return !interrupted;
}

void Fs::DrainWrites(Request r) {
  if (fuse_req_ctx(r.get())->uid != 0) return r.Err(EPERM);
  bool drained = behind_.Drain([this] { return client_.Silent(); });
  if (!drained) return r.Err(ETIMEDOUT);
  r.Err(behind_.HasErrors() ? EIO : 0);
}

Fs::~Fs() {
  sends_.Stop();  // what waits is sent from here
  StopNotices();
  StopResending();
}

void Fs::StopResending() {
  resends_.Stop();  // their requests answer EIO as they go
}

void Fs::StopNotices() {
  notices_.Stop();  // DropCache's callers are answered: nothing cached to drop any more
}

void Fs::DropCache(fuse_ino_t ino, std::function<void()> then) {
  auto notice = std::make_shared<Notice>();
  notice->drop = ino;
  notice->then = std::move(then);
  if (session_ && notices_.Post([this, notice](bool stopping) {
        if (!stopping) Apply(*notice);
        if (notice->then) notice->then();
      })) {
    return;
  }
  if (notice->then) notice->then();
}

void Fs::StartNotices(fuse_session* session) {
  session_ = session;
  client_.OnNotice(
      [this](uint64_t node, uint64_t parent, const std::string& name, uint64_t generation) {
        ++notices_heard_;
        {
          // Before any lookup can be answered from what it changes.
          std::lock_guard lock(mutex_);
          uint64_t remote = node ? node : parent;
          if (auto it = by_remote_.find(remote); it != by_remote_.end()) {
            NotWholeLocked(it->second);
            XattrsUnknownLocked(it->second);
          }
          if (parent == 1 && !node) NotWholeLocked(root_);
        }
        auto notice = std::make_shared<Notice>(Notice{node, parent, name, generation, 0, {}});
        notices_.Post(
            [this, notice](bool stopping) {
              if (!stopping) Apply(*notice);
            },
            100000);
      });
}

void Fs::Apply(Notice& notice) {
  if (notice.drop) {
    {
      std::lock_guard lock(mutex_);
      auto it = inodes_.find(notice.drop);
      if (it != inodes_.end()) {
        it->second.pages_of.reset();
        it->second.fresh_until = {};
      }
    }
    fuse_lowlevel_notify_inval_inode(session_, notice.drop, 0, 0);  // pages and attributes
    return;
  }
  fuse_ino_t ino = 0;
  {
    std::lock_guard lock(mutex_);
    uint64_t remote = notice.node ? notice.node : notice.parent;
    auto it = by_remote_.find(remote);
    if (it != by_remote_.end()) {
      auto inode = inodes_.find(it->second);
      if (inode != inodes_.end() && inode->second.generation == notice.generation &&
          inode->second.remote == remote) {
        ino = it->second;
      }
    }
    if (notice.parent == 1 && !notice.node) ino = root_;
    if (auto inode = inodes_.find(ino); inode != inodes_.end()) inode->second.fresh_until = {};
  }
  if (ino == 0) return;
  // Errors (ENOENT: the kernel no longer caches it) need nothing done.
  if (notice.node) {
    fuse_lowlevel_notify_inval_inode(session_, ino, 0, 0);
  } else {
    fuse_lowlevel_notify_inval_entry(session_, ino, notice.name.c_str(), notice.name.size());
    fuse_lowlevel_notify_inval_inode(session_, ino, -1, 0);  // the directory's attributes
  }
}

std::vector<gid_t> Fs::Groups(fuse_req_t req, pid_t pid) {
  // Reading a process's groups costs a read of /proc/<pid>/status; a process asks many
  // times in a row, and groups rarely change, so they are kept for a second.
  auto now = std::chrono::steady_clock::now();
  {
    std::lock_guard lock(groups_mutex_);
    auto it = groups_.find(pid);
    if (it != groups_.end() && now - it->second.first < std::chrono::seconds(1)) {
      return it->second.second;
    }
  }
  gid_t list[256];
  int n = fuse_req_getgroups(req, 256, list);
  std::vector<gid_t> groups(list, list + std::clamp(n, 0, 256));  // beyond 256: not carried
  std::lock_guard lock(groups_mutex_);
  if (groups_.size() > 4096) groups_.clear();
  groups_[pid] = {now, groups};
  return groups;
}

std::optional<uint64_t> Fs::Remote(fuse_ino_t ino, uint64_t generation) {
  fuse_ino_t parent;
  std::string name;
  {
    std::lock_guard lock(mutex_);
    if (ino == root_) return 1;
    auto it = inodes_.find(ino);
    if (it == inodes_.end()) return std::nullopt;
    if (it->second.generation == generation) return it->second.remote;
    parent = it->second.parent;
    name = it->second.name;
  }
  // Found under an older connection: look it up again by its path.
  auto parent_remote = Remote(parent, generation);
  if (!parent_remote) return std::nullopt;
  capnp::MallocMessageBuilder message;
  auto rq = message.initRoot<schema::FileRequest>();
  rq.setOp(Op::LOOKUP);
  rq.setNode(*parent_remote);
  rq.setName(name);
  std::optional<IncomingMessage> reply;
  if (client_.Call(message, generation, reply) != 0) return std::nullopt;
  auto rs = reply->Root<schema::ServerMessage>().getResponse();
  if (rs.getError() != 0) return std::nullopt;
  if (Learn(rs.getEntry(), generation, parent, name, false) != ino) return std::nullopt;
  return rs.getEntry().getNode();
}

bool Fs::SetNode(Request& r, Prepared& p, fuse_ino_t ino) {
  p.ino = ino;
  auto remote = Remote(ino, p.generation);
  if (!remote) {
    int err = Gone(p.generation);
    // The connection broke meanwhile: a hard mount sends the request all the same, which
    // hands it back to be bound again and sent on the next connection (Resend).
    if (err == FileClient::kLost && client_.hard()) return true;
    r.Err(err == FileClient::kLost ? EIO : err);
    return false;
  }
  p.rq.setNode(*remote);
  return true;
}

bool Fs::SetFh(Request& r, Prepared& p, fuse_file_info* fi) {
  p.fh = fi->fh;
  p.has_fh = true;
  p.rq.setHasFh(true);
  uint64_t remote = 0;
  if (int err = RemoteFh(fi->fh, p.generation, &remote)) {
    if (err == FileClient::kLost && client_.hard()) return true;  // as in SetNode
    r.Err(err == FileClient::kLost ? EIO : err);
    return false;
  }
  p.rq.setFh(remote);
  return true;
}

int Fs::Gone(uint64_t generation) {
  // The connection broke meanwhile: try again on the next; else the object is not there.
  return client_.generation() != generation ? FileClient::kLost : ESTALE;
}

int Fs::Rebind(Prepared& p, uint64_t generation) {
  p.generation = generation;
  if (p.ino) {
    auto remote = Remote(p.ino, generation);
    if (!remote) return Gone(generation);
    p.rq.setNode(*remote);
  }
  if (p.ino2) {
    auto remote = Remote(p.ino2, generation);
    if (!remote) return Gone(generation);
    p.rq.setNode2(*remote);
  } else if (p.rq.getOp() == Op::OPEN) {
    p.rq.setNode2(0);  // the name an open checks was of the old connection: not checked
  }
  if (p.has_fh) {
    uint64_t remote = 0;
    if (int err = RemoteFh(p.fh, generation, &remote)) return err;
    p.rq.setFh(remote);
  }
  return 0;
}

uint64_t Fs::AddHandle(OpenHandle handle) {
  std::lock_guard lock(mutex_);
  uint64_t fh = next_fh_++;
  handles_[fh] = std::move(handle);
  return fh;
}

int Fs::RemoteFh(uint64_t fh, uint64_t generation, uint64_t* remote) {
  OpenHandle h;
  {
    std::lock_guard lock(mutex_);
    auto it = handles_.find(fh);
    if (it == handles_.end()) return EBADF;
    if (it->second.generation == generation) {
      *remote = it->second.remote;
      return 0;
    }
  }
  // Opened on a connection that broke (the home closed it with that session): opened
  // again, by the object's identity (found again by path, checked by (st_dev, st_ino)),
  // with its flags and its opener's credentials. One at a time, so that two requests on
  // the same handle do not open it twice.
  std::lock_guard reopening(reopen_mutex_);
  {
    std::lock_guard lock(mutex_);
    auto it = handles_.find(fh);
    if (it == handles_.end()) return EBADF;
    if (it->second.generation == generation) {
      *remote = it->second.remote;
      return 0;
    }
    h = it->second;
  }
  auto node = Remote(h.ino, generation);
  // An object no longer found where it was (unlinked while open, or replaced by another
  // file of that name) cannot be opened again: its handle answers ESTALE, as NFS does.
  if (!node) return Gone(generation);
  capnp::MallocMessageBuilder message(512);
  auto rq = message.initRoot<schema::FileRequest>();
  rq.setOp(h.dir ? Op::OPENDIR : Op::OPEN);
  rq.setNode(*node);
  rq.setFlags(h.flags);
  auto cred = rq.initCred();
  cred.setUid(h.uid);
  cred.setGid(h.gid);
  auto groups = cred.initGroups(static_cast<unsigned>(h.groups.size()));
  for (size_t i = 0; i < h.groups.size(); ++i) groups.set(static_cast<unsigned>(i), h.groups[i]);
  std::optional<IncomingMessage> reply;
  if (client_.Call(message, generation, reply) != 0) return Gone(generation);
  auto rs = reply->Root<schema::ServerMessage>().getResponse();
  if (rs.getError() != 0) return rs.getError();
  uint64_t opened = rs.getFh();
  bool released = false;
  {
    std::lock_guard lock(mutex_);
    auto it = handles_.find(fh);
    if (it == handles_.end()) {
      released = true;  // released meanwhile
    } else {
      it->second.remote = opened;
      it->second.generation = generation;
    }
  }
  if (released) {
    capnp::MallocMessageBuilder close(256);
    auto crq = close.initRoot<schema::FileRequest>();
    crq.setOp(h.dir ? Op::RELEASEDIR : Op::RELEASE);
    crq.setFh(opened);
    client_.Send(close, generation, [](int, IncomingMessage*) {});
    return EBADF;
  }
  spdlog::debug("homefs: handle {} opened again on connection {}", fh, generation);
  *remote = opened;
  return 0;
}

fuse_ino_t Fs::Learn(schema::Entry::Reader entry, uint64_t generation, fuse_ino_t parent,
                     const std::string& name, bool kernel) {
  std::pair<uint64_t, uint64_t> key{entry.getAttr().getDev(), entry.getAttr().getIno()};
  std::lock_guard lock(mutex_);
  fuse_ino_t ino;
  auto it = by_key_.find(key);
  if (it != by_key_.end()) {
    ino = it->second;
  } else {
    ino = next_ino_++;
    by_key_[key] = ino;
  }
  Inode& inode = inodes_[ino];
  inode.key = key;
  if (inode.generation == generation && inode.remote == entry.getNode()) {
    ++inode.remote_lookups;
  } else {
    // The home counted one lookup of this id; any count under an older id died with the
    // connection that made it.
    inode.remote = entry.getNode();
    inode.generation = generation;
    inode.remote_lookups = 1;
  }
  by_remote_[inode.remote] = ino;
  inode.attr = ToStat(entry.getAttr());
  inode.attr.st_ino = ino;
  inode.has_attr = true;
  if (ino != root_) {
    auto old = by_name_.find({inode.parent, inode.name});
    if (old != by_name_.end() && old->second == ino) {
      // Another name of the same object (a hard link): the old one is no longer known.
      if (old->first != std::pair{parent, name}) NotWholeLocked(inode.parent);
      by_name_.erase(old);
    }
    inode.parent = parent;
    inode.name = name;
    by_name_[{parent, name}] = ino;
  }
  if (kernel) ++inode.lookups;
  return ino;
}

void Fs::ForgetRemote(uint64_t remote, uint64_t count, uint64_t generation) {
  capnp::MallocMessageBuilder message(256);
  auto rq = message.initRoot<schema::FileRequest>();
  rq.setOp(Op::FORGET);
  rq.setNode(remote);
  rq.setSize(count);
  client_.Post(message, generation);
}

void Fs::UnmapLocked(fuse_ino_t ino, const Inode& inode) {
  // Each only while it leads here: the object may have a newer inode (a refused rmdir's).
  auto key_it = by_key_.find(inode.key);
  if (key_it != by_key_.end() && key_it->second == ino) by_key_.erase(key_it);
  auto remote_it = by_remote_.find(inode.remote);
  if (remote_it != by_remote_.end() && remote_it->second == ino) by_remote_.erase(remote_it);
}

void Fs::Forget(fuse_ino_t ino, uint64_t nlookup) {
  uint64_t remote = 0, count = 0, generation = 0;
  {
    std::lock_guard lock(mutex_);
    auto it = inodes_.find(ino);
    if (it == inodes_.end() || ino == root_) return;
    Inode& inode = it->second;
    inode.lookups -= std::min(inode.lookups, nlookup);
    if (inode.lookups > 0) return;
    remote = inode.remote;
    count = inode.remote_lookups;
    generation = inode.generation;
    UnmapLocked(ino, inode);
    {
      std::lock_guard locks(locks_mutex_);
      lock_owners_.erase(lock_owners_.lower_bound({ino, 0}),
                         lock_owners_.lower_bound({ino + 1, 0}));
    }
    auto name_it = by_name_.find({inode.parent, inode.name});
    if (name_it != by_name_.end() && name_it->second == ino) {
      by_name_.erase(name_it);
      NotWholeLocked(inode.parent);  // the name still exists, unknown here now
    }
    inodes_.erase(it);
  }
  ForgetRemote(remote, count, generation);
}

fuse_entry_param Fs::EntryParam(fuse_ino_t ino, schema::Attr::Reader attr) const {
  fuse_entry_param e{};
  e.ino = ino;
  e.attr = ToStat(attr);
  e.attr_timeout = options_.attr_timeout;
  e.entry_timeout = options_.entry_timeout;
  return e;
}

template <typename Ok>
void Fs::Call(Request r, std::unique_ptr<Prepared> p, Ok ok, std::function<void(Request&)> stale,
              std::function<void(int)> refused) {
  Issue(
      std::make_shared<Request>(std::move(r)), std::shared_ptr<Prepared>(std::move(p)),
      [ok, refused](Request& r, int err, IncomingMessage* message, uint64_t generation) {
        if (err != 0) return r.Err(err);
        auto rs = message->Root<schema::ServerMessage>().getResponse();
        if (rs.getError() != 0) {
          if (refused) refused(rs.getError());
          return r.Err(rs.getError());
        }
        ok(r, rs, generation);
      },
      std::move(stale));
}

void Fs::Issue(std::shared_ptr<Request> r, std::shared_ptr<Prepared> p, Handler handler,
               std::function<void(Request&)> stale) {
  uint64_t generation = p->generation;
  bool may_go_stale = static_cast<bool>(stale);
  if (may_go_stale && client_.Silent()) {  // not even sent
    if (uint64_t id = p->rq.getId()) client_.Abandon(id);
    return stale(*r);
  }
  auto interrupted = InterruptedProbe(*r);
  // Hard: a request whose connection breaks before its answer is handed back (kLost) and
  // sent again on the next connection (Resend); its message is kept for that.
  client_.Send(
      p->message, generation,
      [this, r, p, handler, generation, stale](int err, IncomingMessage* message) {
        if (err == FileClient::kLost) return Resend(r, p, handler, stale);
        if (err == ETIMEDOUT && !message && stale) return stale(*r);
        handler(*r, err, message, generation);
      },
      std::move(interrupted), may_go_stale, client_.hard());
}

void Fs::Resend(std::shared_ptr<Request> r, std::shared_ptr<Prepared> p, Handler handler,
                std::function<void(Request&)> stale) {
  // Not on the receiving thread (it must never wait): binding the request to the new
  // connection may look objects up and open files again, which waits for answers.
  auto job = [this, r, p, handler, stale] {
    uint64_t id = p->rq.getId();
    for (;;) {
      uint64_t generation;
      if (int err = client_.WaitConnected(&generation, InterruptedProbe(*r))) {
        client_.Abandon(id);
        return r->Err(err);
      }
      int err = Rebind(*p, generation);
      if (err == FileClient::kLost) continue;  // broken again: wait for the next
      if (err != 0) {
        client_.Abandon(id);
        return r->Err(err);
      }
      return Issue(r, p, handler, stale);
    }
  };
  Requeue(std::move(job));
}

void Fs::Requeue(std::function<void()> job) {
  // Unmounting: the request answers EIO as it goes.
  resends_.Post([job = std::move(job)](bool stopping) {
    if (!stopping) job();
  });
}

// While the home is silent (a cut link), a few questions about objects this client has
// seen are answered from what it last heard: attributes, lookups of known names, statfs.
// Everything else waits (a hard mount). Without them nothing on this node could even
// stat a file of the home -- CRIU, freezing a guest past the grace, included.
void Fs::RememberAttr(fuse_ino_t ino, const struct stat& attr) {
  std::lock_guard lock(mutex_);
  auto it = inodes_.find(ino);
  if (it == inodes_.end()) return;
  it->second.attr = attr;
  it->second.attr.st_ino = ino;
  it->second.has_attr = true;
}

std::optional<struct stat> Fs::CachedAttr(fuse_ino_t ino) {
  std::lock_guard lock(mutex_);
  auto it = inodes_.find(ino);
  if (it == inodes_.end() || !it->second.has_attr) return std::nullopt;
  return it->second.attr;
}

void Fs::Absent(Request& r) {
  // A negative entry: the kernel may remember the name is absent.
  fuse_entry_param e{};
  e.entry_timeout = options_.entry_timeout;
  r.Entry(e);
}

bool Fs::KnownAbsent(fuse_ino_t parent, const std::string& name) {
  uint64_t generation = client_.generation();  // asked before taking our lock
  std::lock_guard lock(mutex_);
  auto it = inodes_.find(parent);
  if (it == inodes_.end() || std::chrono::steady_clock::now() >= it->second.whole_until) {
    return false;
  }
  if (it->second.generation != generation) {  // notices may have been lost
    it->second.whole_until = {};
    return false;
  }
  return by_name_.count({parent, name}) == 0;
}

bool Fs::KnownXattrAbsent(fuse_ino_t ino, size_t kind) {
  uint64_t generation = client_.generation();  // asked before taking our lock
  std::lock_guard lock(mutex_);
  auto it = inodes_.find(ino);
  return it != inodes_.end() && it->second.generation == generation &&
         std::chrono::steady_clock::now() < it->second.xattr_absent_until[kind];
}

void Fs::XattrAbsent(fuse_ino_t ino, size_t kind, uint64_t generation, uint64_t heard,
                     uint64_t xattrs_set) {
  if (notices_heard_.load() != heard || xattrs_set_.load() != xattrs_set) return;
  std::lock_guard lock(mutex_);
  auto it = inodes_.find(ino);
  if (it == inodes_.end() || it->second.generation != generation) return;
  it->second.xattr_absent_until[kind] = SecondsFromNow(options_.attr_timeout);
}

void Fs::NotWholeLocked(fuse_ino_t dir) {
  if (auto it = inodes_.find(dir); it != inodes_.end()) it->second.whole_until = {};
}

void Fs::XattrsUnknownLocked(fuse_ino_t ino) {
  if (auto it = inodes_.find(ino); it != inodes_.end()) it->second.xattr_absent_until = {};
}

void Fs::DirChanged(fuse_ino_t dir, bool has_attr, schema::Attr::Reader attr, uint64_t heard) {
  if (!has_attr || notices_heard_.load() != heard) return;
  std::lock_guard lock(mutex_);
  auto it = inodes_.find(dir);
  if (it == inodes_.end()) return;
  it->second.attr = ToStat(attr);
  it->second.attr.st_ino = dir;
  it->second.has_attr = true;
  it->second.fresh_until = SecondsFromNow(options_.attr_timeout);
}

std::optional<std::pair<struct stat, double>> Fs::FreshAttr(fuse_ino_t ino) {
  std::lock_guard lock(mutex_);
  auto it = inodes_.find(ino);
  if (it == inodes_.end()) return std::nullopt;
  std::chrono::duration<double> left = it->second.fresh_until - std::chrono::steady_clock::now();
  if (left.count() <= 0) return std::nullopt;
  return std::pair{it->second.attr, left.count()};
}

void Fs::ForgetName(fuse_ino_t parent, const std::string& name) {
  std::lock_guard lock(mutex_);
  by_name_.erase({parent, name});
}

Fs::OpenHandle Fs::HandleOf(Prepared& p, fuse_ino_t ino, int flags, bool dir) {
  OpenHandle h;
  h.ino = ino;
  // Opened again as it was, but never created, truncated or made exclusive a second time.
  h.flags = static_cast<uint32_t>(flags & ~(O_CREAT | O_EXCL | O_TRUNC));
  h.dir = dir;
  auto cred = p.rq.getCred();
  h.uid = cred.getUid();
  h.gid = cred.getGid();
  for (uint32_t g : cred.getGroups()) h.groups.push_back(g);
  return h;
}

// ---------------------------------------------------------------------------------------

void Fs::Init(fuse_conn_info* conn) {  // static: a HomeTree asks the same
  conn->max_write = 1 << 20;
  conn->max_readahead = 4 << 20;  // with the bdi's read_ahead_kb (mosmount.cc)
  // Every directory listing carries attributes: one round trip instead of one per name.
  if (conn->capable & FUSE_CAP_READDIRPLUS) conn->want |= FUSE_CAP_READDIRPLUS;
  conn->want &= ~FUSE_CAP_READDIRPLUS_AUTO;
  if (conn->capable & FUSE_CAP_ATOMIC_O_TRUNC) conn->want |= FUSE_CAP_ATOMIC_O_TRUNC;
  if (conn->capable & FUSE_CAP_PARALLEL_DIROPS) conn->want |= FUSE_CAP_PARALLEL_DIROPS;
  // No writeback cache: with it the kernel would hold writes back after close and decide
  // sizes and mtimes itself, which breaks close-to-open consistency between nodes.
  conn->want &= ~FUSE_CAP_WRITEBACK_CACHE;
  // The kernel checks permissions (default_permissions) on the home's modes and ACLs, also
  // on names it has cached; the umask is applied at the home, which knows whether a
  // default ACL replaces it.
  if (conn->capable & FUSE_CAP_POSIX_ACL) conn->want |= FUSE_CAP_POSIX_ACL;
  if (conn->capable & FUSE_CAP_DONT_MASK) conn->want |= FUSE_CAP_DONT_MASK;
  // Advisory locks are the home's: POSIX and OFD locks (setlk, getlk) and flock go there.
  if (conn->capable & FUSE_CAP_POSIX_LOCKS) conn->want |= FUSE_CAP_POSIX_LOCKS;
  if (conn->capable & FUSE_CAP_FLOCK_LOCKS) conn->want |= FUSE_CAP_FLOCK_LOCKS;
}

void Fs::Lookup(Request r, fuse_ino_t parent, const std::string& name) {
  if (KnownAbsent(parent, name)) return Absent(r);
  auto p = Prepare(r, Op::LOOKUP);
  if (!p || !SetNode(r, *p, parent)) return;
  p->rq.setName(name);
  bool known;
  {
    std::lock_guard lock(mutex_);
    known = by_name_.count({parent, name}) > 0;
  }
  std::function<void(Request&)> stale;
  if (known && MayAnswerFromCache(r)) {
    stale = [this, parent, name](Request& r) { StaleLookup(r, parent, name); };
  }
  Issue(
      std::make_shared<Request>(std::move(r)), std::shared_ptr<Prepared>(std::move(p)),
      [this, parent, name](Request& r, int err, IncomingMessage* message, uint64_t generation) {
        Request* shared = &r;
        if (err != 0) return shared->Err(err);
        auto rs = message->Root<schema::ServerMessage>().getResponse();
        if (rs.getError() == ENOENT) return Absent(*shared);
        if (rs.getError() != 0) return shared->Err(rs.getError());
        fuse_ino_t ino = Learn(rs.getEntry(), generation, parent, name, true);
        shared->Entry(EntryParam(ino, rs.getEntry().getAttr()));
      },
      std::move(stale));
}

void Fs::StaleLookup(Request& r, fuse_ino_t parent, const std::string& name) {
  fuse_entry_param e{};
  {
    std::lock_guard lock(mutex_);
    auto it = by_name_.find({parent, name});
    auto inode = it == by_name_.end() ? inodes_.end() : inodes_.find(it->second);
    if (inode == inodes_.end() || !inode->second.has_attr) return r.Err(EIO);  // forgotten
    ++inode->second.lookups;  // the kernel will forget it
    e.ino = inode->first;
    e.attr = inode->second.attr;
  }
  e.attr_timeout = 1.0;
  e.entry_timeout = 1.0;
  r.Entry(e);
}

void Fs::Getattr(Request r, fuse_ino_t ino, fuse_file_info* fi) {
  if (auto fresh = FreshAttr(ino)) return r.Attr(fresh->first, fresh->second);
  auto p = Prepare(r, Op::GETATTR);
  if (!p || !SetNode(r, *p, ino)) return;
  (void)fi;  // the node's own descriptor answers as well as the open file's
  std::function<void(Request&)> stale;
  if (auto cached = CachedAttr(ino); cached && MayAnswerFromCache(r)) {
    stale = [attr = *cached](Request& r) { r.Attr(attr, 1.0); };
  }
  Call(
      std::move(r), std::move(p),
      [this, ino](Request& r, auto rs, uint64_t) {
        struct stat st = ToStat(rs.getEntry().getAttr());
        RememberAttr(ino, st);
        r.Attr(st, options_.attr_timeout);
      },
      std::move(stale));
}

void Fs::Setattr(Request r, fuse_ino_t ino, const struct stat& attr, int to_set,
                 fuse_file_info* fi) {
  auto p = Prepare(r, Op::SETATTR);
  if (!p || !SetNode(r, *p, ino)) return;
  if (fi && !IsDeferred(fi->fh) && !SetFh(r, *p, fi)) return;
  p->rq.setValid(static_cast<uint32_t>(to_set));
  p->rq.setMode(attr.st_mode);
  p->rq.setUid(attr.st_uid);
  p->rq.setGid(attr.st_gid);
  p->rq.setSize(static_cast<uint64_t>(attr.st_size));
  p->rq.setAtimeNs(Ns(attr.st_atim));
  p->rq.setMtimeNs(Ns(attr.st_mtim));
  Call(std::move(r), std::move(p), [this, ino](Request& r, auto rs, uint64_t) {
    struct stat st = ToStat(rs.getEntry().getAttr());
    RememberAttr(ino, st);
    r.Attr(st, options_.attr_timeout);
  });
}

void Fs::Readlink(Request r, fuse_ino_t ino) {
  auto p = Prepare(r, Op::READLINK);
  if (!p || !SetNode(r, *p, ino)) return;
  Call(std::move(r), std::move(p),
       [](Request& r, auto rs, uint64_t) { r.Readlink(Bytes(rs.getData())); });
}

void Fs::MakeNode(Request r, Op op, fuse_ino_t parent, const std::string& name, mode_t mode,
                  dev_t rdev, const std::string& target) {
  auto p = Prepare(r, op);
  if (!p || !SetNode(r, *p, parent)) return;
  p->rq.setName(name);
  p->rq.setMode(mode);
  p->rq.setRdev(rdev);
  if (op == Op::SYMLINK) {
    p->rq.setData(kj::arrayPtr(reinterpret_cast<const capnp::byte*>(target.data()), target.size()));
  }
  uint64_t heard = notices_heard_.load();
  Call(std::move(r), std::move(p),
       [this, op, parent, name, heard](Request& r, auto rs, uint64_t gen) {
    fuse_ino_t ino = Learn(rs.getEntry(), gen, parent, name, true);
    DirChanged(parent, rs.hasDirAttr(), rs.getDirAttr(), heard);
    if (op == Op::MKDIR) {
      // Empty as made, and watched by the home from its answer on: until a notice says
      // otherwise, its names are the ones made here. For as long as a negative entry.
      std::lock_guard lock(mutex_);
      auto it = inodes_.find(ino);
      if (it != inodes_.end() && it->second.generation == gen && notices_heard_.load() == heard) {
        it->second.whole_until = SecondsFromNow(options_.entry_timeout);
      }
    }
    r.Entry(EntryParam(ino, rs.getEntry().getAttr()));
  });
}

void Fs::Remove(Request r, Op op, fuse_ino_t parent, const std::string& name) {
  bool behind = RemovesBehind(op, parent, name);
  auto p = Prepare(r, op, behind);
  if (!p || !SetNode(r, *p, parent)) return;
  p->rq.setName(name);
  uint64_t heard = notices_heard_.load();
  if (behind) return RemoveBehind(std::move(r), std::move(p), parent, name, heard);
  Call(std::move(r), std::move(p), [this, parent, name, heard](Request& r, auto rs, uint64_t) {
    ForgetName(parent, name);
    DirChanged(parent, rs.hasDirAttr(), rs.getDirAttr(), heard);
    r.Err(0);
  });
}

bool Fs::RemovesBehind(Op op, fuse_ino_t parent, const std::string& name) {
  if (!options_.write_behind) return false;
  uint64_t generation = client_.generation();  // asked before taking our lock
  auto now = std::chrono::steady_clock::now();
  std::lock_guard lock(mutex_);
  auto it = inodes_.find(parent);
  auto named = by_name_.find({parent, name});
  if (it == inodes_.end() || it->second.generation != generation ||
      now >= it->second.fresh_until || named == by_name_.end()) {
    return false;
  }
  if (op == Op::UNLINK) return true;
  // A directory goes behind only when it is known empty: every name in it is known here
  // (whole) and none is left, so the home's only answer would be a failure of its own.
  auto dir = inodes_.find(named->second);
  if (dir == inodes_.end() || dir->second.generation != generation ||
      now >= dir->second.whole_until) {
    return false;
  }
  auto first = by_name_.lower_bound({named->second, std::string()});
  return first == by_name_.end() || first->first.first != named->second;
}

void Fs::RemoveBehind(Request r, std::unique_ptr<Prepared> p, fuse_ino_t parent,
                      const std::string& name, uint64_t heard) {
  // As a write behind: after the writes a broken connection handed back, and counted out
  // until the home answers. Not in write_order_: a removal by name and a write through an
  // open file do the same in either order (only a name made again could tell, and a
  // create waits for every removal behind).
  auto given_up = [&] { return client_.Silent() && fuse_req_interrupted(r.get()) != 0; };
  if (!resends_.WaitIdle(given_up, WritesBehind::kPoll)) return r.Err(EINTR);
  p->rq.setBehind(true);
  // Its refusal is told by the directory's fsync (RemovalAnswered); one dropped unanswered
  // (at unmount) leaves no error for a move's drain to find.
  auto ticket = behind_.Start(kRemovalsHandle, 0, given_up, 0);
  if (!ticket) return r.Err(EINTR);
  fuse_ino_t removed_dir = 0;  // an rmdir's directory
  {
    std::lock_guard lock(mutex_);
    auto named = by_name_.find({parent, name});
    if (named != by_name_.end()) {
      if (p->rq.getOp() == Op::RMDIR) removed_dir = named->second;
      by_name_.erase(named);
    }
    if (auto it = inodes_.find(parent); it != inodes_.end()) {
      // The kernel asks for the directory's attributes next: changed now, as at the home.
      ++it->second.removals_behind;
      timespec now;
      ::clock_gettime(CLOCK_REALTIME, &now);
      it->second.attr.st_mtim = it->second.attr.st_ctim = now;
    }
  }
  // Sent before the kernel hears: its forget of the file then follows the unlink.
  Issue(std::make_shared<Request>(Request::Detached()), std::shared_ptr<Prepared>(std::move(p)),
        [this, ticket, parent, name, removed_dir, heard](Request&, int err,
                                                         IncomingMessage* message, uint64_t) {
          if (err == 0) {
            auto rs = message->Root<schema::ServerMessage>().getResponse();
            err = rs.getError();
            if (err == 0) DirChanged(parent, rs.hasDirAttr(), rs.getDirAttr(), heard);
          }
          RemovalAnswered(parent, name, removed_dir, err);
        },
        {});
  r.Err(0);
}

void Fs::RemovalAnswered(fuse_ino_t parent, const std::string& name, fuse_ino_t removed_dir,
                         int err) {
  // ENOENT: another removed it first; it is gone, as the caller was told.
  bool refused = err != 0 && err != ENOENT;
  bool last;
  {
    std::lock_guard lock(mutex_);
    auto it = inodes_.find(parent);
    last = it != inodes_.end() && it->second.removals_behind > 0 &&
           --it->second.removals_behind == 0;
    if (refused) {
      if (it != inodes_.end()) {
        it->second.fresh_until = {};
        it->second.whole_until = {};
      }
      removal_errors_.try_emplace(parent, err);
      // The kernel marked the directory dead when it was told it was gone, and keeps it so
      // while any process holds it (a working directory, an open descriptor): found
      // again, the name gets an inode of its own.
      if (auto dir = inodes_.find(removed_dir); removed_dir != 0 && dir != inodes_.end()) {
        UnmapLocked(removed_dir, dir->second);
      }
    }
  }
  if (!refused) {
    // The kernel keeps the times it was given while removals were out: it takes the
    // home's own once the last is done.
    if (last) fuse_lowlevel_notify_inval_inode(session_, parent, -1, 0);
    return;
  }
  spdlog::warn("homefs: the home refused to remove {} after its caller was told it was: {}",
               name, std::strerror(err));
  // The kernel dropped the name: it looks it up again, and finds what the home still holds.
  notices_.Post([this, parent, name](bool stopping) {
    if (stopping) return;
    fuse_lowlevel_notify_inval_entry(session_, parent, name.c_str(), name.size());
    fuse_lowlevel_notify_inval_inode(session_, parent, -1, 0);
  });
}

int Fs::TakeRemovalError(uint64_t fh) {
  std::lock_guard lock(mutex_);
  auto handle = handles_.find(fh);
  if (handle == handles_.end() || !handle->second.dir) return 0;
  auto it = removal_errors_.find(handle->second.ino);
  if (it == removal_errors_.end()) return 0;
  int err = it->second;
  removal_errors_.erase(it);
  return err;
}

void Fs::Rename(Request r, fuse_ino_t parent, const std::string& name, fuse_ino_t newparent,
                const std::string& newname, unsigned flags) {
  auto p = Prepare(r, Op::RENAME);
  if (!p || !SetNode(r, *p, parent)) return;
  p->ino2 = newparent;
  auto remote2 = Remote(newparent, p->generation);
  if (!remote2 && !(client_.hard() && Gone(p->generation) == FileClient::kLost)) {
    return r.Err(ESTALE);
  }
  if (!remote2) remote2 = 0;  // bound again when sent again (as in SetNode)
  p->rq.setName(name);
  p->rq.setNode2(*remote2);
  p->rq.setName2(newname);
  p->rq.setFlags(flags);
  uint64_t heard = notices_heard_.load();
  Call(std::move(r), std::move(p),
       [this, parent, name, newparent, newname, flags, heard](Request& r, auto rs, uint64_t) {
         DirChanged(parent, rs.hasDirAttr(), rs.getDirAttr(), heard);
         if (newparent != parent) DirChanged(newparent, rs.hasDir2Attr(), rs.getDir2Attr(), heard);
         std::lock_guard lock(mutex_);
         auto moved = by_name_.find({parent, name});
         fuse_ino_t ino = moved == by_name_.end() ? 0 : moved->second;
         by_name_.erase({parent, name});
         by_name_.erase({newparent, newname});
         // An object unknown here took the new name, or the two names swapped objects:
         // not every name of the directories is known any more.
         if (ino == 0 || (flags & RENAME_EXCHANGE)) {
           NotWholeLocked(newparent);
           NotWholeLocked(parent);
         }
         auto inode = inodes_.find(ino);
         if (!(flags & RENAME_EXCHANGE) && inode != inodes_.end()) {
           // Its new name: what an open checks at the home (FileOps::Open).
           inode->second.parent = newparent;
           inode->second.name = newname;
           by_name_[{newparent, newname}] = ino;
         }
         r.Err(0);
       });
}

void Fs::Link(Request r, fuse_ino_t ino, fuse_ino_t newparent, const std::string& newname) {
  auto p = Prepare(r, Op::LINK);
  if (!p || !SetNode(r, *p, ino)) return;
  p->ino2 = newparent;
  auto remote2 = Remote(newparent, p->generation);
  if (!remote2 && !(client_.hard() && Gone(p->generation) == FileClient::kLost)) {
    return r.Err(ESTALE);
  }
  if (!remote2) remote2 = 0;  // bound again when sent again (as in SetNode)
  p->rq.setNode2(*remote2);
  p->rq.setName2(newname);
  uint64_t heard = notices_heard_.load();
  Call(std::move(r), std::move(p),
       [this, newparent, newname, heard](Request& r, auto rs, uint64_t gen) {
    fuse_ino_t ino = Learn(rs.getEntry(), gen, newparent, newname, true);
    DirChanged(newparent, rs.hasDirAttr(), rs.getDirAttr(), heard);
    r.Entry(EntryParam(ino, rs.getEntry().getAttr()));
  });
}

void Fs::Opened(fuse_ino_t ino, schema::FileResponse::Reader rs, fuse_file_info& fi) {
  // A writer's O_APPEND goes to the home write by write (FileOps::Write). Its data stays
  // out of this node's page cache: the kernel would put it at its own idea of the end of
  // the file, which is stale as soon as anyone else appends.
  if (fi.flags & O_APPEND) fi.direct_io = 1;
  fi.keep_cache = 0;
  if (!rs.hasEntry()) return;  // a home that does not say: drop, as before
  auto attr = rs.getEntry().getAttr();
  std::array<int64_t, 3> now{attr.getSize(), attr.getMtimeNs(), attr.getCtimeNs()};
  bool attrs_changed;
  {
    std::lock_guard lock(mutex_);
    auto it = inodes_.find(ino);
    if (it == inodes_.end()) return;
    Inode& inode = it->second;
    inode.refused_stale = false;
    // Close-to-open (as NFS promises): the pages stay only when the file is as it was
    // when they were last dropped; any change since, by anyone, changed its ctime.
    fi.keep_cache = inode.pages_of == now;
    inode.pages_of = now;
    attrs_changed = !inode.has_attr || inode.attr.st_size != now[0] ||
                    Ns(inode.attr.st_mtim) != now[1] || Ns(inode.attr.st_ctim) != now[2];
    inode.attr = ToStat(attr);
    inode.attr.st_ino = ino;
    inode.has_attr = true;
  }
  // The kernel trusts the attributes it holds for attr_timeout, and reads no further
  // than the size among them: a reader must see the size the writer closed with. Only
  // attributes (offset -1) are invalidated, which takes no page lock, so the receiving
  // thread may do it, before the open is answered.
  if (attrs_changed && session_) fuse_lowlevel_notify_inval_inode(session_, ino, -1, 0);
}

void Fs::Open(Request r, fuse_ino_t ino, fuse_file_info* fi, bool dir) {
  auto p = Prepare(r, dir ? Op::OPENDIR : Op::OPEN);
  if (!p || !SetNode(r, *p, ino)) return;
  p->rq.setFlags(static_cast<uint32_t>(fi->flags));
  std::optional<std::pair<fuse_ino_t, std::string>> checked;  // the name sent to check
  if (!dir) {
    // The name this node knows the file by, for the home to check that it still names
    // this file (FileOps::Open in the file service: ESTALE, and the kernel looks the
    // path up again and opens what it found). The kernel's retry is not checked: it
    // opens either this object again, reached without that name (a reopen through
    // /proc of a removed file), or the object its lookup found under the name just now,
    // as fresh as a check; and a second ESTALE, under a loop of renames on another node,
    // would reach the caller.
    std::lock_guard lock(mutex_);
    auto it = inodes_.find(ino);
    if (it != inodes_.end() && it->second.parent != 0) {
      Inode& inode = it->second;
      bool retry = inode.refused_stale;
      inode.refused_stale = false;
      if (auto refused = refused_names_.find({inode.parent, inode.name});
          refused != refused_names_.end()) {
        retry = retry || std::chrono::steady_clock::now() - refused->second < kRetryWindow;
        refused_names_.erase(refused);
      }
      uint64_t parent_remote = 0;
      if (inode.parent == root_) {
        parent_remote = 1;
      } else if (auto parent = inodes_.find(inode.parent);
                 parent != inodes_.end() && parent->second.generation == p->generation) {
        parent_remote = parent->second.remote;
      }
      if (!retry && parent_remote != 0) {
        p->rq.setNode2(parent_remote);
        p->rq.setName2(inode.name);
        inode.refused_stale = true;  // until the home answers the open (Opened)
        checked = {inode.parent, inode.name};
      }
    }
  }
  fuse_file_info copy = *fi;
  // While the home is silent, root (the node's own CRIU, dumping a guest past the grace:
  // it opens every file the job maps) may open a known file read-only without the home:
  // the kernel's cached pages are kept and a read opens it at the home when it comes.
  std::function<void(Request&)> stale;
  if (!dir && MayAnswerFromCache(r) && (fi->flags & O_ACCMODE) == O_RDONLY &&
      !(fi->flags & (O_TRUNC | O_CREAT)) && CachedAttr(ino)) {
    stale = [copy, ino](Request& r) {
      fuse_file_info fi = copy;
      fi.fh = (kDeferred << kFhGenerationShift) | ino;
      fi.keep_cache = 1;
      r.Open(fi);
    };
  }
  OpenHandle handle = HandleOf(*p, ino, copy.flags, dir);
  if (!dir && TagCarry(r.get(), p->rq)) handle.flocker = fuse_req_ctx(r.get())->pid;
  Call(
      std::move(r), std::move(p),
      [this, copy, handle, ino, dir](Request& r, auto rs, uint64_t gen) {
        fuse_file_info fi = copy;
        OpenHandle h = handle;
        h.remote = rs.getFh();
        h.generation = gen;
        fi.fh = AddHandle(std::move(h));
        fi.keep_cache = 0;
        if (!dir) Opened(ino, rs, fi);
        r.Open(fi);
      },
      std::move(stale), [this, checked](int err) {
        if (err != ESTALE || !checked) return;
        std::lock_guard lock(mutex_);
        if (refused_names_.size() >= kMaxRefusedNames) {
          auto now = std::chrono::steady_clock::now();
          std::erase_if(refused_names_, [&](auto& e) { return now - e.second >= kRetryWindow; });
        }
        refused_names_[*checked] = std::chrono::steady_clock::now();
      });
}

void Fs::ReadDeferred(Request r, fuse_ino_t ino, size_t size, off_t off) {
  // Opened at the home now (waiting for it, as every call does), read, and closed.
  auto p = Prepare(r, Op::OPEN);
  if (!p || !SetNode(r, *p, ino)) return;
  p->rq.setFlags(O_RDONLY);
  std::optional<IncomingMessage> reply;
  if (int err = client_.Call(p->message, p->generation, reply)) return r.Err(err);
  auto opened = reply->Root<schema::ServerMessage>().getResponse();
  if (opened.getError() != 0) return r.Err(opened.getError());
  uint64_t fh = opened.getFh();
  uint64_t generation = p->generation;
  auto q = Prepare(r, Op::READ);
  if (!q) return;
  q->generation = generation;  // the handle is this connection's
  q->rq.setFh(fh);
  q->rq.setHasFh(true);
  q->rq.setOffset(static_cast<uint64_t>(off));
  q->rq.setSize(size);
  auto release = [this, fh, generation] {
    capnp::MallocMessageBuilder message(256);
    auto rq = message.initRoot<schema::FileRequest>();
    rq.setOp(Op::RELEASE);
    rq.setFh(fh);
    client_.Send(message, generation, [](int, IncomingMessage*) {});
  };
  auto shared = std::make_shared<Request>(std::move(r));
  client_.Send(q->message, generation, [shared, release](int err, IncomingMessage* message) {
    release();
    if (err != 0) return shared->Err(err);
    auto rs = message->Root<schema::ServerMessage>().getResponse();
    if (rs.getError() != 0) return shared->Err(rs.getError());
    auto data = rs.getData();
    shared->Buf(data.begin(), data.size());
  });
}

void Fs::Create(Request r, fuse_ino_t parent, const std::string& name, mode_t mode,
                fuse_file_info* fi) {
  auto p = Prepare(r, Op::CREATE);
  if (!p || !SetNode(r, *p, parent)) return;
  p->rq.setName(name);
  p->rq.setMode(mode);
  p->rq.setFlags(static_cast<uint32_t>(fi->flags));
  fuse_file_info copy = *fi;
  OpenHandle handle = HandleOf(*p, 0, copy.flags, false);
  uint64_t heard = notices_heard_.load();
  Call(std::move(r), std::move(p), [this, parent, name, copy, handle, heard](Request& r, auto rs,
                                                                             uint64_t gen) {
    fuse_ino_t ino = Learn(rs.getEntry(), gen, parent, name, true);
    DirChanged(parent, rs.hasDirAttr(), rs.getDirAttr(), heard);
    fuse_file_info fi = copy;
    OpenHandle h = handle;
    h.ino = ino;
    h.remote = rs.getFh();
    h.generation = gen;
    fi.fh = AddHandle(std::move(h));
    Opened(ino, rs, fi);  // the file may have existed (O_CREAT without O_EXCL)
    r.Create(EntryParam(ino, rs.getEntry().getAttr()), fi);
  });
}

void Fs::Read(Request r, size_t size, off_t off, fuse_file_info* fi) {
  if (IsDeferred(fi->fh)) {
    return ReadDeferred(std::move(r), fi->fh & ((1ull << kFhGenerationShift) - 1), size, off);
  }
  auto p = Prepare(r, Op::READ);
  if (!p || !SetFh(r, *p, fi)) return;
  p->rq.setOffset(static_cast<uint64_t>(off));
  p->rq.setSize(size);
  Call(std::move(r), std::move(p), [](Request& r, auto rs, uint64_t) {
    auto data = rs.getData();
    r.Buf(data.begin(), data.size());
  });
}

void Fs::Write(Request r, const char* buf, size_t size, off_t off, fuse_file_info* fi) {
  // An earlier write behind on this handle failed at the home: this one says so.
  if (int err = behind_.TakeError(fi->fh)) return r.Err(err);
  auto p = Prepare(r, Op::WRITE);
  if (!p || !SetFh(r, *p, fi)) return;
  p->rq.setOffset(static_cast<uint64_t>(off));
  // The file's flags as they are at this write (fcntl may have changed them since the
  // open); the kernel's writeback of mmap pages (writepage) is positional whatever they
  // are.
  if (!fi->writepage && (fi->flags & O_APPEND)) p->rq.setFlags(O_APPEND);
  // Not for O_SYNC and O_DSYNC files, whose writes are durable when they return.
  if (options_.write_behind && !(fi->flags & O_DSYNC)) {
    p->rq.setData(capnp::Data::Reader(reinterpret_cast<const capnp::byte*>(buf), size));
    return WriteBehind(std::move(r), std::move(p), size, fi->fh);
  }
  // Sent in step (O_DSYNC, or writes behind off): after the writes behind, as any request.
  if (!AwaitWrites(r)) return;
  // The kernel's buffer stays valid until Send returns (it is written out in Send), so
  // the message refers to it rather than copying up to 1 MiB.
  // Cap'n Proto wants such a segment word-aligned and whole words long (and not empty).
  capnp::Data::Reader data(reinterpret_cast<const capnp::byte*>(buf), size);
  // A hard mount keeps the request to send it again if its connection breaks, after the
  // kernel's buffer is gone: then the data is copied.
  if (!client_.hard() && size > 0 && size % 8 == 0 && reinterpret_cast<uintptr_t>(buf) % 8 == 0) {
    p->rq.adoptData(p->message.getOrphanage().referenceExternalData(data));
  } else {
    p->rq.setData(data);
  }
  Call(std::move(r), std::move(p), [](Request& r, auto rs, uint64_t) { r.Write(rs.getSize()); });
}

void Fs::WriteBehind(Request r, std::unique_ptr<Prepared> p, size_t size, uint64_t fh) {
  // Writes a broken connection handed back are sent again first, in order, on the
  // resending thread: a new one waits for them, or it could land before them.
  // Its caller may give up while the home is silent, as for any call (EINTR).
  auto given_up = [&] { return client_.Silent() && fuse_req_interrupted(r.get()) != 0; };
  if (!resends_.WaitIdle(given_up, WritesBehind::kPoll)) return r.Err(EINTR);
  // Writes go out in the order the kernel was answered (the home runs a connection's
  // writes one after another, so a rewrite of a range or an append lands after the one
  // before it), and the kernel is answered before this one is sealed and sent: the writer
  // fills its next write meanwhile. Every other request waits for the ticket, so it comes
  // after; a broken connection sends the write again like any request.
  std::unique_lock order(write_order_);
  auto ticket = behind_.Start(fh, size, given_up);
  if (!ticket) return r.Err(EINTR);
  p->rq.setBehind(true);
  r.Write(size);
  auto send = [this, p = std::shared_ptr<Prepared>(std::move(p)), ticket, size](bool) {
    Issue(std::make_shared<Request>(Request::Detached()), p,
          [ticket, size](Request&, int err, IncomingMessage* message, uint64_t) {
            if (err == 0) {
              auto rs = message->Root<schema::ServerMessage>().getResponse();
              err = rs.getError();
              if (err == 0 && rs.getSize() < size) err = ENOSPC;  // a short write: the disk is full
            }
            ticket->Finish(err);
          },
          {});
  };
  // A big write is sealed and sent by a thread of its own, so that the writer's CPU (where
  // its request was taken) fills the next one meanwhile and another CPU encrypts and sends;
  // a small one costs less to send than to hand over. One after a write handed over is
  // handed over too: they go out in order.
  if ((size >= kSendApart || !sends_.idle()) && sends_.Post(send)) return;
  send(false);
}

void Fs::Simple(Request r, Op op, fuse_file_info* fi, uint32_t flags) {
  if (IsDeferred(fi->fh)) return r.Err(0);  // read-only, never opened at the home
  auto p = Prepare(r, op);
  if (!p) return;
  // A write behind on this handle failed: its fsync says so (the writes are at the home).
  if (op == Op::FSYNC) {
    if (int err = behind_.TakeError(fi->fh)) return r.Err(err);
    if (int err = TakeRemovalError(fi->fh)) return r.Err(err);
  }
  if (!SetFh(r, *p, fi)) return;
  p->rq.setFlags(flags);
  Call(std::move(r), std::move(p), [](Request& r, auto, uint64_t) { r.Err(0); });
}

// A file that holds locks, opened on a connection that broke: the home's daemon restarted,
// and its lock keeper held the locks for this mount (see ARCHITECTURE.md, "Locks across a
// restart"). Its close must reach the home to let them go, so it is opened again first
// (which also binds a flock kept for it). `locks`: the handle took a flock, or the caller
// knows it holds POSIX locks.
void Fs::ReopenLocked(uint64_t fh, bool locks) {
  uint64_t current = client_.generation();
  {
    std::lock_guard lock(mutex_);
    auto it = handles_.find(fh);
    if (current == 0 || it == handles_.end() || it->second.generation == current) return;
    if (!locks && !it->second.flocker) return;
    if (it->second.dir) return;
  }
  uint64_t remote = 0;
  if (int err = RemoteFh(fh, current, &remote)) {
    spdlog::debug("homefs: a locked file not opened again to close it: {}", std::strerror(err));
  }
}

void Fs::Release(Request r, Op op, fuse_file_info* fi) {
  // The kernel does not wait for the answer's content; a file opened on a broken
  // connection is already closed at the home, a deferred one never opened there.
  if (IsDeferred(fi->fh)) return r.Err(0);
  // Its writes behind keep the handle: one sent again on a new connection opens it there.
  behind_.DrainHandle(fi->fh, {});
  behind_.TakeError(fi->fh);  // its closer heard it, or never will
  ReopenLocked(fi->fh, false);
  OpenHandle h;
  {
    std::lock_guard lock(mutex_);
    auto it = handles_.find(fi->fh);
    if (it == handles_.end()) return r.Err(0);
    h = std::move(it->second);
    handles_.erase(it);
  }
  // Sent only on the connection it was opened on (a broken one closed it already).
  capnp::MallocMessageBuilder message(256);
  auto rq = message.initRoot<schema::FileRequest>();
  rq.setOp(op);
  rq.setFh(h.remote);
  // Nobody waits for it: it goes out with the requests around it, as one sent behind,
  // unless it lets go of a flock, which another node's process may be waiting for.
  if (!h.flocker) rq.setBehind(true);
  client_.Send(message, h.generation, [](int, IncomingMessage*) {});
  r.Err(0);
}

void Fs::Readdir(Request r, fuse_ino_t ino, size_t size, off_t off, fuse_file_info* fi, bool plus) {
  auto p = Prepare(r, Op::READDIR);
  if (!p || !SetFh(r, *p, fi)) return;
  p->rq.setOffset(static_cast<uint64_t>(off));
  p->rq.setFlags(plus ? 0 : 1);
  // An entry with attributes takes ~150 bytes of the kernel's buffer, a bare one ~32.
  p->rq.setSize(size / (plus ? 150 : 32) + 1);
  Call(std::move(r), std::move(p), [this, ino, size, plus](Request& r, auto rs, uint64_t gen) {
    std::vector<char> buffer(size);
    size_t used = 0;
    auto entries = rs.getEntries();
    unsigned i = 0;
    for (; i < entries.size(); ++i) {
      auto entry = entries[i];
      std::string name = entry.getName();
      auto next = static_cast<off_t>(entry.getOffset());
      size_t need;
      if (plus) {
        fuse_entry_param e = EntryParam(0, entry.getAttr());
        need = fuse_add_direntry_plus(r.get(), nullptr, 0, name.c_str(), &e, next);
        if (used + need > size) break;
        if (entry.getNode() != 0) e.ino = Learn(entry, gen, ino, name, true);
        fuse_add_direntry_plus(r.get(), buffer.data() + used, size - used, name.c_str(), &e, next);
      } else {
        struct stat st = ToStat(entry.getAttr());
        need = fuse_add_direntry(r.get(), nullptr, 0, name.c_str(), &st, next);
        if (used + need > size) break;
        fuse_add_direntry(r.get(), buffer.data() + used, size - used, name.c_str(), &st, next);
      }
      used += need;
    }
    // Entries that did not fit were looked up at the home all the same: give them back.
    for (; i < entries.size(); ++i) {
      if (entries[i].getNode() != 0) ForgetRemote(entries[i].getNode(), 1, gen);
    }
    r.Buf(buffer.data(), used);
  });
}

void Fs::Statfs(Request r, fuse_ino_t ino) {
  auto p = Prepare(r, Op::STATFS);
  if (!p || !SetNode(r, *p, ino)) return;
  // Never asked before the home fell silent: sizes unknown, as statfs may answer (the
  // kernel fills in the file system's type, which is what most callers want).
  struct statvfs known {};
  known.f_bsize = known.f_frsize = 4096;
  known.f_namemax = 255;
  {
    std::lock_guard lock(mutex_);
    if (statfs_) known = *statfs_;
  }
  std::function<void(Request&)> stale;
  if (MayAnswerFromCache(r)) stale = [known](Request& r) { r.Statfs(known); };
  Call(
      std::move(r), std::move(p),
      [this](Request& r, auto rs, uint64_t) {
        auto s = rs.getStatfs();
        struct statvfs st {};
        st.f_bsize = s.getBsize();
        st.f_frsize = s.getFrsize();
        st.f_blocks = s.getBlocks();
        st.f_bfree = s.getBfree();
        st.f_bavail = s.getBavail();
        st.f_files = s.getFiles();
        st.f_ffree = s.getFfree();
        st.f_favail = s.getFavail();
        st.f_fsid = s.getFsid();
        st.f_namemax = s.getNamemax();
        {
          std::lock_guard lock(mutex_);
          statfs_ = st;
        }
        r.Statfs(st);
      },
      std::move(stale));
}

void Fs::Access(Request r, fuse_ino_t ino, int mask) {
  auto p = Prepare(r, Op::ACCESS);
  if (!p || !SetNode(r, *p, ino)) return;
  p->rq.setMode(static_cast<uint32_t>(mask));
  Call(std::move(r), std::move(p), [](Request& r, auto, uint64_t) { r.Err(0); });
}

void Fs::Xattr(Request r, Op op, fuse_ino_t ino, const std::string& name, const char* value,
               size_t size, int flags) {
  static constexpr std::string_view kCarry = "trusted.homeward.";
  if (op == Op::SETXATTR && ino == root_ && name.rfind(kCarry, 0) == 0) {
    std::string what = name.substr(kCarry.size());
    if (what == "drain") return DrainWrites(std::move(r));
    return CarryLocks(std::move(r), what, std::string(value, size));
  }
  // What the kernel asks by itself, before each write and at permission checks, is
  // answered without the home (nor waiting for the writes behind, which could only drop a
  // file's capabilities) while the home's last answer, none, holds.
  auto kernels = std::find(kKernelXattrs.begin(), kKernelXattrs.end(), name);
  size_t kind = static_cast<size_t>(kernels - kKernelXattrs.begin());
  bool kernel_asks = op == Op::GETXATTR && kernels != kKernelXattrs.end();
  if (kernel_asks && KnownXattrAbsent(ino, kind)) return r.Err(ENODATA);
  if (op == Op::SETXATTR || op == Op::REMOVEXATTR) {
    ++xattrs_set_;
    std::lock_guard lock(mutex_);
    XattrsUnknownLocked(ino);
  }
  uint64_t heard = notices_heard_.load(), xattrs_set = xattrs_set_.load();
  auto p = Prepare(r, op);
  if (!p || !SetNode(r, *p, ino)) return;
  p->rq.setName(name);
  p->rq.setFlags(static_cast<uint32_t>(flags));
  p->rq.setSize(size);
  if (op == Op::SETXATTR) {
    p->rq.setData(kj::arrayPtr(reinterpret_cast<const capnp::byte*>(value), size));
  }
  bool sized = op == Op::GETXATTR || op == Op::LISTXATTR;
  std::function<void(int)> refused;
  if (kernel_asks) {
    refused = [this, ino, kind, generation = p->generation, heard, xattrs_set](int err) {
      if (err == ENODATA) XattrAbsent(ino, kind, generation, heard, xattrs_set);
    };
  }
  Call(
      std::move(r), std::move(p),
      [sized, size](Request& r, auto rs, uint64_t) {
        if (!sized) return r.Err(0);
        if (size == 0) return r.Xattr(rs.getSize());
        auto data = rs.getData();
        r.Buf(data.begin(), data.size());
      },
      {}, std::move(refused));
}

void Fs::Fallocate(Request r, int mode, off_t offset, off_t length, fuse_file_info* fi) {
  auto p = Prepare(r, Op::FALLOCATE);
  if (!p || !SetFh(r, *p, fi)) return;
  p->rq.setFlags(static_cast<uint32_t>(mode));
  p->rq.setOffset(static_cast<uint64_t>(offset));
  p->rq.setSize(static_cast<uint64_t>(length));
  Call(std::move(r), std::move(p), [](Request& r, auto, uint64_t) { r.Err(0); });
}

}  // namespace homeward

// ---------------------------------------------------------------------------------------
// Locks: taken and held at the home, so they exclude jobs on every node and the home's own
// processes alike. The kernel sends the lock owner: a process (POSIX locks), or an open
// file (OFD locks, flock).

namespace homeward {

namespace {

// Reads of the calling process's /proc files (its namespaces, ids, environment) wait for
// its exec_update_lock, which a process in the middle of execve holds while it closes its
// close-on-exec files: a close of a homefs file then waits for this very request, and the
// read for the close (seen: every /proc reader of the machine stuck behind it). So such a
// read runs on a thread of its own, and the request goes on without its answer after
// 200 ms (the read finishes once the exec does).
template <typename T, typename F>
T Bounded(F read, T otherwise) {
  auto answer = std::make_shared<std::promise<T>>();
  auto future = answer->get_future();
  try {
    UnpinnedThread("homefs bounded", [answer, read] { answer->set_value(read()); }).detach();
  } catch (const std::system_error&) {
    return otherwise;
  }
  if (future.wait_for(std::chrono::milliseconds(200)) != std::future_status::ready) {
    return otherwise;
  }
  return future.get();
}

// A process's identity for this boot: its pidfd's inode number, which pidfs (Linux 6.9)
// gives each process once and never again (a pid used again is another inode). 0 when it
// cannot be had (the process is gone, or pidfds are anonymous inodes on an older kernel,
// all one number). Asks nothing of the process's /proc files, so it never waits for it.
uint64_t ProcessKey(pid_t pid) {
  constexpr long kPidfsMagic = 0x50494446;
  int fd = static_cast<int>(::syscall(SYS_pidfd_open, pid, 0));
  if (fd < 0) return 0;
  static const bool pidfs = [fd] {
    struct statfs fs;
    return ::fstatfs(fd, &fs) == 0 && static_cast<long>(fs.f_type) == kPidfsMagic;
  }();
  struct stat st;
  uint64_t key = pidfs && ::fstat(fd, &st) == 0 ? st.st_ino : 0;
  ::close(fd);
  return key;
}

uint64_t MountNsOf(pid_t pid) {
  char link[64];
  std::string path = "/proc/" + std::to_string(pid) + "/ns/mnt";
  ssize_t n = ::readlink(path.c_str(), link, sizeof link - 1);
  if (n <= 0) return 0;
  link[n] = '\0';
  unsigned long long inode = 0;
  return std::sscanf(link, "mnt:[%llu]", &inode) == 1 ? inode : 0;
}

// The process's pid in its job's pid namespace; 0 for a process of this node's own (criu
// itself, not a process of a job).
int32_t InnerPid(pid_t pid) { return static_cast<int32_t>(InnermostPid(pid)); }

// A process of a job that criu is still restoring: criu's own fd shuffling closes files
// (which would drop the process's POSIX locks) before the restorer names the process
// after the job's program again.
bool Restoring(pid_t pid) {
  std::string path = "/proc/" + std::to_string(pid) + "/comm";
  FILE* f = std::fopen(path.c_str(), "re");
  if (!f) return false;
  char comm[32] = {};
  bool criu = std::fgets(comm, sizeof comm, f) && std::strcmp(comm, "criu\n") == 0;
  std::fclose(f);
  return criu;
}

void SetLock(schema::FileLock::Builder out, const struct flock& lock) {
  out.setType(lock.l_type);
  out.setStart(static_cast<uint64_t>(std::max<off_t>(lock.l_start, 0)));
  out.setLength(static_cast<uint64_t>(std::max<off_t>(lock.l_len, 0)));
  out.setPid(lock.l_pid);
}

// libfuse calls this when the kernel interrupts a request that registered it: the
// request is alive for the call, its answer may be on its way.
void OnLockInterrupt(fuse_req_t req, void* data) {
  try {
    // A serial is numbered as the Fs's node ids are, so it names its Fs too.
    uint64_t serial = reinterpret_cast<uintptr_t>(data);
    if (Fs* fs = static_cast<Mounted*>(fuse_req_userdata(req))->NodeFs(serial)) {
      fs->LockInterrupted(serial);
    }
  } catch (const std::exception& e) {
    spdlog::error("homefs: cancelling a lock wait: {}", e.what());
  }
}

}  // namespace

pid_t Fs::HolderId(pid_t pid) {
  if (pid <= 0) return pid;
  // The /proc reads are a thread and a few files each: once per process, not per lock.
  uint64_t key = ProcessKey(pid);
  if (key) {
    std::lock_guard lock(locks_mutex_);
    if (auto it = home_ids_.find(key); it != home_ids_.end()) return it->second;
  }
  auto id = Bounded([pid] { return std::optional<pid_t>(HomeIdOf(pid)); }, std::optional<pid_t>());
  if (!id) return pid;  // not read in time (an exec): not kept, read again next time
  if (key) {
    std::lock_guard lock(locks_mutex_);
    if (home_ids_.size() >= 4096) home_ids_.clear();  // processes gone meanwhile, mostly
    home_ids_[key] = *id;
  }
  return *id;
}

void Fs::Getlk(Request r, fuse_ino_t, fuse_file_info* fi, const struct flock& lock) {
  auto p = Prepare(r, Op::GETLK);
  if (!p || !SetFh(r, *p, fi)) return;
  p->rq.setOwner(fi->lock_owner);
  SetLock(p->rq.initLock(), lock);
  TagCarry(r.get(), p->rq);
  uint64_t fh = fi->fh;
  pid_t asker = fuse_req_ctx(r.get())->pid;
  Call(std::move(r), std::move(p), [this, fh, asker](Request& r, auto rs, uint64_t) {
    auto got = rs.getLock();
    struct flock out {};
    out.l_type = got.getType();
    out.l_whence = SEEK_SET;
    out.l_start = static_cast<off_t>(got.getStart());
    out.l_len = static_cast<off_t>(got.getLength());
    out.l_pid = got.getPid();
    if (out.l_type != F_UNLCK) {
      // The kernel turns a pid that is not one of this node's into 0 on the way to the
      // caller; the caller's shim asks for it again (LockHolder).
      std::lock_guard lock(locks_mutex_);
      if (getlk_answers_.size() >= 4096) getlk_answers_.clear();
      getlk_answers_[asker] = {fh, out};
    }
    r.Lock(out);
  });
}

void Fs::LockHolder(Request r, fuse_file_info* fi, const void* in, size_t in_size,
                    size_t out_size) {
  if (in_size < sizeof(struct flock) || out_size < sizeof(struct flock)) return r.Err(EINVAL);
  struct flock asked;
  std::memcpy(&asked, in, sizeof asked);
  pid_t asker = fuse_req_ctx(r.get())->pid;
  std::optional<struct flock> answer;
  {
    std::lock_guard lock(locks_mutex_);
    auto it = getlk_answers_.find(asker);
    if (it != getlk_answers_.end() && it->second.first == fi->fh) {
      answer = it->second.second;
      getlk_answers_.erase(it);
    }
  }
  if (!answer || answer->l_type != asked.l_type || answer->l_start != asked.l_start ||
      answer->l_len != asked.l_len) {
    return r.Err(ENOENT);
  }
  r.Ioctl(&*answer, sizeof *answer);
}

void Fs::Setlk(Request r, fuse_ino_t ino, fuse_file_info* fi, const struct flock& lock,
               bool sleep) {
  if (IsDeferred(fi->fh)) return r.Err(ENOLCK);  // opened while the home was silent
  auto p = Prepare(r, Op::SETLK);
  if (!p || !SetFh(r, *p, fi)) return;
  p->rq.setOwner(fi->lock_owner);
  auto sent = p->rq.initLock();
  SetLock(sent, lock);
  bool acquires = lock.l_type != F_UNLCK;
  // The holder as the home names it to F_GETLK (a job's process: its home id).
  if (acquires) {
    pid_t pid = lock.l_pid;
    sent.setPid(HolderId(pid));
  }
  p->rq.setFlags(sleep && acquires ? 1 : 0);
  bool carried = TagCarry(r.get(), p->rq);
  if (acquires || carried) {
    // Before it is sent: a close racing with the answer must drop it at the home.
    std::lock_guard guard(locks_mutex_);
    lock_owners_[{ino, fi->lock_owner}] = fuse_req_ctx(r.get())->pid;
  }
  LockCall(std::move(r), std::move(p), ino, sleep && acquires, acquires);
}

void Fs::Flock(Request r, fuse_ino_t ino, fuse_file_info* fi, int op) {
  if (IsDeferred(fi->fh)) return r.Err(ENOLCK);
  auto p = Prepare(r, Op::FLOCK);
  if (!p || !SetFh(r, *p, fi)) return;
  p->rq.setOwner(fi->lock_owner);
  p->rq.setFlags(static_cast<uint32_t>(op));
  bool acquires = !(op & LOCK_UN);
  if (acquires) {
    std::lock_guard lock(mutex_);
    if (auto it = handles_.find(fi->fh); it != handles_.end()) {
      it->second.flocker = fuse_req_ctx(r.get())->pid;
    }
  }
  LockCall(std::move(r), std::move(p), ino, acquires && !(op & LOCK_NB), acquires);
}

void Fs::LockCall(Request r, std::unique_ptr<Prepared> p, fuse_ino_t ino, bool waits,
                  bool acquires) {
  auto shared = std::make_shared<Request>(std::move(r));
  uint64_t serial = 0;
  if (waits) {
    {
      std::lock_guard lock(locks_mutex_);
      serial = next_lock_wait_++;
      lock_waits_[serial] = LockWait{p->generation, 0, false};
    }
    // Registered before the request is sent, while it cannot be answered yet: an interrupt
    // (already there or to come) cancels the wait at the home.
    fuse_req_interrupt_func(shared->get(), OnLockInterrupt,
                            reinterpret_cast<void*>(static_cast<uintptr_t>(serial)));
  }
  SendLock(shared, std::shared_ptr<Prepared>(std::move(p)), ino, serial, acquires);
}

void Fs::SendLock(std::shared_ptr<Request> shared, std::shared_ptr<Prepared> p, fuse_ino_t ino,
                  uint64_t serial, bool acquires) {
  uint64_t generation = p->generation;
  // A hard mount sends a lock request whose connection broke again on the next one
  // (ResendLock), as any call: a restart of the home's daemon keeps the locks (its lock
  // keeper), so a wait in flight goes on waiting, as NFS reclaims, rather than failing.
  // Sent again it is the same request to the home: the owner's description the keeper
  // kept is this client's again, so a lock got just before the restart is got again.
  uint64_t id = client_.Send(
      p->message, generation,
      [this, shared, p, serial, ino, acquires](int err, IncomingMessage* message) {
        if (err == FileClient::kLost) return ResendLock(shared, p, ino, serial, acquires);
        if (serial) {
          std::lock_guard lock(locks_mutex_);
          lock_waits_.erase(serial);
        }
        if (err != 0) return shared->Err(err);
        auto rs = message->Root<schema::ServerMessage>().getResponse();
        if (rs.getError() != 0) return shared->Err(rs.getError());
        if (!acquires) return shared->Err(0);
        // A lock got: what this node cached of the file may be older than what the last
        // holder wrote (as NFS, a lock revalidates the file).
        DropCache(ino, [shared] { shared->Err(0); });
      },
      InterruptedProbe(*shared), false, client_.hard(), serial != 0);
  if (!serial || id == 0) return;
  bool cancel = false;
  {
    std::lock_guard lock(locks_mutex_);
    auto it = lock_waits_.find(serial);
    if (it != lock_waits_.end()) {
      it->second.generation = generation;
      it->second.id = id;
      cancel = it->second.interrupted;
    }
  }
  if (cancel) CancelLockWait(generation, id);
}

void Fs::ResendLock(std::shared_ptr<Request> shared, std::shared_ptr<Prepared> p, fuse_ino_t ino,
                    uint64_t serial, bool acquires) {
  if (serial) {
    std::lock_guard lock(locks_mutex_);
    if (auto it = lock_waits_.find(serial); it != lock_waits_.end()) it->second.id = 0;
  }
  auto job = [this, shared, p, ino, serial, acquires] {
    uint64_t id = p->rq.getId();
    auto fail = [&](int err) {
      client_.Abandon(id);
      if (serial) {
        std::lock_guard lock(locks_mutex_);
        lock_waits_.erase(serial);
      }
      shared->Err(err);
    };
    for (;;) {
      uint64_t generation;
      // An interrupted wait for the home ends here with EINTR, as the kernel asked.
      if (int err = client_.WaitConnected(&generation, InterruptedProbe(*shared))) {
        return fail(err);
      }
      int err = Rebind(*p, generation);
      if (err == FileClient::kLost) continue;
      if (err != 0) return fail(err);
      if (serial) {
        std::lock_guard lock(locks_mutex_);
        auto it = lock_waits_.find(serial);
        if (it != lock_waits_.end() && it->second.interrupted) {
          lock_waits_.erase(it);
          client_.Abandon(id);
          return shared->Err(EINTR);  // interrupted while no home had it: not taken
        }
      }
      spdlog::info("homefs: lock request {} sent again on the new connection", id);
      return SendLock(shared, p, ino, serial, acquires);
    }
  };
  Requeue(std::move(job));
}

void Fs::LockInterrupted(uint64_t serial) {
  uint64_t generation, id;
  {
    std::lock_guard lock(locks_mutex_);
    auto it = lock_waits_.find(serial);
    if (it == lock_waits_.end()) return;  // answered meanwhile
    if (it->second.id == 0) {
      it->second.interrupted = true;  // cancelled as soon as it is sent
      return;
    }
    generation = it->second.generation;
    id = it->second.id;
  }
  CancelLockWait(generation, id);
}

void Fs::CancelLockWait(uint64_t generation, uint64_t id) {
  // Answered by the home (so a silent home is noticed, and the interrupted wait then ends
  // with EINTR here, as any call does).
  capnp::MallocMessageBuilder message(256);
  auto rq = message.initRoot<schema::FileRequest>();
  rq.setOp(Op::LOCK_CANCEL);
  rq.setCancels(id);
  client_.Send(message, generation, [](int, IncomingMessage*) {});
}

void Fs::Flush(Request r, fuse_ino_t ino, fuse_file_info* fi) {
  // A close returns once the writes behind are at the home (close-to-open), with the
  // error of one of this file's that failed. There is no writeback cache to push; an
  // owner that took POSIX locks here has them dropped.
  if (!AwaitWrites(r)) return;
  int err = behind_.TakeError(fi->fh);
  bool locked;
  {
    std::lock_guard lock(locks_mutex_);
    locked = lock_owners_.erase({ino, fi->lock_owner}) > 0;
  }
  // A process of a job that moved here with locks may hold them without having asked
  // this mount for any: its close drops them too.
  capnp::MallocMessageBuilder message(256);
  auto rq = message.initRoot<schema::FileRequest>();
  if (!IsDeferred(fi->fh) && TagCarry(r.get(), rq) && !Restoring(fuse_req_ctx(r.get())->pid)) {
    locked = true;
  }
  if (!locked || IsDeferred(fi->fh)) return r.Err(err);
  ReopenLocked(fi->fh, true);
  uint64_t generation, remote;
  {
    std::lock_guard lock(mutex_);
    auto it = handles_.find(fi->fh);
    if (it == handles_.end()) return r.Err(err);
    generation = it->second.generation;
    remote = it->second.remote;
  }
  rq.setOp(Op::UNLOCK_OWNER);
  rq.setFh(remote);
  rq.setHasFh(true);
  rq.setOwner(fi->lock_owner);
  // Answered once the home has dropped them (a close then a lock elsewhere must not find
  // them held); a connection gone since took them with it. close() never fails for this.
  auto shared = std::make_shared<Request>(std::move(r));
  client_.Send(message, generation, [shared, err](int, IncomingMessage*) { shared->Err(err); });
}


// ---------------------------------------------------------------------------------------
// Locks across a move (see ARCHITECTURE.md, "Locks across a move"): CRIU does not see the
// locks a job holds through homefs (they are the home's, not in this node's /proc/locks),
// so the daemons carry them. The job's processes are known by their mount namespace (a
// job's own, the same for CRIU's restore of it) and their pid in the job's pid namespace
// (CRIU restores it as it was).


bool Fs::TagCarry(fuse_req_t req, schema::FileRequest::Builder rq) {
  {
    std::lock_guard lock(locks_mutex_);
    if (claims_.empty()) return false;  // the usual case: no /proc reads
  }
  pid_t pid = fuse_req_ctx(req)->pid;
  uint64_t mntns = pid > 0 ? Bounded([pid] { return MountNsOf(pid); }, uint64_t{0}) : 0;
  if (mntns == 0) return false;
  uint64_t token;
  {
    std::lock_guard lock(locks_mutex_);
    auto it = claims_.find(mntns);
    if (it == claims_.end()) return false;
    token = it->second;
  }
  int32_t inner = Bounded([pid] { return InnerPid(pid); }, int32_t{0});
  if (inner == 0) return false;  // criu itself
  rq.setCarry(token);
  rq.setCarryPid(inner);
  return true;
}

void Fs::CarryLocks(Request r, const std::string& what, const std::string& value) {
  if (fuse_req_ctx(r.get())->uid != 0) return r.Err(EPERM);
  unsigned long long token = 0, mntns = 0;
  int fields = std::sscanf(value.c_str(), "%llu %llu", &token, &mntns);
  if (fields < 1 || token == 0) return r.Err(EINVAL);
  Op op = what == "park"      ? Op::PARK_LOCKS
          : what == "unpark"  ? Op::UNPARK_LOCKS
          : what == "claim"   ? Op::CLAIM_LOCKS
                              : Op::HELLO;
  if (op == Op::HELLO || (op != Op::UNPARK_LOCKS && fields < 2)) return r.Err(EINVAL);
  auto p = Prepare(r, op);
  if (!p) return;
  p->rq.setCarry(token);
  if (op == Op::CLAIM_LOCKS || (op == Op::UNPARK_LOCKS && mntns != 0)) {
    // (An unpark: the job stays, and what it carried here before is claimed again.)
    std::lock_guard lock(locks_mutex_);
    claims_[mntns] = token;
  } else if (op == Op::UNPARK_LOCKS) {
    std::lock_guard lock(locks_mutex_);
    std::erase_if(claims_, [&](const auto& claim) { return claim.second == token; });
  } else if (op == Op::PARK_LOCKS) {
    struct Parked {
      uint64_t node = 0, owner = 0, fh = 0;
      int32_t pid = 0;
      bool flock = false;
    };
    std::vector<Parked> parked;
    {
      std::lock_guard lock(mutex_);
      std::lock_guard locks(locks_mutex_);
      for (const auto& [key, pid] : lock_owners_) {
        auto inode = inodes_.find(key.first);
        if (inode == inodes_.end() || inode->second.generation != p->generation) continue;
        if (MountNsOf(pid) != mntns) continue;
        parked.push_back({inode->second.remote, key.second, 0, InnerPid(pid), false});
      }
      for (const auto& [fh, handle] : handles_) {
        if (handle.dir || !handle.flocker || handle.generation != p->generation) continue;
        if (MountNsOf(handle.flocker) != mntns) continue;
        parked.push_back({0, 0, handle.remote, 0, true});
      }
      // The job came here with locks and moves on: what it has not bound here goes too.
      if (auto it = claims_.find(mntns); it != claims_.end()) {
        p->rq.setCarriedFrom(it->second);
        claims_.erase(it);
      }
    }
    auto list = p->rq.initParked(static_cast<unsigned>(parked.size()));
    for (size_t i = 0; i < parked.size(); ++i) {
      list[i].setNode(parked[i].node);
      list[i].setOwner(parked[i].owner);
      list[i].setPid(parked[i].pid);
      list[i].setFh(parked[i].fh);
      list[i].setFlock(parked[i].flock);
    }
    spdlog::info("homefs: parking {} lock owners of a moving job at the home", parked.size());
  }
  Call(std::move(r), std::move(p), [](Request& r, auto, uint64_t) { r.Err(0); });
}

}  // namespace homeward
