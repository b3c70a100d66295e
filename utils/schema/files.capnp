# The file service: homefs on one node asks the home node's file server for file
# operations, over an authenticated peer connection (see peer_auth.h). Requests carry an
# id and are answered in any order, so a client pipelines as many as it likes.
@0xb7c3e52a9d4f1e60;

using Cxx = import "/capnp/c++.capnp";
$Cxx.namespace("homeward::schema");

const filesVersion :UInt16 = 1;

enum FileOp {
  hello @0;       # first request: version check; answers the root's attributes
  lookup @1;      # node, name -> entry
  forget @2;      # node, count: the client dropped `count` lookups of node (no reply)
  getattr @3;     # node (fh when set) -> attr
  setattr @4;     # node, fh, valid, mode, uid/gid, size, times -> attr
  readlink @5;    # node -> data
  mknod @6;       # node, name, mode, rdev -> entry
  mkdir @7;       # node, name, mode -> entry
  unlink @8;      # node, name
  rmdir @9;       # node, name
  symlink @10;    # node, name, target (in data) -> entry
  rename @11;     # node, name, node2, name2, flags
  link @12;       # node (the file), node2 (new parent), name2 -> entry
  open @13;       # node, flags; node2 and name2: the parent and name the client knows
                  # it by (0 and "": none) -> fh, entry.attr (the opened file's)
                  # ESTALE when that name now holds another object (replaced by a
                  # rename, or removed): the kernel then looks the path up again.
  read @14;       # fh, offset, size -> data
  write @15;      # fh, offset, data, flags (O_APPEND: at the end of the file as the
                  # home sees it, offset ignored) -> size
  flush @16;      # fh
  release @17;    # fh (no reply needed, but answered)
  fsync @18;      # fh, flags (1 = data only)
  opendir @19;    # node -> fh
  readdir @20;    # fh, offset, size (max entries) -> entries
  releasedir @21; # fh
  statfs @22;     # node -> statfs
  access @23;     # node, mask
  create @24;     # node, name, mode, flags -> entry, fh
  setxattr @25;   # node, name, data, flags
  getxattr @26;   # node, name, size -> data or size
  listxattr @27;  # node, size -> data or size
  removexattr @28;# node, name
  fallocate @29;  # fh, mode (in flags), offset, size
  # Locks, taken on the home's file (see ARCHITECTURE.md, "Locks"). `owner` is the FUSE
  # lock owner: a process's POSIX locks, or one open file's OFD or flock locks.
  getlk @30;      # fh, owner, lock -> lock (the conflicting one, or type F_UNLCK)
  setlk @31;      # fh, owner, lock, flags (1 = wait: F_SETLKW)
  flock @32;      # fh, owner, flags (LOCK_SH/LOCK_EX/LOCK_UN, | LOCK_NB)
  lockCancel @33; # cancels: the id of this client's waiting setlk/flock, which is
                  # answered EINTR unless it got its lock first
  unlockOwner @34;# fh, owner: every POSIX lock of owner on the file goes (close, FUSE flush)
  # Locks across a move (see ARCHITECTURE.md, "Locks across a move"): the home keeps a
  # moving job's lock descriptions under a token the source picks, so that nothing else
  # can take them between the source's copy dying and the target's binding them again.
  parkLocks @35;  # carry (the token), parked: the job's lock owners and flocked files on
                  # this connection; carriedFrom: a token this client claimed for the job
                  # earlier (what it has not bound yet goes along)
  unparkLocks @36;# carry: the move failed, the job goes on here: the token is forgotten
  claimLocks @37; # carry: this client takes what was parked under the token; its
                  # requests tagged with the token (carry, carryPid) then bind it
}

struct Credentials {
  uid @0 :UInt32;
  gid @1 :UInt32;
  groups @2 :List(UInt32);
  # The caller's umask, for calls that create: homefs leaves it to the home (FUSE's
  # dont_mask), whose kernel applies it, or a directory's default ACL instead, as for a
  # local caller. 0 from a client that applied it itself.
  umask @3 :UInt32;
}

