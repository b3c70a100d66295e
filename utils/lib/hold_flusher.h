// HoldFlusher: sends what a FrameStream holds (FrameStream::Hold) a moment after the first
// message of a run was held, on a thread of its own. Messages sent behind (the caller was
// answered already) within that moment go out in one send, and the peer reads and answers
// them in one go: one wake-up of each side per run instead of per message.
#pragma once

#include <chrono>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <thread>

#include "frame_stream.h"

namespace homeward {

class HoldFlusher {
 public:
  // Its thread starts at the first Due (after a daemon's fork, not before).
  explicit HoldFlusher(std::chrono::microseconds hold) : hold_(hold) {}
  HoldFlusher(const HoldFlusher&) = delete;
  HoldFlusher& operator=(const HoldFlusher&) = delete;
  ~HoldFlusher();  // flushes what is due, then ends its thread

  // `stream` held its first message of a run: flushed `hold` from now.
  void Due(const std::shared_ptr<FrameStream>& stream);

 private:
  void Loop();

  const std::chrono::microseconds hold_;
  std::mutex mutex_;
  std::condition_variable due_;
  std::weak_ptr<FrameStream> stream_;  // a broken connection's stream is not kept for it
  bool pending_ = false;
  bool stopping_ = false;
  std::thread thread_;
};

}  // namespace homeward
