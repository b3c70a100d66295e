// FrameStream: blocking Cap'n Proto message I/O on a connected socket, for the threaded
// peer services (file service). Large segments are read straight into the message's own
// words and written with writev from the builder's segments, so a 1 MiB read or write is
// not copied on the way through. Every message read has a size and traversal limit.
// Over a SecureStream (an encrypted peer connection) the same holds: records are sealed
// from the segments and opened into the message's words.
#pragma once

#include <sys/uio.h>

#include <atomic>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <thread>
#include <vector>

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
  // Writes one message whole, after what is held; safe to call from several threads at
  // once.
  void Write(capnp::MessageBuilder& message);

  // Holding: a run of small messages goes out in one send (one record when encrypted),
  // so the peer reads and answers the run in one go rather than waking for each. What is
  // held goes before anything written later, so the order of messages is kept.
  //
  // Holds a copy of the message until the next Write or Flush (written at once when the
  // held bytes pass kMaxHeldBytes). True when nothing was held before it: the caller then
  // sees that a Flush follows.
  bool Hold(capnp::MessageBuilder& message);
  // Writes what is held, if anything.
  void Flush();
  // On the thread that reads this stream, with more of a message already read in: held,
  // and written with the answer to the last of the run (Read flushes before it waits for
  // more; it does not for what other threads Hold). Else as Write.
  void WriteSoon(capnp::MessageBuilder& message);

  // Runs before anything is sent, with the stream's writers held off: what must be
  // recorded before an answer leaves (the file service's replay log). Set before the
  // stream is shared.
  void BeforeEachSend(std::function<void()> hook) { before_send_ = std::move(hook); }

  static constexpr size_t kMaxHeldBytes = 64 * 1024;

 private:
  bool Fill(void* data, size_t size, bool eof_ok);
  // The message's frame: its segment table, then its segments.
  static void FrameOf(capnp::MessageBuilder& message, std::vector<uint32_t>& table,
                      std::vector<iovec>& iov);
  // Writes `iov`, after what is held (with write_mutex_ held).
  void WriteLocked(std::vector<iovec>& iov);
  // Hold of a frame made by FrameOf (its first piece left for what is held), with
  // write_mutex_ held.
  bool HoldLocked(const std::vector<iovec>& iov);
  // Writes what is held, if anything (with write_mutex_ held).
  void FlushLocked();

  int fd_;
  std::shared_ptr<SecureStream> stream_;
  size_t max_frame_bytes_;
  std::function<void()> before_send_;
  std::mutex write_mutex_;
  std::vector<char> held_;  // under write_mutex_
  // The reading thread held an answer (WriteSoon) not sent yet (read without the lock).
  std::atomic<bool> reader_holding_{false};
  std::atomic<std::thread::id> reader_{};
  char buffer_[64 * 1024];
  size_t begin_ = 0;
  size_t end_ = 0;
};

}  // namespace homeward
