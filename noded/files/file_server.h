// FileServer: the home side of homefs. Serves the node's export root to authenticated
// peers: each connection is a FileSession with its own table of looked-up objects (an
// O_PATH descriptor each, like libfuse's passthrough_ll) and open files; requests run on
// a shared thread pool, each with the caller's uid, gid and groups set on the serving
// thread, so the kernel itself checks every permission exactly as for a local process.
// Every name is resolved beneath the object's descriptor with openat2(RESOLVE_BENEATH |
// RESOLVE_NO_MAGICLINKS): no path, symlink or ".." reaches outside the export root.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <functional>
#include <list>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "fd.h"
#include "home_handover.h"
#include "home_locks.h"
#include "lock_holder_socket.h"
#include "lock_keeper.h"
#include "peer_auth.h"
#include "fault.h"
#include "replay_cache.h"
#include "secure_channel.h"
#include "schema/files.capnp.h"

namespace homeward {

inline constexpr size_t kMaxFileFrameBytes = 4 << 20;  // a 1 MiB write plus headers

// A fixed set of worker threads. Each worker has its own fs context (umask 0) and sets
// its own fs credentials per job, which is why the pool is not shared with other code.
class WorkerPool {
 public:
  explicit WorkerPool(int threads);
  WorkerPool(const WorkerPool&) = delete;
  WorkerPool& operator=(const WorkerPool&) = delete;
  ~WorkerPool();
  void Post(std::function<void()> job);

 private:
  void Run();
  std::mutex mutex_;
  std::condition_variable ready_;
  std::deque<std::function<void()>> jobs_;
  bool stopping_ = false;
  std::vector<std::thread> threads_;
};

// Jobs that run one after another, in the order posted, on a pool's workers: a
// connection's writes. Its client acknowledges a write before the home has done it
// (homefs's write-behind), so one writer's writes may be in flight together, and the
// later must land later (two appends, two writes of one block).
class Strand : public std::enable_shared_from_this<Strand> {
 public:
  explicit Strand(WorkerPool& pool) : pool_(pool) {}
  void Post(std::function<void()> job);
  // Runs `job` on the calling thread if nothing of the strand's is queued or running
  // (a small write: waking a worker would cost more than the write), else posts it.
  void RunOrPost(std::function<void()> job);

 private:
  void Drain();
  WorkerPool& pool_;
  std::mutex mutex_;
  std::deque<std::function<void()>> jobs_;
  bool running_ = false;  // a worker drains jobs_
};

struct EntryHolds;

// One client's view of the export: its looked-up objects and its open files.
class FileSession {
 public:
  // How requests for uid 0 are served.
  enum class Root {
    kSquash,  // as the unprivileged kSquashedId (NFS's root_squash): the default
    kTrust,   // as root ([files] trust_root: the peers' root is this node's root)
  };
  static constexpr uint32_t kSquashedId = 65534;  // nobody, nogroup

  // `root` is an O_PATH descriptor of the export root (borrowed, outlives the session);
  // `replay` (borrowed, may be null) remembers non-idempotent requests across connections;
  // `locks`: shared by the server's sessions (one of its own when not given).
  explicit FileSession(int root, Root peer_root = Root::kSquash, ReplayCache* replay = nullptr,
                       std::shared_ptr<HomeLocks> locks = nullptr);
  FileSession(const FileSession&) = delete;
  FileSession& operator=(const FileSession&) = delete;

  ~FileSession();

  // Sends the answer of a request that waited (a lock), with only its errno.
  using Later = std::function<void(int err)>;
  // Performs one request with the caller's credentials (on the calling thread) and fills
  // the response. Never throws: failures become the response's errno. Returns false when
  // the request waits for a lock: then `later` answers it, once, from another thread.
  bool Handle(schema::FileRequest::Reader request, schema::FileResponse::Builder response,
              Later later = {});

  // Ends every lock wait of this client with `err`, and any it starts from now on (its
  // connection ended: a request still being handled must not start a wait).
  void EndLockWaits(int err);
  // Drops every lock this client holds and ends its waits with ENOLCK: its node was
  // declared dead. The session goes on (a node wrongly declared dead keeps its files).
  void DropLocks();

  // A job at home leaves on a move (see ARCHITECTURE.md, "Locks of a job that leaves
  // home"): the descriptions its locks are held through are parked under `token`, as a
  // guest's are by PARK_LOCKS, for the target's homefs to claim and bind. Returns how many
  // were parked (0: nothing, no token to send).
  static size_t ParkHomeJob(HomeLocks& locks, uint64_t token, const std::vector<HomeJobLock>& held);

