// SessionIo: how a homefs session reads its requests and writes its replies, under
// libfuse (the session's custom I/O). On /dev/fuse it does what libfuse would, and says in
// the INIT reply what libfuse 3.14 cannot: that the home drops set-id bits and
// capabilities on write, truncate and chown itself (FUSE_HANDLE_KILLPRIV_V2), so that the
// kernel stops asking for a file's security.capability before each write. A Carrier
// (FuseUring) may take replies over and add to the INIT reply.
#pragma once

#include <fuse_lowlevel.h>
#include <linux/fuse.h>
#include <sys/uio.h>

#include <atomic>
#include <cstdint>

namespace homeward {

class SessionIo {
 public:
  // Another way for requests and replies than /dev/fuse, set up by the INIT reply.
  class Carrier {
   public:
    virtual ~Carrier() = default;
    // A reply libfuse wrote (from any thread): true if it was a request the carrier
    // brought, which it then answers its own way.
    virtual bool TakeReply(const struct iovec* iov, int count) = 0;
    // The INIT reply, before it is written; `offered`: the kernel's INIT flags (flags2
    // above bit 32). True if the carrier asked for something and wants to hear whether
    // the kernel got the reply (InitWritten).
    virtual bool AmendInit(fuse_init_out& reply, uint64_t offered) = 0;
    virtual void InitWritten(bool told) = 0;
  };

  // Installs itself as `session`'s I/O (after fuse_session_mount). One per process: the
  // hooks libfuse calls carry no pointer of their own. Once it is gone, the hooks read
  // and write /dev/fuse plainly.
  explicit SessionIo(fuse_session* session);
  SessionIo(const SessionIo&) = delete;
  SessionIo& operator=(const SessionIo&) = delete;
  ~SessionIo();

  // False if libfuse refused the hooks (requests then come as libfuse reads them).
  bool installed() const { return installed_; }
  // Replies and the INIT reply go by `carrier` too from now on (null: no longer). Made
  // before the session's loop starts, undone after it has ended.
  void Carry(Carrier* carrier) { carrier_.store(carrier); }

 private:
  static ssize_t ReadHook(int fd, void* buf, size_t len, void* userdata);
  static ssize_t WritevHook(int fd, struct iovec* iov, int count, void* userdata);
  ssize_t Writev(int fd, struct iovec* iov, int count);

  bool installed_ = false;
  std::atomic<Carrier*> carrier_{nullptr};
  // The INIT request, as read.
  std::atomic<uint64_t> init_unique_{0};
  std::atomic<uint64_t> offered_{0};
};

}  // namespace homeward
