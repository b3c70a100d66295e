#include "session_io.h"

#include <unistd.h>

#include "log.h"

namespace homeward {
namespace {

std::atomic<SessionIo*> the_io{nullptr};

}  // namespace

SessionIo::SessionIo(fuse_session* session) {
  fuse_custom_io io{};
  io.read = ReadHook;
  io.writev = WritevHook;
  the_io.store(this);
  installed_ = fuse_session_custom_io(session, &io, fuse_session_fd(session)) == 0;
  if (!installed_) {
    spdlog::warn("libfuse refused homefs's session I/O: the kernel asks for capabilities "
                 "before writes, and FUSE requests come through /dev/fuse");
    the_io.store(nullptr);
  }
}

SessionIo::~SessionIo() { the_io.store(nullptr); }

ssize_t SessionIo::ReadHook(int fd, void* buf, size_t len, void*) {
  ssize_t n = ::read(fd, buf, len);
  SessionIo* self = the_io.load();
  if (self && n >= static_cast<ssize_t>(sizeof(fuse_in_header) + sizeof(fuse_init_in))) {
    auto* in = static_cast<const fuse_in_header*>(buf);
    if (in->opcode == FUSE_INIT) {
      auto* init = reinterpret_cast<const fuse_init_in*>(in + 1);
      uint64_t flags = init->flags;
      if (flags & FUSE_INIT_EXT) flags |= static_cast<uint64_t>(init->flags2) << 32;
      self->offered_ = flags;
      self->init_unique_ = in->unique;
    }
  }
  return n;
}

ssize_t SessionIo::WritevHook(int fd, struct iovec* iov, int count, void*) {
  SessionIo* self = the_io.load();
  if (!self) return ::writev(fd, iov, count);
  return self->Writev(fd, iov, count);
}

ssize_t SessionIo::Writev(int fd, struct iovec* iov, int count) {
  auto* out = static_cast<fuse_out_header*>(iov[0].iov_base);
  Carrier* carrier = carrier_.load();
  if (carrier && out->unique != 0 && carrier->TakeReply(iov, count)) {
    return static_cast<ssize_t>(out->len);
  }
  bool init_reply = out->unique != 0 && out->unique == init_unique_.load() &&
                    out->error == 0 && count >= 2 && iov[1].iov_len >= sizeof(fuse_init_out);
  bool amended = false;
  if (init_reply) {
    auto& reply = *static_cast<fuse_init_out*>(iov[1].iov_base);
    uint64_t offered = offered_.load();
    if (offered & FUSE_HANDLE_KILLPRIV_V2) {
      // The home drops setuid, setgid and capabilities on write, truncate and chown
      // itself (its kernel does, as the file service acts under the caller's fs ids).
      // Told so, the kernel marks a file that has none (S_NOSEC) and stops asking for its
      // security.capability before each write: a request less per write.
      reply.flags |= FUSE_HANDLE_KILLPRIV_V2;
    }
    amended = carrier && carrier->AmendInit(reply, offered);
  }
  ssize_t n = ::writev(fd, iov, count);
  if (amended) carrier->InitWritten(n >= 0);
  return n;
}

}  // namespace homeward
