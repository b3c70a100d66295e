// Cap'n Proto message framing over byte streams (the standard segment-table framing).
// The decoder accepts bytes in any chunking, refuses frames over its size limit before
// buffering them, and reads every message with a traversal limit: peers are not trusted.
#pragma once

#include <cstddef>
#include <memory>
#include <optional>
#include <string>

#include <capnp/message.h>
#include <capnp/serialize.h>
#include <kj/array.h>

namespace homeward {

// One received message. Owns its words; the reader points into them.
class IncomingMessage {
 public:
  IncomingMessage(kj::Array<capnp::word> words, size_t traversal_limit_words);
  IncomingMessage(IncomingMessage&&) = default;
  IncomingMessage& operator=(IncomingMessage&&) = default;

  template <typename T>
  typename T::Reader Root() {
    return reader_->getRoot<T>();
  }
  size_t size_in_bytes() const { return words_.size() * sizeof(capnp::word); }

 private:
  kj::Array<capnp::word> words_;
  std::unique_ptr<capnp::FlatArrayMessageReader> reader_;
};

// Serializes a message into one frame (segment table followed by the segments).
kj::Array<capnp::word> EncodeFrame(capnp::MessageBuilder& message);

class FrameDecoder {
 public:
  // Frames larger than `max_frame_bytes` are refused with Error(kInvalidInput).
  explicit FrameDecoder(size_t max_frame_bytes);

  // Appends received bytes.
  void Feed(const void* data, size_t size);
  // Returns the next complete message, or nothing until more bytes arrive. Throws
  // Error(kInvalidInput) on an oversized or malformed frame; the stream is then unusable.
  std::optional<IncomingMessage> Next();
  // Bytes received but not yet returned as a message.
  size_t buffered() const { return buffer_.size() - consumed_; }

 private:
  size_t max_frame_bytes_;
  std::string buffer_;
  size_t consumed_ = 0;
};

// Blocking helpers for simple clients (the user commands).
void WriteFrame(int fd, capnp::MessageBuilder& message);
// Reads until one message is complete. Returns nothing on a clean end of stream before
// any byte of a new message; throws Error(kDisconnected) on an end of stream mid-frame.
std::optional<IncomingMessage> ReadFrame(int fd, FrameDecoder& decoder);

// Keeps the memory of big messages (a write's or a read's data, up to a MiB, a page
// batch of a move) in the process's heap once freed, for the next, rather than giving it
// back to the kernel after each: on a VM every page faulted in again costs a trip through
// the hypervisor. A file service or homefs allocates and frees such messages by the
// thousand a second. Call once, first thing in main.
void KeepMessageMemory();

}  // namespace homeward
