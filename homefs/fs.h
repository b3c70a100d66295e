// Fs: the homefs FUSE low-level operations. The context object main() builds: it owns
// the inode table (local FUSE node ids for the home's objects) and forwards every
// operation to the home's file service with the caller's uid, gid and groups.
//
// Local node ids are stable for the life of the mount; each remembers the home's id for
// its object in the current connection generation, and the parent and name it was
// found under, so that after a reconnection (a restarted home daemon knows none of the
// old ids) an object is found again by its path.
#pragma once

#include <fuse_lowlevel.h>
#include <sys/statvfs.h>

#include <array>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <functional>
#include <map>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <thread>
#include <unordered_map>
#include <vector>

#include "client.h"
#include "criu_acting.h"
#include "request.h"
#include "work_thread.h"
#include "writes_behind.h"

namespace homeward {

// One process serves every home (HomeTree): each home's Fs gives out node ids and file
// handles of a range of its own, `slot << kSlotShift` and up, so that the number alone
// says whose it is. The top 16 bits of a handle are Fs's own (kDeferred), the rest holds
// a node id, so slots are below 2^(48 - kSlotShift).
inline constexpr int kSlotShift = 36;
inline constexpr uint64_t kMaxSlots = uint64_t{1} << (48 - kSlotShift);
inline uint64_t SlotOf(uint64_t id) {
  return (id & ((uint64_t{1} << 48) - 1)) >> kSlotShift;
}

struct FsOptions {
  // Seconds the kernel may trust a name lookup and attributes. The home's change notices
  // invalidate sooner whatever changes there, so these only bound how stale a cache can
  // be when a notice is lost (inotify limits, a broken connection).
  double entry_timeout = 10.0;
  double attr_timeout = 10.0;
  // Where this node's daemon writes down the user criu acts for (criu_acting.h): root's
  // calls from such a job's mount namespace get that user's rights. Empty: never.
  std::string criu_acting_dir;
  // The first of this Fs's node ids and handles (its root is id_base | 1): 0 for a mount
  // of its own (the root is FUSE_ROOT_ID), slot << kSlotShift in a HomeTree.
  uint64_t id_base = 0;
  // Writes are acknowledged once sent, before the home answers (see WritesBehind), except
  // on files opened O_SYNC or O_DSYNC. False (`-o sync_writes`): each waits for the home.
  bool write_behind = true;
};

class Fs {
 public:
  Fs(FileClient& client, FsOptions options, schema::Attr::Reader root);
  Fs(const Fs&) = delete;
  Fs& operator=(const Fs&) = delete;
  ~Fs();

  // Turns the home's change notices into kernel cache invalidations, on a thread of its
  // own: an invalidation may wait for a page lock held by a request that waits for the
  // receiving thread, so the receiving thread must never make one itself.
  void StartNotices(fuse_session* session);
  // Stops them (before the session goes).
  void StopNotices();
  // Stops sending requests again (before the client stops).
  void StopResending();

  // Drops the kernel's cached pages and attributes of `ino`, then runs `then` (for example
  // answering a request), on the notice thread: an invalidation waits for page locks,
  // which a read in flight holds until the receiving thread answers it, so the receiving
  // thread must never wait for one. For a lock acquisition to revalidate the file (as NFS
  // does): answer the lock in `then`, and the locker's next read and stat ask the home.
  // `then` runs even when nothing was cached (or the mount is going away).
  void DropCache(fuse_ino_t ino, std::function<void()> then = {});

  // The root's node id, and an entry for it with the attributes last heard from the home
  // (a HomeTree's listing of the home, which never waits for it).
  fuse_ino_t root() const { return root_; }
  fuse_entry_param RootEntry();
  // Whether nothing of this mount needs its connection: no open file, lock, lock wait,
  // carried locks or pending notice (HomeTree then lets the connection go when idle).
  bool Idle();

