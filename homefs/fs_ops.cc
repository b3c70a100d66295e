// The C boundary: libfuse calls these; each forwards to the Fs that holds the node (or to
// the Mounted itself for its own nodes) through the one guard (c_boundary.h), so no
// exception escapes: a failure is logged and answered with EIO by the Request's destructor.
#include "c_boundary.h"
#include "lock_holder.h"
#include "mounted.h"

namespace homeward {

namespace {

using Op = schema::FileOp;

Mounted& Of(fuse_req_t req) {
  return *static_cast<Mounted*>(fuse_req_userdata(req));
}

// An operation that answers, on node `ino`: the Request is made before the guard runs
// the body, so it is destroyed (answering EIO if nothing did) however the body ends. On
// the mount's own nodes `own` answers, or EROFS: nothing there can be changed.
template <typename F>
void Guard(fuse_req_t req, fuse_ino_t ino, F body) {
  GuardedCall("homefs", [&] {
    Request r(req);
    if (Fs* fs = Of(req).NodeFs(ino)) return body(*fs, std::move(r));
    r.Err(EROFS);
  });
}
template <typename F, typename Own>
void Guard(fuse_req_t req, fuse_ino_t ino, F body, Own own) {
  GuardedCall("homefs", [&] {
    Request r(req);
    Mounted& mounted = Of(req);
    if (Fs* fs = mounted.NodeFs(ino)) return body(*fs, std::move(r));
    own(mounted, std::move(r));
  });
}
// An operation on two nodes: both of one Fs, or EXDEV (two homes are two file systems).
template <typename F>
void Guard2(fuse_req_t req, fuse_ino_t ino, fuse_ino_t ino2, F body) {
  GuardedCall("homefs", [&] {
    Request r(req);
    Fs* fs = Of(req).NodeFs(ino);
    Fs* fs2 = Of(req).NodeFs(ino2);
    if (!fs || !fs2) return r.Err(EROFS);
    if (fs != fs2) return r.Err(EXDEV);
    body(*fs, std::move(r));
  });
}

// An operation that answers nothing (forget): the mount's own nodes are never forgotten.
void Forget(fuse_req_t req, fuse_ino_t ino, uint64_t nlookup) {
  if (Fs* fs = Of(req).NodeFs(ino)) fs->Forget(ino, nlookup);
}

fuse_lowlevel_ops MakeOps() {
  fuse_lowlevel_ops ops{};
  ops.init = [](void*, fuse_conn_info* conn) {
    GuardedCall("homefs: init", [&] { Fs::Init(conn); });
  };
  ops.lookup = [](fuse_req_t q, fuse_ino_t parent, const char* name) {
    Guard(
        q, parent, [&](Fs& fs, Request r) { fs.Lookup(std::move(r), parent, name); },
        [&](Mounted& m, Request r) { m.Lookup(std::move(r), parent, name); });
  };
  ops.forget = [](fuse_req_t q, fuse_ino_t ino, uint64_t n) {
    GuardedCall("homefs: forget", [&] { Forget(q, ino, n); });
    fuse_reply_none(q);
  };
  ops.forget_multi = [](fuse_req_t q, size_t count, fuse_forget_data* list) {
    GuardedCall("homefs: forget", [&] {
      for (size_t i = 0; i < count; ++i) Forget(q, list[i].ino, list[i].nlookup);
    });
    fuse_reply_none(q);
  };
  ops.getattr = [](fuse_req_t q, fuse_ino_t ino, fuse_file_info* fi) {
    Guard(
        q, ino, [&](Fs& fs, Request r) { fs.Getattr(std::move(r), ino, fi); },
        [&](Mounted& m, Request r) { m.Getattr(std::move(r), ino); });
  };
  ops.setattr = [](fuse_req_t q, fuse_ino_t ino, struct stat* attr, int to_set,
                   fuse_file_info* fi) {
    Guard(q, ino, [&](Fs& fs, Request r) { fs.Setattr(std::move(r), ino, *attr, to_set, fi); });
  };
  ops.readlink = [](fuse_req_t q, fuse_ino_t ino) {
    Guard(q, ino, [&](Fs& fs, Request r) { fs.Readlink(std::move(r), ino); });
  };
  ops.mknod = [](fuse_req_t q, fuse_ino_t parent, const char* name, mode_t mode, dev_t rdev) {
    Guard(q, parent, [&](Fs& fs, Request r) {
      fs.MakeNode(std::move(r), Op::MKNOD, parent, name, mode, rdev, "");
    });
  };
  ops.mkdir = [](fuse_req_t q, fuse_ino_t parent, const char* name, mode_t mode) {
    Guard(q, parent, [&](Fs& fs, Request r) {
      fs.MakeNode(std::move(r), Op::MKDIR, parent, name, mode, 0, "");
    });
  };
  ops.symlink = [](fuse_req_t q, const char* target, fuse_ino_t parent, const char* name) {
    Guard(q, parent, [&](Fs& fs, Request r) {
      fs.MakeNode(std::move(r), Op::SYMLINK, parent, name, 0, 0, target);
    });
  };
  ops.unlink = [](fuse_req_t q, fuse_ino_t parent, const char* name) {
    Guard(q, parent, [&](Fs& fs, Request r) { fs.Remove(std::move(r), Op::UNLINK, parent, name); });
  };
  ops.rmdir = [](fuse_req_t q, fuse_ino_t parent, const char* name) {
    Guard(q, parent, [&](Fs& fs, Request r) { fs.Remove(std::move(r), Op::RMDIR, parent, name); });
  };
  ops.rename = [](fuse_req_t q, fuse_ino_t parent, const char* name, fuse_ino_t newparent,
                  const char* newname, unsigned flags) {
    Guard2(q, parent, newparent, [&](Fs& fs, Request r) {
      fs.Rename(std::move(r), parent, name, newparent, newname, flags);
    });
  };
  ops.link = [](fuse_req_t q, fuse_ino_t ino, fuse_ino_t newparent, const char* newname) {
    Guard2(q, ino, newparent,
           [&](Fs& fs, Request r) { fs.Link(std::move(r), ino, newparent, newname); });
  };
  ops.open = [](fuse_req_t q, fuse_ino_t ino, fuse_file_info* fi) {
    Guard(q, ino, [&](Fs& fs, Request r) { fs.Open(std::move(r), ino, fi, false); });
  };
  ops.opendir = [](fuse_req_t q, fuse_ino_t ino, fuse_file_info* fi) {
    Guard(
        q, ino, [&](Fs& fs, Request r) { fs.Open(std::move(r), ino, fi, true); },
        [&](Mounted& m, Request r) { m.Opendir(std::move(r), ino, fi); });
  };
  ops.create = [](fuse_req_t q, fuse_ino_t parent, const char* name, mode_t mode,
                  fuse_file_info* fi) {
    Guard(q, parent, [&](Fs& fs, Request r) { fs.Create(std::move(r), parent, name, mode, fi); });
  };
  ops.read = [](fuse_req_t q, fuse_ino_t ino, size_t size, off_t off, fuse_file_info* fi) {
    Guard(q, ino, [&](Fs& fs, Request r) { fs.Read(std::move(r), size, off, fi); });
  };
  ops.write = [](fuse_req_t q, fuse_ino_t ino, const char* buf, size_t size, off_t off,
                 fuse_file_info* fi) {
    Guard(q, ino, [&](Fs& fs, Request r) { fs.Write(std::move(r), buf, size, off, fi); });
  };
  // Answered here unless the closing process took POSIX locks through this mount.
  ops.flush = [](fuse_req_t q, fuse_ino_t ino, fuse_file_info* fi) {
    Guard(q, ino, [&](Fs& fs, Request r) { fs.Flush(std::move(r), ino, fi); });
  };
  ops.getlk = [](fuse_req_t q, fuse_ino_t ino, fuse_file_info* fi, struct flock* lock) {
    Guard(q, ino, [&](Fs& fs, Request r) { fs.Getlk(std::move(r), ino, fi, *lock); });
  };
  ops.setlk = [](fuse_req_t q, fuse_ino_t ino, fuse_file_info* fi, struct flock* lock,
                 int sleep) {
    Guard(q, ino, [&](Fs& fs, Request r) { fs.Setlk(std::move(r), ino, fi, *lock, sleep != 0); });
  };
  // Only the lock holder's question (lock_holder.h); the kernel answers ENOTTY to others.
  ops.ioctl = [](fuse_req_t q, fuse_ino_t ino, unsigned int cmd, void*, fuse_file_info* fi,
                 unsigned flags, const void* in, size_t in_size, size_t out_size) {
    Guard(q, ino, [&](Fs& fs, Request r) {
      if (cmd != static_cast<unsigned int>(kHomefsLockHolder) || (flags & FUSE_IOCTL_DIR)) {
        return r.Err(ENOTTY);
      }
      fs.LockHolder(std::move(r), fi, in, in_size, out_size);
    });
  };
  ops.flock = [](fuse_req_t q, fuse_ino_t ino, fuse_file_info* fi, int op) {
    Guard(q, ino, [&](Fs& fs, Request r) { fs.Flock(std::move(r), ino, fi, op); });
  };
  ops.release = [](fuse_req_t q, fuse_ino_t ino, fuse_file_info* fi) {
    Guard(q, ino, [&](Fs& fs, Request r) { fs.Release(std::move(r), Op::RELEASE, fi); });
  };
  ops.releasedir = [](fuse_req_t q, fuse_ino_t ino, fuse_file_info* fi) {
    Guard(
        q, ino, [&](Fs& fs, Request r) { fs.Release(std::move(r), Op::RELEASEDIR, fi); },
        [](Mounted&, Request r) { r.Err(0); });
  };
  ops.fsync = [](fuse_req_t q, fuse_ino_t ino, int datasync, fuse_file_info* fi) {
    Guard(q, ino, [&](Fs& fs, Request r) { fs.Simple(std::move(r), Op::FSYNC, fi, datasync ? 1 : 0); });
  };
  ops.fsyncdir = [](fuse_req_t q, fuse_ino_t ino, int datasync, fuse_file_info* fi) {
    Guard(q, ino, [&](Fs& fs, Request r) { fs.Simple(std::move(r), Op::FSYNC, fi, datasync ? 1 : 0); });
  };
  ops.readdir = [](fuse_req_t q, fuse_ino_t ino, size_t size, off_t off, fuse_file_info* fi) {
    Guard(
        q, ino, [&](Fs& fs, Request r) { fs.Readdir(std::move(r), ino, size, off, fi, false); },
        [&](Mounted& m, Request r) { m.Readdir(std::move(r), ino, size, off, false); });
  };
  ops.readdirplus = [](fuse_req_t q, fuse_ino_t ino, size_t size, off_t off, fuse_file_info* fi) {
    Guard(
        q, ino, [&](Fs& fs, Request r) { fs.Readdir(std::move(r), ino, size, off, fi, true); },
        [&](Mounted& m, Request r) { m.Readdir(std::move(r), ino, size, off, true); });
  };
  ops.statfs = [](fuse_req_t q, fuse_ino_t ino) {
    Guard(
        q, ino, [&](Fs& fs, Request r) { fs.Statfs(std::move(r), ino); },
        [&](Mounted& m, Request r) { m.Statfs(std::move(r)); });
  };
  ops.access = [](fuse_req_t q, fuse_ino_t ino, int mask) {
    Guard(
        q, ino, [&](Fs& fs, Request r) { fs.Access(std::move(r), ino, mask); },
        [&](Mounted& m, Request r) { m.Access(std::move(r), ino, mask); });
  };
  ops.setxattr = [](fuse_req_t q, fuse_ino_t ino, const char* name, const char* value, size_t size,
                    int flags) {
    Guard(q, ino, [&](Fs& fs, Request r) {
      fs.Xattr(std::move(r), Op::SETXATTR, ino, name, value, size, flags);
    });
  };
  ops.getxattr = [](fuse_req_t q, fuse_ino_t ino, const char* name, size_t size) {
    Guard(
        q, ino,
        [&](Fs& fs, Request r) { fs.Xattr(std::move(r), Op::GETXATTR, ino, name, nullptr, size, 0); },
        [](Mounted&, Request r) { r.Err(ENODATA); });
  };
  ops.listxattr = [](fuse_req_t q, fuse_ino_t ino, size_t size) {
    Guard(
        q, ino, [&](Fs& fs, Request r) { fs.Xattr(std::move(r), Op::LISTXATTR, ino, "", nullptr, size, 0); },
        [size](Mounted&, Request r) { size == 0 ? r.Xattr(0) : r.Buf(nullptr, 0); });
  };
  ops.removexattr = [](fuse_req_t q, fuse_ino_t ino, const char* name) {
    Guard(q, ino, [&](Fs& fs, Request r) {
      fs.Xattr(std::move(r), Op::REMOVEXATTR, ino, name, nullptr, 0, 0);
    });
  };
  ops.fallocate = [](fuse_req_t q, fuse_ino_t ino, int mode, off_t offset, off_t length,
                     fuse_file_info* fi) {
    Guard(q, ino, [&](Fs& fs, Request r) { fs.Fallocate(std::move(r), mode, offset, length, fi); });
  };
  return ops;
}

}  // namespace

const fuse_lowlevel_ops& Mounted::Operations() {
  static const fuse_lowlevel_ops ops = MakeOps();  // constant data, not state
  return ops;
}

}  // namespace homeward
