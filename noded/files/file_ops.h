// The file service's insides, shared by the session (file_session.cc) and the handlers of
// its requests (file_handlers.cc): the looked-up objects and open files, the checks every
// name goes through, and one handler per request kind.
#pragma once

#include <dirent.h>
#include <sys/stat.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "fd.h"
#include "file_server.h"
#include "lock_keeper.h"
#include "schema/files.capnp.h"
#include "stream_writeback.h"

namespace homeward {

// An object the client looked up. A request that uses it holds this shared_ptr for as
// long as it uses `fd`: a FORGET only drops the session's reference, so the descriptor
// is closed after the last request using it is done, never under a system call.
//
// A client may look up more objects than the daemon may hold descriptors (a build tree
// of 50,000 files, and the kernel keeps what it looked up until memory runs short): a
// node on a mount of which the session has seen a directory is reclaimable, its
// descriptor closed while no request holds the node and node descriptors pass half the
// daemon's limit (FileSession::ReclaimLocked), to be opened again from its file handle by
// the next request that takes it (open_by_handle_at, ESTALE once the object is gone, as
// NFS). A directory's handle is taken when it is looked up (it names its mount); a
// file's only when its descriptor is first closed so, since most never are
// (name_to_handle_at was an eighth to a sixth of the home's CPU for a lookup).
struct FileSession::Node {
  Fd fd;  // O_PATH; changed only under the session's mutex while no request holds the node
  uint64_t nlookup = 0;
  std::pair<uint64_t, uint64_t> key;
  int watch = -1;
  // Counted in open_node_fds while `fd` is open, and listed in open_nodes_; a file's
  // stops being so when its reclaim finds no handle to be had.
  bool reclaimable = false;
  std::vector<unsigned char> handle;  // a struct file_handle; empty: not taken yet
  int mount = -1;                     // its mount's id (mounts_), with the handle
  bool listed = false;  // in open_nodes_, at `place`
  std::list<uint64_t>::iterator place;
  ~Node();
};

// The daemon's node descriptors that may be reclaimed and are open, in every session.
inline std::atomic<int64_t> open_node_fds{0};

// What a directory entry holds: an object, or nothing.
struct EntryHolds {
  bool present = false;
  std::pair<uint64_t, uint64_t> object{};  // (st_dev, st_ino)
  bool operator==(const EntryHolds&) const = default;
};
EntryHolds HeldAt(int dir_fd, const std::string& name);

// A directory entry this client changed a moment ago: what its changes left the entry
// holding. An event of the entry is the client's own when the entry holds one of those
// still (the client's view of it), whatever order events and changes come in.
struct FileSession::OwnEntry {
  std::chrono::steady_clock::time_point at{};
  std::vector<EntryHolds> holds;  // oldest first
  bool pending = false;           // a create's object, known once it is answered
  bool heard = false;             // an event of it came and was not told
};

// An open file or directory; held by each request that uses it, like Node.
struct FileSession::OpenFile {
  Fd fd;
  uint64_t node = 0;
  std::atomic<bool> flocked = false;  // a flock was taken on fd (dropped with DropLocks)
  // A flock carried across a move (see "Locks across a move"): a descriptor of the
  // description that holds it (the open file of the job's old node), bound to this one
  // when the job's restore opened the file; flock then works on that description, and it
  // closes with this file. Set before the handle is published.
  Fd carried_flock;
  int FlockFd() const { return carried_flock.valid() ? carried_flock.get() : fd.get(); }
  // The lock keeper's hold on the flocked description (kept_mutex), so that its flock
  // outlives a restart of the daemon.
  std::shared_ptr<LockKeeper::Kept> kept_flock;
  std::mutex kept_mutex;
  // Whether fd has O_APPEND: opened so when the caller's file was (the home's kernel then
  // checks the open exactly as for a local one), and cleared by the first positional
  // write (the kernel's writeback of mmap pages, or a caller that cleared O_APPEND with
  // fcntl): a write on an O_APPEND descriptor ignores its offset.
  std::atomic<bool> append{false};
  std::mutex append_mutex;
  StreamWriteback writeback;  // of its positional writes
  DIR* dir = nullptr;    // its own descriptor, a duplicate of fd's
  std::mutex dir_mutex;  // a DIR stream has one position
  ~OpenFile() {
    if (dir) ::closedir(dir);  // closes the duplicate; fd closes its own descriptor
  }
};

// The description that holds one lock owner's POSIX locks (a process on the client's
// node) or OFD locks (one open file there) on one file, as OFD locks: each owner's
// description excludes every other's, and local processes' locks, and an owner's own
// locks merge and split as a process's do. Held by each request and wait that uses it.
struct FileSession::LockOwner {
  Fd fd;
  int access = 0;  // O_RDONLY, O_WRONLY or O_RDWR
  uint64_t owner = 0;
  std::pair<uint64_t, uint64_t> inode;
  std::set<uint64_t> handles;  // the open files it locked through (under owners_mutex_)
  // The lock keeper's hold on fd's description (shared with a parked copy), and the
  // holder's pid it was last told.
  std::shared_ptr<LockKeeper::Kept> kept;
  std::atomic<int> described_pid{0};
};

// The locks of a job on the move, parked at home under a token between the source's
// PARK_LOCKS and the target's binding them (see ARCHITECTURE.md, "Locks across a move").
// Each holds its own descriptor of the description that holds the locks (a dup: locks
// of OFD and flock belong to the description), so the old node's files may close.
struct FileSession::Carried {
  struct Posix {
    std::pair<uint64_t, uint64_t> inode;
    int32_t pid = 0;  // the holding process, in the job's pid namespace
    uint64_t owner = 0;  // its lock owner on the parking client (for an unpark)
    Fd fd;
    int access = 0;
    bool from_claim = false;  // carried here before and not bound: the only holder
    std::shared_ptr<LockKeeper::Kept> kept;
  };
  struct Flock {
    std::pair<uint64_t, uint64_t> inode;
    Fd fd;
    bool from_claim = false;
    std::shared_ptr<LockKeeper::Kept> kept;
  };
  std::vector<Posix> posix;
  std::vector<Flock> flocks;
};

namespace file_ops {

// A failed operation: carries the errno to answer with.
struct OpError {
  int err;
};

template <typename T>
T Check(T result) {
  if (result < 0) throw OpError{errno};
  return result;
}

// Our own descriptor's /proc link: it names exactly the object `fd` holds.
std::string ProcPath(int fd);
// Opens `name` beneath `dir_fd`; "..", absolute paths and symlinks that lead outside
// fail with EXDEV, magic links with ELOOP.
int OpenBeneath(int dir_fd, const std::string& name, uint64_t flags, uint64_t mode);
// A name the client may use in a directory: one component, not "." or "..". The kernel
// never sends anything else; a client that does is refused before any system call.
void CheckName(const std::string& name);
void FillAttr(const struct stat& st, schema::Attr::Builder attr);
struct stat StatFd(int fd);

// The credentials this thread acts with (see Become in file_session.cc).
struct ThreadCredentials {
  uint32_t uid = 0, gid = 0, umask = 0;
  std::vector<gid_t> groups;
};
extern thread_local ThreadCredentials current_credentials;

}  // namespace file_ops

// One handler per request kind, called by FileSession::Dispatch with the caller's
// credentials already taken. Each throws OpError (or Error) to answer with an errno.
class FileOps {
 public:
  using Rq = schema::FileRequest::Reader;
  using Rs = schema::FileResponse::Builder;