  // One method per operation, named as in fuse_lowlevel_ops.
  static void Init(fuse_conn_info* conn);
  void Lookup(Request r, fuse_ino_t parent, const std::string& name);
  void Forget(fuse_ino_t ino, uint64_t nlookup);
  void Getattr(Request r, fuse_ino_t ino, fuse_file_info* fi);
  void Setattr(Request r, fuse_ino_t ino, const struct stat& attr, int to_set, fuse_file_info* fi);
  void Readlink(Request r, fuse_ino_t ino);
  void MakeNode(Request r, schema::FileOp op, fuse_ino_t parent, const std::string& name,
                mode_t mode, dev_t rdev, const std::string& target);
  void Remove(Request r, schema::FileOp op, fuse_ino_t parent, const std::string& name);
  void Rename(Request r, fuse_ino_t parent, const std::string& name, fuse_ino_t newparent,
              const std::string& newname, unsigned flags);
  void Link(Request r, fuse_ino_t ino, fuse_ino_t newparent, const std::string& newname);
  void Open(Request r, fuse_ino_t ino, fuse_file_info* fi, bool dir);
  void Create(Request r, fuse_ino_t parent, const std::string& name, mode_t mode,
              fuse_file_info* fi);
  void Read(Request r, size_t size, off_t off, fuse_file_info* fi);
  void Write(Request r, const char* buf, size_t size, off_t off, fuse_file_info* fi);
  void Simple(Request r, schema::FileOp op, fuse_file_info* fi, uint32_t flags);
  void Release(Request r, schema::FileOp op, fuse_file_info* fi);
  void Readdir(Request r, fuse_ino_t ino, size_t size, off_t off, fuse_file_info* fi, bool plus);
  void Statfs(Request r, fuse_ino_t ino);
  void Access(Request r, fuse_ino_t ino, int mask);
  void Xattr(Request r, schema::FileOp op, fuse_ino_t ino, const std::string& name,
             const char* value, size_t size, int flags);
  void Fallocate(Request r, int mode, off_t offset, off_t length, fuse_file_info* fi);
  // Locks are the home's (see ARCHITECTURE.md, "Locks"): taken there, held there.
  void Getlk(Request r, fuse_ino_t ino, fuse_file_info* fi, const struct flock& lock);
  void Setlk(Request r, fuse_ino_t ino, fuse_file_info* fi, const struct flock& lock, bool sleep);
  // The kHomefsLockHolder ioctl (lock_holder.h): the holder's home id of the lock the
  // caller's last F_GETLK on this file reported.
  void LockHolder(Request r, fuse_file_info* fi, const void* in, size_t in_size, size_t out_size);
  // A file that holds locks, opened on a connection that broke, is opened again before
  // its close is sent (the home kept its locks across a restart of its daemon).
  void ReopenLocked(uint64_t fh, bool locks);
  void Flock(Request r, fuse_ino_t ino, fuse_file_info* fi, int op);
  // A close: the closing process's POSIX locks on the file go (at the home).
  void Flush(Request r, fuse_ino_t ino, fuse_file_info* fi);
  // The kernel interrupted the lock wait `serial` (its caller got a signal).
  void LockInterrupted(uint64_t serial);
  // The daemon's trusted.homeward.drain on the root, once a job that moves is frozen:
  // answered when every write behind is at the home, with EIO if one failed and its
  // writer has not heard yet (the job stays to hear it), or ETIMEDOUT if the home is
  // silent (the writes wait for it; a job elsewhere would not see them).
  void DrainWrites(Request r);

