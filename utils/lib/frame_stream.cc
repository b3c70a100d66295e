// Blocking framed message I/O without copies of large segments.
#include "frame_stream.h"

#include <sys/socket.h>
#include <sys/uio.h>

#include <cstring>
#include <vector>

#include "error.h"

namespace homeward {

bool FrameStream::Fill(void* data, size_t size, bool eof_ok) {
  auto* out = static_cast<char*>(data);
  while (size > 0) {
    if (begin_ < end_) {
      size_t n = std::min(size, end_ - begin_);
      std::memcpy(out, buffer_ + begin_, n);
      begin_ += n;
      out += n;
      size -= n;
      eof_ok = false;  // part of a frame: an end of stream now cuts it
      continue;
    }
    // What this thread held (WriteSoon) goes out before it waits for more: a writer that
    // has the lock sends it with its own message (waiting for that writer could wait for
    // ever, while its send waits for the peer, which waits for us to read). What other
    // threads hold waits for their Flush or the next Write: the answers this thread
    // reads say nothing of when they want it sent.
    if (reader_holding_.load(std::memory_order_relaxed)) {
      std::unique_lock lock(write_mutex_, std::try_to_lock);
      if (lock.owns_lock()) FlushLocked();
    }
    // Big bodies go straight to their destination (decrypted in place when a whole record
    // fits); the rest through the buffer. The secure stream returns 0 only at the peer's
    // end record (a cut connection throws).
    bool direct = size >= sizeof buffer_;
    char* into = direct ? out : buffer_;
    size_t room = direct ? size : sizeof buffer_;
    ssize_t n =
        stream_ ? static_cast<ssize_t>(stream_->Read(into, room)) : ::recv(fd_, into, room, 0);
    if (n > 0) {
      if (direct) {
        out += n;
        size -= static_cast<size_t>(n);
      } else {
        begin_ = 0;
        end_ = static_cast<size_t>(n);
      }
      eof_ok = false;
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) throw SystemError(errno, "peer connection: receive");
    if (eof_ok) return false;
    Fail(ErrorKind::kDisconnected, "peer connection closed in the middle of a message");
  }
  return true;
}

std::optional<IncomingMessage> FrameStream::Read() {
  reader_.store(std::this_thread::get_id(), std::memory_order_relaxed);
  uint32_t first[2];
  if (!Fill(first, sizeof first, true)) return std::nullopt;
  // The count is sent less one: 0xffffffff must not wrap to 0 segments.
  if (first[0] >= 512) {
    Fail(ErrorKind::kInvalidInput, "malformed frame: {} segments", first[0] + uint64_t{1});
  }
  uint32_t segments = first[0] + 1;
  std::vector<uint32_t> sizes(segments);
  sizes[0] = first[1];
  size_t table_words = (segments / 2) + 1;  // (4 + 4*segments) bytes rounded up to words
  if (segments > 1) Fill(sizes.data() + 1, (segments - 1) * 4, false);
  if (segments % 2 == 0) {
    uint32_t pad;
    Fill(&pad, 4, false);
  }
  size_t body_words = 0;
  for (uint32_t s : sizes) body_words += s;
  if ((table_words + body_words) * sizeof(capnp::word) > max_frame_bytes_) {
    Fail(ErrorKind::kInvalidInput, "frame of {} bytes exceeds the limit of {} bytes",
         (table_words + body_words) * sizeof(capnp::word), max_frame_bytes_);
  }
  auto words = kj::heapArray<capnp::word>(table_words + body_words);
  auto* table = reinterpret_cast<uint32_t*>(words.begin());
  std::memset(table, 0, table_words * sizeof(capnp::word));
  table[0] = segments - 1;
  std::memcpy(table + 1, sizes.data(), segments * 4);
  Fill(words.begin() + table_words, body_words * sizeof(capnp::word), false);
  // Twice the frame: a reader may look at a field twice, never more.
  return IncomingMessage(kj::mv(words), 2 * max_frame_bytes_ / sizeof(capnp::word) + 1);
}

void FrameStream::FrameOf(capnp::MessageBuilder& message, std::vector<uint32_t>& table,
                          std::vector<iovec>& iov) {
  auto segments = message.getSegmentsForOutput();
  table.assign(segments.size() + 1 + (segments.size() % 2 == 0 ? 1 : 0), 0);
  table[0] = static_cast<uint32_t>(segments.size() - 1);
  for (size_t i = 0; i < segments.size(); ++i) table[i + 1] = segments[i].size();
  iov.push_back({table.data(), table.size() * 4});
  for (auto segment : segments) {
    auto bytes = segment.asBytes();
    iov.push_back({const_cast<capnp::byte*>(bytes.begin()), bytes.size()});
  }
}

void FrameStream::Write(capnp::MessageBuilder& message) {
  std::vector<uint32_t> table;
  std::vector<iovec> iov(1);  // the first for what is held
  FrameOf(message, table, iov);
  std::lock_guard lock(write_mutex_);
  WriteLocked(iov);
}

bool FrameStream::Hold(capnp::MessageBuilder& message) {
  std::vector<uint32_t> table;
  std::vector<iovec> iov(1);
  FrameOf(message, table, iov);
  std::lock_guard lock(write_mutex_);
  return HoldLocked(iov);
}

bool FrameStream::HoldLocked(const std::vector<iovec>& iov) {
  bool first = held_.empty();
  for (size_t i = 1; i < iov.size(); ++i) {
    auto* bytes = static_cast<const char*>(iov[i].iov_base);
    held_.insert(held_.end(), bytes, bytes + iov[i].iov_len);
  }
  if (held_.size() >= kMaxHeldBytes) FlushLocked();
  return first;
}

void FrameStream::Flush() {
  std::lock_guard lock(write_mutex_);
  FlushLocked();
}

void FrameStream::FlushLocked() {
  if (held_.empty()) return;
  std::vector<iovec> none(1);  // the slot for what is held, and nothing after it
  WriteLocked(none);
}

void FrameStream::WriteSoon(capnp::MessageBuilder& message) {
  // begin_ and end_ are the reading thread's own: looked at only on that thread.
  if (reader_.load(std::memory_order_relaxed) == std::this_thread::get_id() && begin_ < end_) {
    std::vector<uint32_t> table;
    std::vector<iovec> iov(1);
    FrameOf(message, table, iov);
    std::lock_guard lock(write_mutex_);
    HoldLocked(iov);
    // Unless it went out already (past kMaxHeldBytes).
    if (!held_.empty()) reader_holding_.store(true, std::memory_order_relaxed);
  } else {
    Write(message);
  }
}

void FrameStream::WriteLocked(std::vector<iovec>& iov) {
  if (before_send_) before_send_();
  iov[0] = {held_.data(), held_.size()};
  if (stream_) {
    stream_->Write(iov.data(), iov.size());
    held_.clear();
    reader_holding_.store(false, std::memory_order_relaxed);
    return;
  }
  SendAll(fd_, iov.data(), iov.size(), "peer connection: send");
  held_.clear();
  reader_holding_.store(false, std::memory_order_relaxed);
}

}  // namespace homeward