  // Change notices: every object the client looked up is watched (inotify), and a change
  // made at home by anyone but this client — a local process, another node — is reported
  // through `notify(node, parent, name)` from a thread of the session's own: node != 0
  // for an object's data or attributes, parent and name for a directory entry.
  using Notify = std::function<void(uint64_t node, uint64_t parent, const std::string& name)>;
  void Watch(Notify notify);

  // The client's node (its host), which names what the lock keeper holds for it.
  void SetHost(std::string host) { host_ = std::move(host); }

 private:
  friend class FileOps;  // the handlers of each request kind (file_handlers.cc)
  friend class HomeHandover;  // holds a job that comes home's carried locks for it
  struct Node;
  struct OpenFile;
  struct LockOwner;
  struct Carried;
  // The node or open file a request names, held by the request for as long as it uses
  // the descriptor (ESTALE or EBADF when there is none). A node whose descriptor was
  // reclaimed is opened again (ESTALE when its object is gone).
  std::shared_ptr<Node> GetNode(uint64_t id);
  std::shared_ptr<OpenFile> GetHandle(uint64_t fh);
  uint64_t AddHandle(std::shared_ptr<OpenFile> handle);
  // Records one lookup of `fd`'s object and fills `entry`, with the node id. True when
  // the object was known to this client already (and so watched before).
  bool Remember(Fd fd, schema::Entry::Builder entry);
  void LookupInto(int dir_fd, const std::string& name, schema::Entry::Builder entry);
  // The lock requests (getlk, setlk, flock, lockCancel, unlockOwner): false when `later`
  // will answer, nothing for any other request. Never in the replay cache: homefs does
  // not send them again (the locks went with the connection).
  std::optional<bool> DispatchLock(schema::FileRequest::Reader request,
                                   schema::FileResponse::Builder response, Later& later);
  // Whether an O_APPEND write's data is in its file at `base` (one started and not logged
  // done before a restart; see ReplayCache::StartAppend).
  bool AppendedAt(schema::FileRequest::Reader rq, int64_t base);
  // Whether sending `request` twice could apply it twice (see ReplayCache).
  bool NonIdempotent(schema::FileRequest::Reader request);
  // Answers a request the replay cache says was performed already, with `err`.
  void Replay(schema::FileRequest::Reader request, schema::FileResponse::Builder response,
              int err);
  // Dispatch, remembered in the replay cache when the request is non-idempotent.
  void Perform(schema::FileRequest::Reader request, schema::FileResponse::Builder response);
  // Calls the request kind's handler.
  void Dispatch(schema::FileRequest::Reader request, schema::FileResponse::Builder response);
  // The description that holds `owner`'s POSIX (or OFD) locks on the file open as `fh`,
  // opened on first use; nullptr when there is none and `create` is false.
  // `carry`, `carry_pid`: the request's tag (a process of a job whose locks this client
  // claimed): an owner not known yet is bound to the carried description of that process.
  std::shared_ptr<LockOwner> OwnerOf(uint64_t fh, const OpenFile& file, uint64_t owner,
                                     bool create, uint64_t carry = 0, int32_t carry_pid = 0);
  // The job's restore opened `file` (tagged `carry`): a carried flock on its object binds.
  void BindCarriedFlock(uint64_t carry, OpenFile& file);
  // Locks across a restart of the daemon (see ARCHITECTURE.md, "Locks across a restart"):
  // what the lock keeper held for this client (its hello's id) before becomes its own again;
  // a flock binds to the first open of its file (the client opens its files again).
  void AdoptKept();
  void BindKeptFlock(OpenFile& file);
  // What the lock keeper is told of a lock owner's description, or of a flocked file's.
  LockKeeper::Meta OwnerMeta(uint64_t owner, std::pair<uint64_t, uint64_t> inode, int pid,
                             int access) const;
  // Drops what `owner` holds on `inode` (all of it: a close by its process).
  void DropOwner(std::pair<uint64_t, uint64_t> inode, uint64_t owner);
  // The file `fh` was closed: the owners that locked only through it go.
  void DropOwnersOf(uint64_t fh);
  void WatchLoop();
  // The watched objects and entries that `events` (inotify's) report changed by others,
  // each once, in the order of their first change: a notice never overtakes an earlier
  // change's, so one who hears of a change has heard of every change made before it.
  std::vector<std::pair<uint64_t, std::string>> ChangedBy(const char* events, size_t size);
  // Remembers that this client itself changes what `request` names, so the notice of its
  // own change is not sent back to it: an object's content or attributes for a moment (an
  // open and a lock revalidate them), a directory entry by what the change leaves it
  // holding, so that anyone else's change to that entry meanwhile is still told.
  void MarkOwnChange(schema::FileRequest::Reader request);
  // After `request` was performed: what a create left its entry holding; a failed
  // request's entries are not its own change.
  void EndOwnChange(schema::FileRequest::Reader request, schema::FileResponse::Reader response);
  // `events`: the inotify events the change makes (a write's: its content, not its
  // attributes, so that a mode or capability set by anyone else meanwhile is still told).
  void MarkOwn(uint64_t node, uint32_t events = ~0u);
  // The object `held` names, if this client looked it up (its own watch).
  void MarkOwnObject(const EntryHolds& held);
  struct OwnEntry;
  void MarkOwnEntry(uint64_t dir, const std::string& name, std::optional<EntryHolds> holds);
  // Whether entry `key` (directory node, name) holds what one of this client's changes
  // left it holding (mutex_ held).
  bool HoldsOwn(const std::pair<uint64_t, std::string>& key, const OwnEntry& own);
  // Whether the event of entry `key` is this client's own change (mutex_ held);
  // `emptied`: the event removed or moved away what the entry held.
  bool OwnEntryEvent(const std::pair<uint64_t, std::string>& key, bool emptied,
                     std::chrono::steady_clock::time_point now);
  // Node descriptors (see Node): `node`'s, opened again from its file handle if it was
  // reclaimed; and reclaiming those of nodes no request holds, least recently used
  // first, while the daemon's node descriptors are more than half its limit (mutex_ held).
  int NodeFdLocked(Node& node);
  void ReclaimLocked();
  // A node was used: first in line to keep its descriptor (mutex_ held).
  void UsedLocked(uint64_t id, Node& node);
  // A node's file handle: a directory's when it is looked up (`names_mount`: the first
  // directory seen on a mount names it), a file's before its descriptor is first closed.
  // A node that gives none, or whose mount the session does not know, is not reclaimable.
  void TakeHandleLocked(Node& node, bool names_mount);