 private:
  // The extended attributes the kernel asks for by itself (Inode::xattr_absent_until).
  static constexpr std::array<std::string_view, 3> kKernelXattrs = {
      "security.capability", "system.posix_acl_access", "system.posix_acl_default"};
  struct Inode {
    uint64_t remote = 0;  // the home's id, valid in generation `generation`
    uint64_t generation = 0;
    uint64_t remote_lookups = 0;  // lookups the home counted for `remote`
    uint64_t lookups = 0;         // the kernel's count
    fuse_ino_t parent = 0;
    std::string name;
    std::pair<uint64_t, uint64_t> key;  // the home's (st_dev, st_ino)
    // The attributes last heard from the home: answered when the home is silent.
    struct stat attr {};
    bool has_attr = false;
    // A directory this client just changed: the home sent `attr` with its answer, and the
    // kernel's next getattr (it drops its copy after every create and remove) is
    // answered with it until then, unless a change notice comes first (DirChanged).
    std::chrono::steady_clock::time_point fresh_until{};
    // Removals from this directory sent behind and not answered yet (RemoveBehind); the
    // kernel is given `attr` with this node's clock for their times meanwhile.
    uint32_t removals_behind = 0;
    // Close-to-open: the home's size, mtime and ctime when the kernel's pages were last
    // dropped (at an open); an open that finds them unchanged keeps the pages.
    std::optional<std::array<int64_t, 3>> pages_of;
    // The last open of this object failed with ESTALE (its name holds another object
    // now); the next one is not checked, so that an object reached without its name
    // (a reopen through /proc of a removed file) still opens.
    bool refused_stale = false;
    // A directory this client made: every name in it is known here (by_name_) until
    // then, unless first a notice of a change in it, a name of it forgotten here, or a new
    // connection (KnownAbsent). A lookup of another name is answered "absent" without
    // the home: a job filling a directory it made asks nothing before each new name.
    std::chrono::steady_clock::time_point whole_until{};
    // The extended attributes the kernel asks for by itself (kKernelXattrs: a file's
    // capabilities before every write to it, to drop them; the POSIX ACLs at permission
    // checks, again each time it refreshed the attributes), each when the home last
    // answered it has none: until then that is answered here, unless first a notice about
    // the object, an attribute set or removed through this mount, or a new connection.
    std::array<std::chrono::steady_clock::time_point, kKernelXattrs.size()> xattr_absent_until{};
  };
  struct Prepared;
  // A file this mount has open: the kernel's handle is a local number, stable across
  // connections; the home's handle is of one connection, and opened again on the next.
  struct OpenHandle {
    fuse_ino_t ino = 0;
    uint32_t flags = 0;
    bool dir = false;
    uint64_t remote = 0;  // the home's handle, valid in `generation`
    uint64_t generation = 0;
    uint32_t uid = 0, gid = 0;  // the opener's credentials, to open it again as them
    std::vector<uint32_t> groups;
    // The process (this node's pid) that took a flock through it, or whose job's restore
    // opened it with carried locks: a later move of that job parks its flock.
    pid_t flocker = 0;
  };
  // Answers a request from the home's reply (err: the client's, e.g. EIO, EINTR).
  using Handler = std::function<void(Request&, int err, IncomingMessage*, uint64_t generation)>;