struct FileRequest {
  version @0 :UInt16;
  id @1 :UInt64;
  op @2 :FileOp;
  cred @3 :Credentials;
  node @4 :UInt64;
  name @5 :Text;
  node2 @6 :UInt64;
  name2 @7 :Text;
  fh @8 :UInt64;
  hasFh @9 :Bool;
  flags @10 :UInt32;
  mode @11 :UInt32;
  rdev @12 :UInt64;
  offset @13 :UInt64;
  size @14 :UInt64;
  data @15 :Data;
  # setattr: which fields are set (FUSE_SET_ATTR_* bits) and their values.
  valid @16 :UInt32;
  uid @17 :UInt32;
  gid @18 :UInt32;
  atimeNs @19 :Int64;
  mtimeNs @20 :Int64;
  # Resending across a broken connection (see ARCHITECTURE.md, homefs, "A home restarted"):
  # hello names the client (random, one per mount); `retry` marks a request sent again
  # with its first id after its connection broke; `oldest` is the client's oldest
  # request still unanswered (the server may forget what it remembers of older ones).
  client @21 :UInt64;
  retry @22 :Bool;
  oldest @23 :UInt64;
  # Locks (getlk, setlk, flock, lockCancel, unlockOwner).
  owner @24 :UInt64;
  lock @25 :FileLock;
  cancels @26 :UInt64;
  # Locks across a move: on open, setlk, getlk, flock and unlockOwner of a process of a
  # job whose locks this client claimed, the token, and the process's pid in the job's
  # pid namespace (the same on every node). On parkLocks, what is parked.
  carry @27 :UInt64;
  carryPid @28 :Int32;
  parked @29 :List(ParkedLock);
  carriedFrom @30 :UInt64;
  # Nobody waits for this one's answer: a write or a removal sent behind (the client
  # answered its caller before sending it), or a release that lets go of no flock. It runs
  # in order with the connection's writes, and may have waited a moment to go out with
  # others (FileClient's kHoldBehind).
  behind @31 :Bool;
}

# One lock owner parked: a process's POSIX locks on a file (node, owner, pid: the
# process's pid in its job's pid namespace), or one open file's flock (fh, flock = true).
struct ParkedLock {
  node @0 :UInt64;
  owner @1 :UInt64;
  pid @2 :Int32;
  fh @3 :UInt64;
  flock @4 :Bool;
}

# A byte-range lock as fcntl sees it: type F_RDLCK, F_WRLCK or F_UNLCK; start and
# length in bytes (length 0: to the end of the file, and beyond); pid: the requester's
# pid on its node in a request, the holder's pid as the home knows it in an answer.
struct FileLock {
  type @0 :Int16;
  start @1 :UInt64;
  length @2 :UInt64;
  pid @3 :Int32;
}

struct Attr {
  ino @0 :UInt64;
  mode @1 :UInt32;
  nlink @2 :UInt64;
  uid @3 :UInt32;
  gid @4 :UInt32;
  rdev @5 :UInt64;
  size @6 :Int64;
  blocks @7 :Int64;
  blksize @8 :Int32;
  atimeNs @9 :Int64;
  mtimeNs @10 :Int64;
  ctimeNs @11 :Int64;
  dev @12 :UInt64;
}

struct Entry {
  node @0 :UInt64;
  # The server's id for the object; 0 for "." and ".." in readdir.
  attr @1 :Attr;
  name @2 :Text;
  offset @3 :UInt64;
  # readdir: the cookie that continues after this entry.
}

struct StatFs {
  bsize @0 :UInt64;
  frsize @1 :UInt64;
  blocks @2 :UInt64;
  bfree @3 :UInt64;
  bavail @4 :UInt64;
  files @5 :UInt64;
  ffree @6 :UInt64;
  favail @7 :UInt64;
  fsid @8 :UInt64;
  namemax @9 :UInt64;
}

struct FileResponse {
  id @0 :UInt64;
  error @1 :Int32;
  # 0, or the positive errno the operation failed with.
  entry @2 :Entry;
  fh @3 :UInt64;
  data @4 :Data;
  size @5 :UInt64;
  entries @6 :List(Entry);
  statfs @7 :StatFs;
  message @8 :Text;
  # For protocol errors (a bad version): what went wrong.
  lock @9 :FileLock;
  # getlk: the lock that conflicts, or type F_UNLCK.
  dirAttr @10 :Attr;
  # create, mknod, mkdir, symlink, link, unlink, rmdir, rename: the directory the name was
  # made in or removed from (for rename, the one it left), just after the change, as
  # NFS's post-op attributes: the client's kernel drops its copy of them after every such
  # change, and the client answers its next question about them without asking again.
  # Unset when they could not be read, or for a request answered from the replay cache.
  dir2Attr @11 :Attr;
  # rename between two directories: the one it entered.
}

# Server to client, outside any request: an object this client looked up changed at
# home (another client or a local process wrote it), so cached data must go.
struct FileNotice {
  node @0 :UInt64;
  parent @1 :UInt64;
  name @2 :Text;
}

# Everything the server sends is a ServerMessage.
struct ServerMessage {
  union {
    response @0 :FileResponse;
    notice @1 :FileNotice;
  }
}
