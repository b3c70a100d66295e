// FrameStream: blocking Cap'n Proto message I/O on a connected socket, for the threaded
// peer services (file service). Large segments are read straight into the message's own
// words and written with writev from the builder's segments, so a 1 MiB read or write is
// not copied on the way through. Every message read has a size and traversal limit.
// Over a SecureStream (an encrypted peer connection) the same holds: records are sealed
// from the segments and opened into the message's words.
#pragma once

#include <memory>
#include <mutex>
#include <optional>

#include <capnp/message.h>

#include "fd.h"
#include "framing.h"
#include "secure_channel.h"

namespace homeward {

class FrameStream {
 public:
  FrameStream(int fd, size_t max_frame_bytes) : fd_(fd), max_frame_bytes_(max_frame_bytes) {}
  // Over `stream` (kept open while this or a writer holds it).
  FrameStream(std::shared_ptr<SecureStream> stream, size_t max_frame_bytes)
      : fd_(stream->fd()), stream_(std::move(stream)), max_frame_bytes_(max_frame_bytes) {}

  // Reads one message; nothing on a clean end of stream. Throws Error(kDisconnected) on a
  // broken stream and Error(kInvalidInput) on an oversized or malformed frame.
  std::optional<IncomingMessage> Read();
  // Writes one message whole; safe to call from several threads at once.
  void Write(capnp::MessageBuilder& message);

 private:
  bool Fill(void* data, size_t size, bool eof_ok);

  int fd_;
  std::shared_ptr<SecureStream> stream_;
  size_t max_frame_bytes_;
  std::mutex write_mutex_;
  char buffer_[64 * 1024];
  size_t begin_ = 0;
  size_t end_ = 0;
};

}  // namespace homeward
