// A FileSession: one client's table of looked-up objects and open files, the credentials
// each request runs with, the dispatch of requests to their handlers (file_handlers.cc),
// and the change notices (inotify) for what the client looked up.
#include <fcntl.h>
#include <linux/openat2.h>
#include <poll.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <sys/inotify.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cstring>
#include <optional>

#include <spdlog/spdlog.h>

#include "error.h"
#include "file_ops.h"
#include "fs_credentials.h"

namespace homeward {

namespace file_ops {

std::string ProcPath(int fd) {
  return "/proc/self/fd/" + std::to_string(fd);
}

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

void CheckName(const std::string& name) {
  if (name.size() > 255) throw OpError{ENAMETOOLONG};
  if (name.empty() || name == "." || name == ".." || name.find('/') != std::string::npos) {
    throw OpError{EINVAL};
  }
}

namespace {
int64_t Ns(const timespec& t) {
  return int64_t{t.tv_sec} * 1'000'000'000 + t.tv_nsec;
}
}  // namespace

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

// setfsuid/setfsgid and the raw setgroups system call change only the calling thread
// (glibc's setgroups() would change every thread of the daemon), and a non-zero fsuid
// drops the fs capabilities, so the kernel checks each operation exactly as it would for
// the caller's own process.
thread_local ThreadCredentials current_credentials;

}  // namespace file_ops

using namespace file_ops;

namespace {

constexpr auto kOwnChangeWindow = std::chrono::milliseconds(1000);
// The own-change records are swept this often: a sweep visits every record, and a burst
// of creates or unlinks makes thousands while their events come in batches of a few.
constexpr auto kOwnSweepPeriod = kOwnChangeWindow / 4;
static_assert(kOwnSweepPeriod > std::chrono::milliseconds(0));

// The daemon's own fs ids, and with them its fs capabilities, on this thread while it
// lives; then the caller's again. A caller served as root has them already: nothing
// changes.
class AsDaemon {
 public:
  AsDaemon() {
    if (current_credentials.uid != 0 || current_credentials.gid != 0) ids_.emplace();
  }