  int root_;
  Root peer_root_;
  ReplayCache* replay_;
  uint64_t client_ = 0;  // the client's id, from its hello (0: an old client, no replays)
  std::mutex mutex_;
  std::unordered_map<uint64_t, std::shared_ptr<Node>> nodes_;
  std::map<std::pair<uint64_t, uint64_t>, uint64_t> by_inode_;
  // Nodes whose descriptor may be reclaimed and is open, the most recently used first.
  std::list<uint64_t> open_nodes_;
  // Half the descriptor limit, read again every kBudgetReadEvery reclaims (a system call
  // saved on most lookups; the limit changes only by an administrator's prlimit).
  static constexpr int kBudgetReadEvery = 64;
  int64_t fd_budget_ = 0;
  int reclaims_since_read_ = 0;
  // A directory of each mount seen (by mount id), which open_by_handle_at names the mount by.
  std::unordered_map<int, Fd> mounts_;
  std::unordered_map<uint64_t, std::shared_ptr<OpenFile>> handles_;
  uint64_t next_node_ = 2;  // 1 is the root
  std::shared_ptr<HomeLocks> locks_;
  std::mutex owners_mutex_;
  // (lock owner, (st_dev, st_ino)) -> its description.
  std::map<std::pair<uint64_t, std::pair<uint64_t, uint64_t>>, std::shared_ptr<LockOwner>>
      owners_;
  // Locks of jobs that moved here, claimed and not bound yet, by token (owners_mutex_).
  std::map<uint64_t, std::shared_ptr<Carried>> claimed_;
  std::string host_;
  // Flocks the lock keeper held for this client before a restart, not bound to an open
  // file yet, by (st_dev, st_ino) (owners_mutex_).
  std::multimap<std::pair<uint64_t, uint64_t>, LockKeeper::Orphan> kept_flocks_;