  static void Hello(FileSession& s, Rq rq, Rs rs);
  static void Lookup(FileSession& s, Rq rq, Rs rs);
  static void Forget(FileSession& s, Rq rq, Rs rs);
  static void Getattr(FileSession& s, Rq rq, Rs rs);
  static void Setattr(FileSession& s, Rq rq, Rs rs);
  static void Readlink(FileSession& s, Rq rq, Rs rs);
  static void Mknod(FileSession& s, Rq rq, Rs rs);
  static void Mkdir(FileSession& s, Rq rq, Rs rs);
  static void Unlink(FileSession& s, Rq rq, Rs rs);  // and RMDIR
  static void Symlink(FileSession& s, Rq rq, Rs rs);
  static void Rename(FileSession& s, Rq rq, Rs rs);
  static void Link(FileSession& s, Rq rq, Rs rs);
  static void Open(FileSession& s, Rq rq, Rs rs);  // and OPENDIR
  static void Create(FileSession& s, Rq rq, Rs rs);
  // A create the replay cache says was done already: opens the name it made.
  static void CreateAgain(FileSession& s, Rq rq, Rs rs);
  static void Read(FileSession& s, Rq rq, Rs rs);
  static void Write(FileSession& s, Rq rq, Rs rs);
  static void Flush(FileSession& s, Rq rq, Rs rs);
  static void Release(FileSession& s, Rq rq, Rs rs);  // and RELEASEDIR
  static void Fsync(FileSession& s, Rq rq, Rs rs);
  static void Readdir(FileSession& s, Rq rq, Rs rs);
  static void Statfs(FileSession& s, Rq rq, Rs rs);
  static void Access(FileSession& s, Rq rq, Rs rs);
  static void Xattr(FileSession& s, Rq rq, Rs rs);  // SET, GET, LIST and REMOVE
  static void Fallocate(FileSession& s, Rq rq, Rs rs);
  // Locks (file_locks.cc). Setlk also takes FLOCK; false when `later` will answer.
  static void Getlk(FileSession& s, Rq rq, Rs rs);
  static bool Setlk(FileSession& s, Rq rq, Rs rs, FileSession::Later& later);
  static void UnlockOwner(FileSession& s, Rq rq, Rs rs);
  // Locks across a move: park (source), unpark (the move failed), claim (target).
  static void ParkLocks(FileSession& s, Rq rq, Rs rs);
  static void UnparkLocks(FileSession& s, Rq rq, Rs rs);
  static void ClaimLocks(FileSession& s, Rq rq, Rs rs);
};

}  // namespace homeward