 private:
  std::optional<ScopedDaemonFsIds> ids_;
};

// A descriptor that open_by_handle_at takes to name the mount of directory `dir` (an
// O_PATH one does not do). Invalid when it cannot be opened.
Fd MountFd(int dir) {
  AsDaemon daemon;
  return Fd::Adopt(::open(ProcPath(dir).c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
}

// The file handle of `fd`'s object (a struct file_handle) and its mount's id; empty when
// its file system gives none.
std::vector<unsigned char> FileHandle(int fd, int* mount_id) {
  std::vector<unsigned char> bytes(sizeof(file_handle) + MAX_HANDLE_SZ);
  auto* handle = reinterpret_cast<file_handle*>(bytes.data());
  handle->handle_bytes = MAX_HANDLE_SZ;
  if (::name_to_handle_at(fd, "", handle, mount_id, AT_EMPTY_PATH) != 0) return {};
  bytes.resize(sizeof(file_handle) + handle->handle_bytes);
  return bytes;
}

// How long change events gather after a batch of them is read (milliseconds).
constexpr int kNoticeGather = 2;

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
  // setfsuid and setfsgid report no error; reading the id back (an invalid one changes
  // nothing) does. Checked when changed: the thread keeps the ids between requests, and
  // `cur` says what they are only once they are read back.
  if (gid != cur.gid) {
    ::syscall(SYS_setfsgid, gid);
    if (static_cast<uint32_t>(::syscall(SYS_setfsgid, -1)) != gid) throw OpError{EPERM};
    cur.gid = gid;
  }
  if (uid != cur.uid) {
    ::syscall(SYS_setfsuid, uid);
    if (static_cast<uint32_t>(::syscall(SYS_setfsuid, -1)) != uid) throw OpError{EPERM};
    cur.uid = uid;
  }
  // Each serving thread has an fs context of its own (unshare(CLONE_FS)), so its umask
  // is its own.
  uint32_t mask = cred.getUmask() & 0777;
  if (mask != cur.umask) {
    ::umask(mask);
    cur.umask = mask;
  }
}

// Whether a request does anything the kernel checks against the caller's ids. A forget
// or a release only lets go of what the client holds, and carries no caller (the kernel
// sends a forget on its own): the thread keeps the ids of the last caller, where taking
// the forget's (root's, or nobody's) and the next request's again cost four system calls
// each time (an unlink and its forget, for every file a job removes).
bool ChecksPermissions(schema::FileOp op) {
  using Op = schema::FileOp;
  return op != Op::FORGET && op != Op::RELEASE && op != Op::RELEASEDIR;
}

}  // namespace

FileSession::FileSession(int root, Root peer_root, ReplayCache* replay,
                         std::shared_ptr<HomeLocks> locks)
    : root_(root),
      peer_root_(peer_root),
      replay_(replay),
      locks_(locks ? std::move(locks) : std::make_shared<HomeLocks>()) {
  auto node = std::make_shared<Node>();
  node->fd = Fd::Adopt(HW_SYSCALL(::fcntl(root, F_DUPFD_CLOEXEC, 0), "dup export root"));
  node->nlookup = 1;
  nodes_[1] = node;
  int mount = -1;
  if (!FileHandle(root, &mount).empty()) mounts_[mount] = MountFd(root);
}

FileSession::Node::~Node() {
  if (reclaimable && fd.valid()) --open_node_fds;
}

FileSession::~FileSession() {
  // Waits end before the session's tables go; the locks go with the descriptions.
  locks_->SessionGone(this);
  if (watcher_.joinable()) {
    uint64_t one = 1;
    if (::write(stop_watching_.get(), &one, sizeof one) < 0) {
      spdlog::error("file service: cannot stop the change watcher: {}", std::strerror(errno));
    }
    watcher_.join();
  }
}

std::shared_ptr<FileSession::Node> FileSession::GetNode(uint64_t id) {
  std::lock_guard lock(mutex_);
  auto it = nodes_.find(id);
  if (it == nodes_.end()) throw OpError{ESTALE};
  bool reopened = !it->second->fd.valid();
  NodeFdLocked(*it->second);
  UsedLocked(id, *it->second);
  std::shared_ptr<Node> node = it->second;  // held: not reclaimed below
  if (reopened) ReclaimLocked();
  return node;
}

void FileSession::TakeHandleLocked(Node& node, bool names_mount) {
  int mount = -1;
  std::vector<unsigned char> handle = FileHandle(node.fd.get(), &mount);
  if (!handle.empty() && names_mount && !mounts_.count(mount)) {
    mounts_[mount] = MountFd(node.fd.get());
  }
  auto known = mounts_.find(mount);
  node.reclaimable = !handle.empty() && known != mounts_.end() && known->second.valid();
  if (!node.reclaimable) return;
  node.handle = std::move(handle);
  node.mount = mount;
}

int FileSession::NodeFdLocked(Node& node) {
  if (node.fd.valid()) return node.fd.get();
  int fd, err;
  {
    AsDaemon daemon;  // CAP_DAC_READ_SEARCH, which the caller's fsuid dropped
    fd = ::open_by_handle_at(mounts_.at(node.mount).get(),
                             reinterpret_cast<file_handle*>(node.handle.data()),
                             O_PATH | O_CLOEXEC);
    err = errno;
  }
  if (fd < 0) throw OpError{err == ENOENT ? ESTALE : err};
  node.fd = Fd::Adopt(fd);
  ++open_node_fds;
  return fd;
}

void FileSession::UsedLocked(uint64_t id, Node& node) {
  if (!node.reclaimable) return;
  if (node.listed) {
    open_nodes_.splice(open_nodes_.begin(), open_nodes_, node.place);
  } else {
    node.place = open_nodes_.insert(open_nodes_.begin(), id);
    node.listed = true;
  }
}

void FileSession::ReclaimLocked() {
  if (reclaims_since_read_-- <= 0) {
    rlimit limit{};
    if (::getrlimit(RLIMIT_NOFILE, &limit) != 0) return;
    fd_budget_ = static_cast<int64_t>(limit.rlim_cur / 2);
    reclaims_since_read_ = kBudgetReadEvery;
  }
  int64_t budget = fd_budget_;
  // From the least recently used, past those a request holds.
  for (auto it = open_nodes_.end(); open_node_fds.load() > budget && it != open_nodes_.begin();) {
    --it;
    auto found = nodes_.find(*it);
    if (found != nodes_.end() && found->second.use_count() > 1) continue;
    if (found != nodes_.end()) {
      Node& node = *found->second;
      if (node.handle.empty()) TakeHandleLocked(node, false);
      // Closed, or (no handle to be had) kept open and counted no more.
      if (node.reclaimable) node.fd = Fd();
      node.listed = false;
      --open_node_fds;
    }
    it = open_nodes_.erase(it);
  }
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

bool FileSession::Remember(Fd fd, schema::Entry::Builder entry) {
  struct stat st = StatFd(fd.get());
  FillAttr(st, entry.initAttr());
  std::pair<uint64_t, uint64_t> key{st.st_dev, st.st_ino};
  std::lock_guard lock(mutex_);
  auto it = by_inode_.find(key);
  if (it != by_inode_.end()) {
    Node& known = *nodes_[it->second];
    ++known.nlookup;
    bool reclaimed = known.reclaimable && !known.fd.valid();
    if (reclaimed) {  // this one serves
      known.fd = std::move(fd);
      ++open_node_fds;
    }
    UsedLocked(it->second, known);
    if (reclaimed) ReclaimLocked();
    entry.setNode(it->second);
    return true;  // `fd`, a second descriptor of a known object, closes here
  }
  auto node = std::make_shared<Node>();
  node->fd = std::move(fd);
  node->nlookup = 1;
  node->key = key;
  uint64_t id = next_node_++;
  if (inotify_.valid()) {
    std::string path = ProcPath(node->fd.get());
    auto watch = [&] {
      return ::inotify_add_watch(inotify_.get(), path.c_str(),
                                 IN_MODIFY | IN_ATTRIB | IN_CLOSE_WRITE | IN_CREATE | IN_DELETE |
                                     IN_MOVED_FROM | IN_MOVED_TO | IN_DELETE_SELF |
                                     IN_EXCL_UNLINK);
    };
    // Watching needs read access: the caller's mostly, else the daemon's (four system
    // calls more, to change the thread's fs ids and back).
    node->watch = watch();
    if (node->watch < 0 && errno == EACCES) {
      AsDaemon daemon;
      node->watch = watch();
    }
    if (node->watch >= 0) watches_[node->watch] = id;
  }
  // The descriptor may be reclaimed (Node) on a mount known by a directory: the first
  // directory seen on a mount names it (a file's own descriptor would keep the file's
  // space after its removal). A file's handle is taken when it is reclaimed.
  if (S_ISDIR(st.st_mode)) {
    TakeHandleLocked(*node, true);
  } else {
    node->reclaimable = true;
  }
  if (node->reclaimable) {
    ++open_node_fds;
    UsedLocked(id, *node);
  }
  nodes_[id] = std::move(node);
  by_inode_[key] = id;
  ReclaimLocked();
  entry.setNode(id);
  return false;
}

void FileSession::LookupInto(int dir_fd, const std::string& name, schema::Entry::Builder entry) {
  CheckName(name);
  Remember(Fd::Adopt(OpenBeneath(dir_fd, name, O_PATH | O_NOFOLLOW, 0)), entry);
}

bool FileSession::Handle(schema::FileRequest::Reader request,
                         schema::FileResponse::Builder response, Later later) {
  response.setId(request.getId());
  try {
    if (ChecksPermissions(request.getOp())) Become(request.getCred(), peer_root_);
    if (inotify_.valid()) MarkOwnChange(request);
    if (auto answered = DispatchLock(request, response, later); !answered.has_value()) {
      Perform(request, response);
    } else {
      return *answered;
    }
  } catch (const OpError& e) {
    response.setError(e.err);
  } catch (const Error& e) {
    response.setError(e.sys_errno() ? e.sys_errno() : EIO);
  } catch (const std::exception& e) {
    spdlog::warn("file service: request {} failed: {}", static_cast<int>(request.getOp()),
                 e.what());
    response.setError(EIO);
  }
  if (inotify_.valid()) EndOwnChange(request, response.asReader());
  return true;
}

std::optional<bool> FileSession::DispatchLock(schema::FileRequest::Reader rq,
                                              schema::FileResponse::Builder rs, Later& later) {
  using Op = schema::FileOp;
  switch (rq.getOp()) {
    case Op::GETLK:
      FileOps::Getlk(*this, rq, rs);
      return true;
    case Op::SETLK:
    case Op::FLOCK:
      return FileOps::Setlk(*this, rq, rs, later);
    case Op::LOCK_CANCEL:
      locks_->Cancel({this, rq.getCancels()}, EINTR);
      return true;
    case Op::UNLOCK_OWNER:
      FileOps::UnlockOwner(*this, rq, rs);
      return true;
    case Op::PARK_LOCKS:
      FileOps::ParkLocks(*this, rq, rs);
      return true;
    case Op::UNPARK_LOCKS:
      FileOps::UnparkLocks(*this, rq, rs);
      return true;
    case Op::CLAIM_LOCKS:
      FileOps::ClaimLocks(*this, rq, rs);
      return true;
    default:
      return std::nullopt;  // not a lock request
  }
}

bool FileSession::NonIdempotent(schema::FileRequest::Reader rq) {
  using Op = schema::FileOp;
  switch (rq.getOp()) {
    case Op::MKNOD:
    case Op::MKDIR:
    case Op::UNLINK:
    case Op::RMDIR:
    case Op::SYMLINK:
    case Op::RENAME:
    case Op::LINK:
    case Op::CREATE:
      return true;
    case Op::WRITE:
      return (rq.getFlags() & O_APPEND) != 0;  // placed at the end: twice is twice
    default:
      return false;
  }
}

void FileSession::Perform(schema::FileRequest::Reader rq, schema::FileResponse::Builder rs) {
  using Op = schema::FileOp;
  if (!replay_ || !client_) return Dispatch(rq, rs);
  uint64_t id = rq.getId();
  if (rq.getOldest()) replay_->Ack(client_, rq.getOldest());
  if (!NonIdempotent(rq)) return Dispatch(rq, rs);
  auto seen = rq.getRetry() ? replay_->Find(client_, id) : ReplayCache::Seen{};
  if (seen.state == ReplayCache::State::kDone) return Replay(rq, rs, seen.err);
  auto op = rq.getOp();
  if (seen.state == ReplayCache::State::kStarted && op == Op::WRITE && seen.append_base >= 0 &&
      AppendedAt(rq, seen.append_base)) {
    // Begun by a daemon that died between the write and its log: its bytes are in the
    // file where it began, so it was done.
    spdlog::info("file service: append {} of client {:x} was done before the restart", id, client_);
    replay_->Finish(client_, id, 0);
    return Replay(rq, rs, 0);
  }
  if (seen.state == ReplayCache::State::kUnknown) {
    // An append notes where the file ended, so that one the daemon dies in can be found.
    int64_t base = -1;
    if (op == Op::WRITE) {
      struct stat st;
      if (::fstat(GetHandle(rq.getFh())->fd.get(), &st) == 0) base = st.st_size;
    }
    if (base >= 0) {
      replay_->StartAppend(client_, id, base);
    } else {
      replay_->Start(client_, id);
    }
  }
  int err = 0;
  try {
    Dispatch(rq, rs);
  } catch (const OpError& e) {
    err = e.err;
  }
  if (op == Op::WRITE && !err && !rq.getRetry() && replay_->kill_after_append) {
    DieAtFaultPoint(Fault::kKillAfterAppend,
                    fmt::format("after append {} of client {:x}", id, client_));
  }
  // Begun by a daemon that died before it logged how it ended: the error a done request
  // meets when performed again says it was done (the name it made exists, the name it
  // removed is gone).
  bool removes = op == Op::UNLINK || op == Op::RMDIR || op == Op::RENAME;
  if (seen.state == ReplayCache::State::kStarted && op != Op::WRITE &&
      err == (removes ? ENOENT : EEXIST)) {
    spdlog::info("file service: request {} of client {:x} was done before the restart", id,
                 client_);
    replay_->Finish(client_, id, 0);
    return Replay(rq, rs, 0);
  }
  replay_->Finish(client_, id, err);
  if (err) throw OpError{err};
}

bool FileSession::AppendedAt(schema::FileRequest::Reader rq, int64_t base) {
  auto data = rq.getData();
  if (data.size() == 0) return false;
  std::string there(data.size(), '\0');
  size_t done = 0;
  try {
    // The handle is the caller's, write-only as often as not: the file is opened again
    // to be read (with the caller's rights, as every call here is).
    std::string path = fmt::format("/proc/self/fd/{}", GetHandle(rq.getFh())->fd.get());
    Fd file = Fd::Adopt(::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOCTTY));
    if (!file.valid()) return false;
    int fd = file.get();
    while (done < there.size()) {
      ssize_t n = ::pread(fd, there.data() + done, there.size() - done,
                          static_cast<off_t>(base) + static_cast<off_t>(done));
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) return false;
      done += static_cast<size_t>(n);
    }
  } catch (const OpError&) {
    return false;
  }
  return std::memcmp(there.data(), data.begin(), there.size()) == 0;
}

void FileSession::Replay(schema::FileRequest::Reader rq, schema::FileResponse::Builder rs,
                         int err) {
  using Op = schema::FileOp;
  if (err) throw OpError{err};
  switch (rq.getOp()) {
    case Op::MKNOD:
    case Op::MKDIR:
    case Op::SYMLINK:
      LookupInto(GetNode(rq.getNode())->fd.get(), rq.getName(), rs.initEntry());
      return;
    case Op::LINK:
      LookupInto(GetNode(rq.getNode2())->fd.get(), rq.getName2(), rs.initEntry());
      return;
    case Op::CREATE:
      return FileOps::CreateAgain(*this, rq, rs);
    case Op::WRITE:
      rs.setSize(rq.getData().size());
      return;
    default:
      return;  // unlink, rmdir, rename: nothing to answer but success
  }
}

void FileSession::Dispatch(schema::FileRequest::Reader rq, schema::FileResponse::Builder rs) {
  using Op = schema::FileOp;
  switch (rq.getOp()) {
    case Op::HELLO:
      return FileOps::Hello(*this, rq, rs);
    case Op::LOOKUP:
      return FileOps::Lookup(*this, rq, rs);
    case Op::FORGET:
      return FileOps::Forget(*this, rq, rs);
    case Op::GETATTR:
      return FileOps::Getattr(*this, rq, rs);
    case Op::SETATTR:
      return FileOps::Setattr(*this, rq, rs);
    case Op::READLINK:
      return FileOps::Readlink(*this, rq, rs);
    case Op::MKNOD:
      return FileOps::Mknod(*this, rq, rs);
    case Op::MKDIR:
      return FileOps::Mkdir(*this, rq, rs);
    case Op::UNLINK:
    case Op::RMDIR:
      return FileOps::Unlink(*this, rq, rs);
    case Op::SYMLINK:
      return FileOps::Symlink(*this, rq, rs);
    case Op::RENAME:
      return FileOps::Rename(*this, rq, rs);
    case Op::LINK:
      return FileOps::Link(*this, rq, rs);
    case Op::OPEN:
    case Op::OPENDIR:
      return FileOps::Open(*this, rq, rs);
    case Op::CREATE:
      return FileOps::Create(*this, rq, rs);
    case Op::READ:
      return FileOps::Read(*this, rq, rs);
    case Op::WRITE:
      return FileOps::Write(*this, rq, rs);
    case Op::FLUSH:
      return FileOps::Flush(*this, rq, rs);
    case Op::RELEASE:
    case Op::RELEASEDIR:
      return FileOps::Release(*this, rq, rs);
    case Op::FSYNC:
      return FileOps::Fsync(*this, rq, rs);
    case Op::READDIR:
      return FileOps::Readdir(*this, rq, rs);
    case Op::STATFS:
      return FileOps::Statfs(*this, rq, rs);
    case Op::ACCESS:
      return FileOps::Access(*this, rq, rs);
    case Op::SETXATTR:
    case Op::GETXATTR:
    case Op::LISTXATTR:
    case Op::REMOVEXATTR:
      return FileOps::Xattr(*this, rq, rs);
    case Op::FALLOCATE:
      return FileOps::Fallocate(*this, rq, rs);
    default:
      break;
  }
  throw OpError{ENOSYS};  // an op code this server does not know
}

namespace {

// The directory entries (directory node, name) a request changes.
std::vector<std::pair<uint64_t, std::string>> EntriesChangedBy(schema::FileRequest::Reader rq) {
  using Op = schema::FileOp;
  switch (rq.getOp()) {
    case Op::MKNOD:
    case Op::MKDIR:
    case Op::UNLINK:
    case Op::RMDIR:
    case Op::SYMLINK:
    case Op::CREATE:
      return {{rq.getNode(), rq.getName()}};
    case Op::RENAME:
      return {{rq.getNode(), rq.getName()}, {rq.getNode2(), rq.getName2()}};
    case Op::LINK:
      return {{rq.getNode2(), rq.getName2()}};
    default:
      return {};
  }
}

}  // namespace

EntryHolds HeldAt(int dir_fd, const std::string& name) {
  struct stat st;
  if (::fstatat(dir_fd, name.c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0) return {};
  return {true, {st.st_dev, st.st_ino}};
}

void FileSession::MarkOwnChange(schema::FileRequest::Reader rq) {
  using Op = schema::FileOp;
  std::string name = rq.getName();
  switch (rq.getOp()) {
    case Op::MKNOD:
    case Op::MKDIR:
    case Op::SYMLINK:
    case Op::CREATE:
      MarkOwn(rq.getNode());
      MarkOwnEntry(rq.getNode(), name, std::nullopt);
      break;
    case Op::UNLINK:
    case Op::RMDIR:
      CheckName(name);
      MarkOwn(rq.getNode());
      MarkOwnEntry(rq.getNode(), name, EntryHolds{});
      // The removed object's own watch reports its link count going down: this client's
      // change as well, which its kernel has noted itself.
      MarkOwnObject(HeldAt(GetNode(rq.getNode())->fd.get(), name));
      break;
    case Op::RENAME: {
      // The entries end up holding what the other held before (an exchange), or the
      // source's object and nothing.
      std::string name2 = rq.getName2();
      CheckName(name);
      CheckName(name2);
      EntryHolds from = HeldAt(GetNode(rq.getNode())->fd.get(), name);
      EntryHolds to = HeldAt(GetNode(rq.getNode2())->fd.get(), name2);
      MarkOwnEntry(rq.getNode(), name, rq.getFlags() & RENAME_EXCHANGE ? to : EntryHolds{});
      MarkOwnEntry(rq.getNode2(), name2, from);
      if (!(rq.getFlags() & RENAME_EXCHANGE)) MarkOwnObject(to);  // replaced: one link less
      break;
    }
    case Op::LINK:
      MarkOwn(rq.getNode());
      MarkOwnEntry(rq.getNode2(), rq.getName2(), EntryHolds{true, GetNode(rq.getNode())->key});
      break;
    case Op::SETATTR:
    case Op::SETXATTR:
    case Op::REMOVEXATTR:
      MarkOwn(rq.getNode());
      break;
    case Op::WRITE:
    case Op::FALLOCATE:
      MarkOwn(GetHandle(rq.getFh())->node, IN_MODIFY | IN_CLOSE_WRITE);
      break;
    default:
      break;
  }
}

void FileSession::EndOwnChange(schema::FileRequest::Reader rq,
                               schema::FileResponse::Reader rs) {
  std::vector<std::pair<uint64_t, std::string>> tell;
  {
    std::lock_guard lock(mutex_);
    for (auto& key : EntriesChangedBy(rq)) {
      auto it = own_entries_.find(key);
      if (it == own_entries_.end()) continue;
      OwnEntry& own = it->second;
      if (rs.getError() != 0) {
        // Nothing was changed: an event heard meanwhile may have been someone else's.
        if (own.heard) tell.push_back(key);
        own_entries_.erase(it);
      } else if (own.pending) {
        own.pending = false;
        own.at = std::chrono::steady_clock::now();
        EntryHolds made;
        if (rs.hasEntry()) {
          made = {true, {rs.getEntry().getAttr().getDev(), rs.getEntry().getAttr().getIno()}};
        }
        own.holds.push_back(made);
        if (own.heard && !HoldsOwn(key, own)) tell.push_back(key);  // changed by another since
      }
    }
  }
  for (const auto& [dir, name] : tell) {
    try {
      notify_(0, dir, name);
    } catch (const std::exception& e) {
      spdlog::debug("file service: notice not sent: {}", e.what());
    }
  }
}

void FileSession::MarkOwn(uint64_t node, uint32_t events) {
  auto now = std::chrono::steady_clock::now();
  std::lock_guard lock(mutex_);
  if (own_.size() > 100000) own_.clear();
  OwnMark& own = own_[node];
  if (now - own.at >= kOwnChangeWindow) own.events = 0;
  own.at = now;
  own.events |= events;
}

void FileSession::MarkOwnObject(const EntryHolds& held) {
  if (!held.present) return;
  uint64_t id;
  {
    std::lock_guard lock(mutex_);
    auto it = by_inode_.find(held.object);
    if (it == by_inode_.end()) return;  // never looked up by this client: not watched
    id = it->second;
  }
  MarkOwn(id);
}

void FileSession::MarkOwnEntry(uint64_t dir, const std::string& name,
                               std::optional<EntryHolds> holds) {
  constexpr size_t kKept = 8;  // states of one entry within the window
  auto now = std::chrono::steady_clock::now();
  std::lock_guard lock(mutex_);
  if (own_entries_.size() > 100000) own_entries_.clear();
  OwnEntry& own = own_entries_[{dir, name}];
  if (!own.pending && now - own.at >= kOwnChangeWindow) own = OwnEntry{};
  own.at = now;
  if (holds) {
    if (own.holds.size() == kKept) own.holds.erase(own.holds.begin());
    own.holds.push_back(*holds);
  } else {
    own.pending = true;
  }
}

bool FileSession::HoldsOwn(const std::pair<uint64_t, std::string>& key, const OwnEntry& own) {
  auto dir = nodes_.find(key.first);
  if (dir == nodes_.end()) return false;
  int dir_fd;
  try {
    dir_fd = NodeFdLocked(*dir->second);
  } catch (const OpError&) {
    return false;  // the directory is gone
  }
  UsedLocked(key.first, *dir->second);
  EntryHolds now = HeldAt(dir_fd, key.second);
  return std::find(own.holds.begin(), own.holds.end(), now) != own.holds.end();
}

bool FileSession::OwnEntryEvent(const std::pair<uint64_t, std::string>& key, bool emptied,
                                std::chrono::steady_clock::time_point now) {
  auto it = own_entries_.find(key);
  if (it == own_entries_.end()) return false;
  OwnEntry& own = it->second;
  // An event that left the entry empty is the client's own when one of its changes left
  // it so, without a look at the entry (a lookup that scans a big directory): whatever
  // came after has an event of its own.
  auto left_as_own = [&] {
    return (emptied && std::find(own.holds.begin(), own.holds.end(), EntryHolds{}) !=
                           own.holds.end()) ||
           HoldsOwn(key, own);
  };
  // A create in flight: checked when it is answered (EndOwnChange).
  if (!own.pending && (now - own.at >= kOwnChangeWindow || !left_as_own())) return false;
  own.heard = true;
  return true;
}

void FileSession::Watch(Notify notify) {
  Fd inotify = Fd::Adopt(::inotify_init1(IN_NONBLOCK | IN_CLOEXEC));
  Fd stop = Fd::Adopt(inotify.valid() ? ::eventfd(0, EFD_CLOEXEC) : -1);
  if (!stop.valid()) {
    spdlog::warn("file service: no change notices: {}", std::strerror(errno));
    return;
  }
  inotify_ = std::move(inotify);
  stop_watching_ = std::move(stop);
  notify_ = std::move(notify);
  watcher_ = std::thread([this] { WatchLoop(); });
}

std::vector<std::pair<uint64_t, std::string>> FileSession::ChangedBy(const char* events,
                                                                    size_t size) {
  // One notice per object or entry per batch, none for this client's own changes.
  std::vector<std::pair<uint64_t, std::string>> changed;
  std::set<std::pair<uint64_t, std::string>> told;
  auto now = std::chrono::steady_clock::now();
  std::lock_guard lock(mutex_);
  for (const char* at = events; at < events + size;) {
    auto* event = reinterpret_cast<const inotify_event*>(at);
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
    if (event->len) {
      if (OwnEntryEvent(key, event->mask & (IN_DELETE | IN_MOVED_FROM), now)) continue;
    } else if (auto own = own_.find(key.first);
               own != own_.end() && now - own->second.at < kOwnChangeWindow &&
               (event->mask & ~(own->second.events | IN_ISDIR)) == 0) {
      continue;
    }
    if (told.insert(key).second) changed.push_back(std::move(key));
  }
  if (now - own_pruned_at_ >= kOwnSweepPeriod) {
    own_pruned_at_ = now;
    std::erase_if(own_, [&](const auto& own) { return now - own.second.at > kOwnChangeWindow; });
    std::erase_if(own_entries_, [&](const auto& own) {
      return now - own.second.at > kOwnChangeWindow && !own.second.pending;
    });
  }
  return changed;
}

void FileSession::WatchLoop() {
  alignas(inotify_event) char buffer[64 * 1024];
  bool just_read = false;
  for (;;) {
    // After a batch, events gather for a moment before the next read: inotify merges a
    // file's repeated events while they wait (a stream of writes or appends makes one
    // per write), and a watcher already woken is not woken again by each.
    if (just_read) {
      pollfd stop{stop_watching_.get(), POLLIN, 0};
      if (::poll(&stop, 1, kNoticeGather) > 0) return;
    }
    pollfd p[2] = {{inotify_.get(), POLLIN, 0}, {stop_watching_.get(), POLLIN, 0}};
    just_read = false;
    if (::poll(p, 2, -1) < 0) continue;  // EINTR
    if (p[1].revents) return;
    just_read = true;
    ssize_t n = ::read(inotify_.get(), buffer, sizeof buffer);
    if (n <= 0) continue;
    for (const auto& [node, name] : ChangedBy(buffer, static_cast<size_t>(n))) {
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

}  // namespace homeward