  // Starts a request on behalf of `r`: waits for the writes and removals behind to be
  // answered (every request but a write, which waits in Write if it is sent in step, or
  // one sent behind) and for the connection, and fills in the caller's credentials.
  // Answers EIO and returns nothing when the home is unreachable.
  // `behind`: the request is sent behind (its caller answered first), so it waits for
  // nothing sent before it: the home keeps the order.
  std::unique_ptr<Prepared> Prepare(Request& r, schema::FileOp op, bool behind = false);
  // Waits until no write is behind, so that what `r` asks sees them all at the home.
  // Ends early when the home is silent for a caller that may be answered from the cache
  // (root), and answers EINTR (returning false) to one that was interrupted meanwhile.
  bool AwaitWrites(Request& r);
  // A write sent behind: the kernel is answered before it is sent, the home's answer goes
  // to behind_ (the data is copied: it is sent again if its connection breaks).
  void WriteBehind(Request r, std::unique_ptr<Prepared> p, size_t size, uint64_t fh);
  // Forgets that `ino` is the inode of its key and remote id (mutex_ held).
  void UnmapLocked(fuse_ino_t ino, const Inode& inode);
  // Whether an unlink or rmdir (`op`) of `name` from `parent` may be sent behind: the
  // directory is as this client last changed it (Inode::fresh_until: no notice of
  // another's change since) and the name is known here, so the permission check the
  // kernel just made is the home's; a directory removed is known empty here (whole, and
  // no name left in it). The home's only answers would be failures of the home itself.
  bool RemovesBehind(schema::FileOp op, fuse_ino_t parent, const std::string& name);
  // An unlink or rmdir sent behind, in order with the writes: the caller is answered once
  // it is sent, every later request but writes and removals behind waits for it (behind_), and
  // a move of the job waits for it too. One the home refuses brings the name back (the
  // kernel looks it up again) and is reported by the directory's next fsync.
  void RemoveBehind(Request r, std::unique_ptr<Prepared> p, fuse_ino_t parent,
                    const std::string& name, uint64_t heard);
  // `removed_dir`: the directory an rmdir removed (0 for an unlink). A refused one is
  // unmapped, so that the name found again gets a new inode.
  void RemovalAnswered(fuse_ino_t parent, const std::string& name, fuse_ino_t removed_dir,
                       int err);
  // The first refused removal behind from the directory open as `fh`, not reported yet.
  int TakeRemovalError(uint64_t fh);
  // The caller's supplementary groups (cached briefly per process).
  std::vector<gid_t> Groups(fuse_req_t req, pid_t pid);
  // The home's id of `ino` in `generation`, found again by path if need be.
  std::optional<uint64_t> Remote(fuse_ino_t ino, uint64_t generation);
  bool SetNode(Request& r, Prepared& p, fuse_ino_t ino);
  bool SetFh(Request& r, Prepared& p, fuse_file_info* fi);
  // Records a looked-up entry; `kernel` counts it as a lookup the kernel will forget.
  fuse_ino_t Learn(schema::Entry::Reader entry, uint64_t generation, fuse_ino_t parent,
                   const std::string& name, bool kernel);
  void ForgetRemote(uint64_t remote, uint64_t count, uint64_t generation);
  fuse_entry_param EntryParam(fuse_ino_t ino, schema::Attr::Reader attr) const;
  // Whether the caller may be answered from the cache while the home is silent: root
  // only (the node's CRIU dumping a guest past the grace opens and stats the job's files,
  // and would wait for the link like the job). A user's job waits for the home: a stale
  // size right after a lock revalidated the file would cut off what the last holder wrote.
  static bool MayAnswerFromCache(Request& r);
  // Sends and, when the home answers without error, runs `ok` on the receiving thread.
  // `stale`, when given, answers the request from the cache if the home stays silent;
  // `refused`, when given, is told the error the home answered with.
  template <typename Ok>
  void Call(Request r, std::unique_ptr<Prepared> p, Ok ok,
            std::function<void(Request&)> stale = {}, std::function<void(int)> refused = {});
  // Sends `p`; when its connection breaks first (hard mount), sends it again (Resend).
  void Issue(std::shared_ptr<Request> r, std::shared_ptr<Prepared> p, Handler handler,
             std::function<void(Request&)> stale);
  // Waits for the next connection, binds `p` to it and sends it again, on a thread of its
  // own (resends_), never the receiving thread.
  void Resend(std::shared_ptr<Request> r, std::shared_ptr<Prepared> p, Handler handler,
              std::function<void(Request&)> stale);
  // Runs `job` (a request sent again) on the resending thread.
  void Requeue(std::function<void()> job);
  // Sets the home's ids of what `p` names for `generation`: 0, kLost (the connection
  // broke meanwhile), or the errno to answer (ESTALE: the object is gone).
  int Rebind(Prepared& p, uint64_t generation);
  int Gone(uint64_t generation);
  // The home's handle of local handle `fh` on `generation`, opened again if need be.
  int RemoteFh(uint64_t fh, uint64_t generation, uint64_t* remote);
  uint64_t AddHandle(OpenHandle handle);
  OpenHandle HandleOf(Prepared& p, fuse_ino_t ino, int flags, bool dir);
  // The cache of a silent home (stale answers: see ARCHITECTURE.md, homefs).
  void RememberAttr(fuse_ino_t ino, const struct stat& attr);
  std::optional<struct stat> CachedAttr(fuse_ino_t ino);
  // `dir`, changed by a request of this client, is as `attr` says (the home's post-op
  // attributes), if no change notice arrived since the request was prepared (`heard`,
  // notices_heard_ then): one could be of a change the home made after `attr` was read.
  void DirChanged(fuse_ino_t dir, bool has_attr, schema::Attr::Reader attr, uint64_t heard);
  // Whether `name` is surely absent from `parent`, a directory whose every name is known
  // (Inode::whole_until); NotWholeLocked ends that knowledge (mutex_ held).
  bool KnownAbsent(fuse_ino_t parent, const std::string& name);
  // Answers a lookup that the name is absent (a negative entry, kept for entry_timeout).
  void Absent(Request& r);
  void NotWholeLocked(fuse_ino_t dir);
  // Ends what is known of `ino`'s absent attributes (mutex_ held).
  void XattrsUnknownLocked(fuse_ino_t ino);
  // Whether `ino` surely has no attribute kKernelXattrs[kind] (Inode::xattr_absent_until);
  // XattrAbsent records the home's answer "none" to a getxattr sent when `heard` notices
  // and `xattrs_set` attribute changes of this mount were counted, unless more came since.
  bool KnownXattrAbsent(fuse_ino_t ino, size_t kind);
  void XattrAbsent(fuse_ino_t ino, size_t kind, uint64_t generation, uint64_t heard,
                   uint64_t xattrs_set);
  // Attributes DirChanged left, with the seconds they are still good for.
  std::optional<std::pair<struct stat, double>> FreshAttr(fuse_ino_t ino);
  void ForgetName(fuse_ino_t parent, const std::string& name);
  // A lookup of a known name answered from the cache (the home stayed silent).
  void StaleLookup(Request& r, fuse_ino_t parent, const std::string& name);
  // A read of a file opened while the home was silent.
  void ReadDeferred(Request r, fuse_ino_t ino, size_t size, off_t off);
  // Sends a lock request; `waits`: it may wait at the home (cancelled by an interrupt);
  // `acquires`: success takes a lock, so the file's cached data and attributes go first.
  void LockCall(Request r, std::unique_ptr<Prepared> p, fuse_ino_t ino, bool waits,
                bool acquires);
  // Sends it (`serial`: its entry in lock_waits_, 0 for one that does not wait).
  void SendLock(std::shared_ptr<Request> shared, std::shared_ptr<Prepared> p, fuse_ino_t ino,
                uint64_t serial, bool acquires);
  // Its connection broke first (hard mount): waits for the next, binds it there and sends
  // it again, on the resending thread.
  void ResendLock(std::shared_ptr<Request> shared, std::shared_ptr<Prepared> p, fuse_ino_t ino,
                  uint64_t serial, bool acquires);
  // Locks across a move (see ARCHITECTURE.md, "Locks across a move"). The daemon asks by
  // setting trusted.homeward.{park,unpark,claim} on the root (root only): park what the
  // job in mount namespace `mntns` holds under `token`; forget `token` (the move failed);
  // claim `token` for the job that will be restored in mount namespace `mntns`.
  void CarryLocks(Request r, const std::string& what, const std::string& value);
  // Tags `rq` when its caller is a process of a job whose locks this mount claimed (the
  // home then binds them to the caller's lock owner or open file). Returns whether it did.
  bool TagCarry(fuse_req_t req, schema::FileRequest::Builder rq);
  void CancelLockWait(uint64_t generation, uint64_t id);
  // The home id of process `pid` of this node, as a setlk names its holder (HomeIdOf),
  // kept per process (home_ids_).
  pid_t HolderId(pid_t pid);