  Fd inotify_;
  Fd stop_watching_;  // an eventfd: written once to end WatchLoop
  Notify notify_;
  std::thread watcher_;
  std::unordered_map<int, uint64_t> watches_;  // inotify wd -> node
  struct OwnMark {
    std::chrono::steady_clock::time_point at;
    uint32_t events = 0;  // the inotify events of this client's changes since `at`
  };
  std::unordered_map<uint64_t, OwnMark> own_;  // by node
  std::map<std::pair<uint64_t, std::string>, OwnEntry> own_entries_;  // by (dir node, name)
  std::chrono::steady_clock::time_point own_pruned_at_{};  // when own_ and own_entries_ were swept
  uint64_t next_handle_ = 1;
};

class FrameStream;
class Gate;

// What the file service answered, for /metrics: every request, those that failed, and
// the time spent handling them (from its turn to its answer, lock waits excluded).
struct FileServiceStats {
  std::atomic<uint64_t> requests{0};
  std::atomic<uint64_t> errors{0};
  std::atomic<uint64_t> micros{0};
};

class FileServer {
 public:
  // Opens `export_root` (O_PATH). Throws Error naming the path when it cannot.
  // `replay_log`: where the replay cache is kept (in the state directory; empty: memory),
  // and how durably (`[files] sync_replay_log`). `faults`: kill-after-append; no-file-notices (clients get no change notices, which
  // shows close-to-open alone).
  FileServer(const std::string& export_root, int threads,
             FileSession::Root peer_root = FileSession::Root::kSquash,
             const std::string& replay_log = {},
             ReplayCache::Durability replay_durability = ReplayCache::Durability::kWritten,
             const FaultPoints& faults = {});
  FileServer(const FileServer&) = delete;
  FileServer& operator=(const FileServer&) = delete;
  ~FileServer();

  // Serves one authenticated connection until it closes (blocking: call it on the
  // connection's own thread), then waits for its requests in flight (a Gate, no polling).
  void Serve(Fd connection, const PeerIdentity& peer);
  // The same over an encrypted peer connection, read and written in place.
  void Serve(std::unique_ptr<SecureStream> connection, const PeerIdentity& peer);
  // Shuts every connection down and waits for their threads to finish serving.
  void Stop();
  // The node at `address` (with or without a port) was declared dead: its clients' locks
  // go (DropLocks).
  void DropLocks(const std::string& address);
  // A job at home leaving on a move: see FileSession::ParkHomeJob. Unpark: the move
  // failed (the job holds its locks here on as before); what is parked goes.
  size_t ParkHomeJob(uint64_t token, const std::vector<HomeJobLock>& held) {
    return FileSession::ParkHomeJob(*locks_, token, held);
  }
  void UnparkHomeJob(uint64_t token) { locks_->Unpark(token); }
  // A job coming home (see HomeHandover): its locks parked under `token` are held for the
  // job of user `uid` restored in mount namespace `mntns`; Restored once criu restored it,
  // Unclaim when it failed (parked again for the source's unpark).
  bool ClaimComingHome(uint64_t token, uint64_t mntns, uid_t uid) {
    return handover_.Claim(token, mntns, uid);
  }
  void RestoredHome(uint64_t token) { handover_.Restored(token); }
  void UnclaimComingHome(uint64_t token) { handover_.Unclaim(token); }
  // Answers jobs at home that ask who holds a lock (LockHolderSocket) on `path`, and hands
  // a job that came home its locks.
  void ServeLockHolders(const std::string& path) {
    holders_ = std::make_unique<LockHolderSocket>(locks_, path, &handover_);
  }
  // The inits of this node's jobs at home now (HomeLocks::SetJobInits).
  void SetJobInits(std::vector<pid_t> inits) { locks_->SetJobInits(std::move(inits)); }
  const FileServiceStats& stats() const { return *stats_; }

 private:
  // Serve's pieces: counts the connection `fd` in (false when stopping); makes the
  // peer's session, whose change notices go out on `stream`; reads and runs the requests
  // until the connection ends (returns why); counts the connection and its session out.
  bool Register(int fd);
  std::shared_ptr<FileSession> OpenSession(const PeerIdentity& peer,
                                           const std::shared_ptr<FrameStream>& stream);
  std::string ServeRequests(const std::shared_ptr<FileSession>& session,
                            const std::shared_ptr<FrameStream>& stream,
                            const std::shared_ptr<Gate>& in_flight);
  void Unregister(int fd, const std::shared_ptr<FileSession>& session);
  Fd root_;
  FileSession::Root peer_root_;
  bool notices_ = true;
  std::shared_ptr<HomeLocks> locks_ = std::make_shared<HomeLocks>();
  HomeHandover handover_{locks_};
  std::unique_ptr<LockHolderSocket> holders_;  // goes before handover_
  ReplayCache replay_;
  std::shared_ptr<FileServiceStats> stats_ = std::make_shared<FileServiceStats>();
  WorkerPool pool_;
  std::mutex mutex_;
  std::condition_variable idle_;
  std::set<int> connections_;
  std::multimap<std::string, std::weak_ptr<FileSession>> sessions_;  // by peer host
  bool stopping_ = false;
};

}  // namespace homeward
