// Request: one FUSE request, answered exactly once. Move-only; a Request destroyed
// without an answer answers EIO, so no caller in the kernel ever waits forever. A
// detached one stands for a request the kernel was answered already (a write behind):
// its answers go nowhere.
#pragma once

#include <fuse_lowlevel.h>

#include <string>
#include <utility>

namespace homeward {

class Request {
 public:
  explicit Request(fuse_req_t req) : req_(req) {}
  static Request Detached() { return Request(nullptr); }
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
  void Err(int err) {
    if (auto q = Take()) fuse_reply_err(q, err);
  }
  void None() {
    if (auto q = Take()) fuse_reply_none(q);
  }
  void Entry(const fuse_entry_param& e) {
    if (auto q = Take()) fuse_reply_entry(q, &e);
  }
  void Create(const fuse_entry_param& e, const fuse_file_info& fi) {
    if (auto q = Take()) fuse_reply_create(q, &e, &fi);
  }
  void Attr(const struct stat& st, double timeout) {
    if (auto q = Take()) fuse_reply_attr(q, &st, timeout);
  }
  void Open(const fuse_file_info& fi) {
    if (auto q = Take()) fuse_reply_open(q, &fi);
  }
  void Buf(const void* data, size_t size) {
    if (auto q = Take()) fuse_reply_buf(q, static_cast<const char*>(data), size);
  }
  void Write(size_t count) {
    if (auto q = Take()) fuse_reply_write(q, count);
  }
  void Readlink(const std::string& target) {
    if (auto q = Take()) fuse_reply_readlink(q, target.c_str());
  }
  void Statfs(const struct statvfs& st) {
    if (auto q = Take()) fuse_reply_statfs(q, &st);
  }
  void Xattr(size_t size) {
    if (auto q = Take()) fuse_reply_xattr(q, size);
  }
  void Lock(const struct flock& lock) {
    if (auto q = Take()) fuse_reply_lock(q, &lock);
  }
  void Ioctl(const void* out, size_t size) {
    if (auto q = Take()) fuse_reply_ioctl(q, 0, out, size);
  }

 private:
  fuse_req_t Take() { return std::exchange(req_, nullptr); }
  fuse_req_t req_;
};

}  // namespace homeward