  FileClient& client_;
  FsOptions options_;
  fuse_ino_t root_;
  std::unique_ptr<CriuActingCache> criu_acting_;  // when options_.criu_acting_dir is set
  std::mutex mutex_;
  std::unordered_map<fuse_ino_t, Inode> inodes_;
  std::map<std::pair<uint64_t, uint64_t>, fuse_ino_t> by_key_;
  std::map<std::pair<fuse_ino_t, std::string>, fuse_ino_t> by_name_;  // parent and name
  // Names (parent, name) an open was refused by with ESTALE, and when: the next open by
  // that name is the kernel's retry, through the object its lookup found just now.
  std::map<std::pair<fuse_ino_t, std::string>, std::chrono::steady_clock::time_point>
      refused_names_;
  std::optional<struct statvfs> statfs_;
  fuse_ino_t next_ino_;
  struct Notice {
    uint64_t node, parent;
    std::string name;
    uint64_t generation;
    fuse_ino_t drop = 0;         // DropCache: this local node, not a notice of the home
    std::function<void()> then;  // DropCache: run after the drop
  };
  // The open's answer: keeps the pages when the home's file is as they were read, and
  // invalidates attributes the kernel holds that the home's no longer match.
  void Opened(fuse_ino_t ino, schema::FileResponse::Reader rs, fuse_file_info& fi);
  void Apply(Notice& notice);
  fuse_session* session_ = nullptr;
  // Change notices received, counted on the receiving thread (in order with answers).
  std::atomic<uint64_t> notices_heard_{0};
  // Extended attributes set or removed through this mount.
  std::atomic<uint64_t> xattrs_set_{0};
  // Notices and resends each run on a thread of their own, which exists only while
  // there is work (an idle home holds none).
  WorkThread notices_{"applying a change notice", std::chrono::seconds(5)};
  std::unordered_map<uint64_t, fuse_ino_t> by_remote_;  // current generation only
  std::unordered_map<uint64_t, OpenHandle> handles_;
  uint64_t next_fh_;
  // At most 16 MiB in 256 writes out at once.
  WritesBehind behind_{16 << 20, 256};
  std::mutex write_order_;  // held from a write behind's answer to the kernel to its send
  // A write behind this big goes to sends_ (a 1 MiB write took about 0.4 ms of CPU to seal
  // and send on loopback, a hand-over costs a wake-up).
  static constexpr size_t kSendApart = 128 << 10;
  // Removals behind count in behind_ under this handle (no file's: handles are odd).
  static constexpr uint64_t kRemovalsHandle = 0;
  // By directory: the first removal behind the home refused, until an fsync of it (mutex_).
  std::unordered_map<fuse_ino_t, int> removal_errors_;
  std::mutex reopen_mutex_;
  WorkThread resends_{"sending a request again", std::chrono::seconds(5)};

