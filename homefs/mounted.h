// Mounted: what a homefs FUSE session serves, and libfuse's userdata. Either one home
// (`mosmount NODE DIR`: every node id is its Fs's) or a HomeTree (every home at
// /mosix/home: node ids say which home's Fs they are, and the tree's own few nodes, its
// root and this node's entry, are answered by the tree itself).
#pragma once

#include <fuse_lowlevel.h>

#include <cerrno>
#include <string>

#include "fs.h"
#include "request.h"

namespace homeward {

class Mounted {
 public:
  virtual ~Mounted() = default;

  // The operations table for any Mounted (fs_ops.cc).
  static const fuse_lowlevel_ops& Operations();

  // The Fs whose node `ino` is; null for the mount's own nodes.
  virtual Fs* NodeFs(fuse_ino_t ino) = 0;

  // The mount's own nodes, which no Fs holds. Whatever would change them is refused
  // (EROFS) by the operations table.
  virtual void Lookup(Request r, fuse_ino_t, const std::string&) { r.Err(ENOENT); }
  virtual void Getattr(Request r, fuse_ino_t) { r.Err(ENOENT); }
  virtual void Opendir(Request r, fuse_ino_t, fuse_file_info*) { r.Err(ENOTDIR); }
  virtual void Readdir(Request r, fuse_ino_t, size_t, off_t, bool) { r.Err(ENOTDIR); }
  virtual void Statfs(Request r) { r.Err(ENOSYS); }
  virtual void Access(Request r, fuse_ino_t, int) { r.Err(0); }
};

// One home's files, as a mount of their own.
class OneHome : public Mounted {
 public:
  explicit OneHome(Fs& fs) : fs_(fs) {}
  Fs* NodeFs(fuse_ino_t) override { return &fs_; }

 private:
  Fs& fs_;
};

}  // namespace homeward
