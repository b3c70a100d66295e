// Request: one FUSE request, answered exactly once. Move-only; a Request destroyed
// without an answer answers EIO, so no caller in the kernel ever waits forever.
#pragma once

#include <fuse_lowlevel.h>

#include <string>
#include <utility>

namespace homeward {

class Request {
 public:
  explicit Request(fuse_req_t req) : req_(req) {}
  Request(Request&& other) noexcept : req_(std::exchange(other.req_, nullptr)) {}
  Request& operator=(Request&&) = delete;
  Request(const Request&) = delete;
  Request& operator=(const Request&) = delete;
  ~Request() {
    if (req_) fuse_reply_err(req_, EIO);
  }

  fuse_req_t get() const { return req_; }
  bool answered() const { return req_ == nullptr; }

  // The replies; each ends the request. Errors are positive errno values (0 = success
  // for operations that answer nothing else).
  void Err(int err) { fuse_reply_err(Take(), err); }
  void None() { fuse_reply_none(Take()); }
  void Entry(const fuse_entry_param& e) { fuse_reply_entry(Take(), &e); }
  void Create(const fuse_entry_param& e, const fuse_file_info& fi) {
    fuse_reply_create(Take(), &e, &fi);
  }
  void Attr(const struct stat& st, double timeout) { fuse_reply_attr(Take(), &st, timeout); }
  void Open(const fuse_file_info& fi) { fuse_reply_open(Take(), &fi); }
  void Buf(const void* data, size_t size) {
    fuse_reply_buf(Take(), static_cast<const char*>(data), size);
  }
  void Write(size_t count) { fuse_reply_write(Take(), count); }
  void Readlink(const std::string& target) { fuse_reply_readlink(Take(), target.c_str()); }
  void Statfs(const struct statvfs& st) { fuse_reply_statfs(Take(), &st); }
  void Xattr(size_t size) { fuse_reply_xattr(Take(), size); }
  void Lock(const struct flock& lock) { fuse_reply_lock(Take(), &lock); }
  void Ioctl(const void* out, size_t size) { fuse_reply_ioctl(Take(), 0, out, size); }

 private:
  fuse_req_t Take() { return std::exchange(req_, nullptr); }
  fuse_req_t req_;
};

}  // namespace homeward
