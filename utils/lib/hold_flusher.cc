#include "hold_flusher.h"

#include <spdlog/spdlog.h>

#include <exception>

#include "unpinned_thread.h"

namespace homeward {

HoldFlusher::~HoldFlusher() {
  {
    std::lock_guard lock(mutex_);
    stopping_ = true;
  }
  due_.notify_one();
  if (thread_.joinable()) thread_.join();
}

void HoldFlusher::Due(const std::shared_ptr<FrameStream>& stream) {
  {
    std::lock_guard lock(mutex_);
    stream_ = stream;
    if (!thread_.joinable()) thread_ = UnpinnedThread("flush held", [this] { Loop(); });
    if (pending_) return;
    pending_ = true;
  }
  due_.notify_one();
}

void HoldFlusher::Loop() {
  std::unique_lock lock(mutex_);
  for (;;) {
    due_.wait(lock, [this] { return pending_ || stopping_; });
    if (!pending_) return;  // stopping, nothing due
    // The run gathers meanwhile; a flusher that ends sends it at once.
    due_.wait_for(lock, hold_, [this] { return stopping_; });
    pending_ = false;
    auto stream = stream_.lock();
    lock.unlock();
    if (stream) {
      try {
        stream->Flush();
      } catch (const std::exception& e) {
        // The stream's reader sees the broken connection and deals with what was sent.
        spdlog::debug("held messages not sent: {}", e.what());
      }
    }
    lock.lock();
  }
}

}  // namespace homeward