  std::mutex locks_mutex_;
  // (node, lock owner) that took a POSIX lock through this mount, with the pid (this
  // node's) that took it: a flush (close) of theirs drops the owner's locks at the home.
  // Others' flushes are answered here.
  std::map<std::pair<fuse_ino_t, uint64_t>, pid_t> lock_owners_;
  // Jobs whose carried locks this mount claimed: their mount namespace -> the token.
  std::map<uint64_t, uint64_t> claims_;
  // The last answer a getlk with a lock in it gave each caller (its pid here): the file
  // handle and the lock, with the holder's home id, for LockHolder.
  std::map<pid_t, std::pair<uint64_t, struct flock>> getlk_answers_;
  struct LockWait {
    uint64_t generation = 0;
    uint64_t id = 0;  // the request's, once sent
    bool interrupted = false;
  };
  std::unordered_map<uint64_t, LockWait> lock_waits_;  // by serial
  // Home ids of processes that locked, by their identity for this boot (ProcessKey): a
  // process's home id does not change while it lives.
  std::unordered_map<uint64_t, pid_t> home_ids_;
  uint64_t next_lock_wait_;  // from id_base, as node ids

  std::mutex groups_mutex_;
  std::unordered_map<pid_t, std::pair<std::chrono::steady_clock::time_point, std::vector<gid_t>>>
      groups_;

  // Big writes behind are sealed and sent on a thread of their own (WriteBehind); last,
  // so that it ends first, with every member it uses still there.
  WorkThread sends_{"sending a write behind", std::chrono::seconds(5)};
};

// Converts the home's attributes to a struct stat.
struct stat ToStat(schema::Attr::Reader attr);

}  // namespace homeward
