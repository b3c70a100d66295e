// Gate: counts work in flight so that its owner can wait, without polling, until none is
// left (Seastar's gate). Enter before handing a piece of work on; Leave when it is done.
#pragma once

#include <condition_variable>
#include <cstddef>
#include <mutex>

namespace homeward {

class Gate {
 public:
  Gate() = default;
  Gate(const Gate&) = delete;
  Gate& operator=(const Gate&) = delete;

  void Enter() {
    std::lock_guard lock(mutex_);
    ++count_;
  }
  // Notifies under the lock: a waiter cannot return (and free the gate) before this is done.
  void Leave() {
    std::lock_guard lock(mutex_);
    if (--count_ == 0) idle_.notify_all();
  }
  size_t count() const {
    std::lock_guard lock(mutex_);
    return count_;
  }
  // Blocks until everything that entered has left.
  void Wait() {
    std::unique_lock lock(mutex_);
    idle_.wait(lock, [&] { return count_ == 0; });
  }

 private:
  mutable std::mutex mutex_;
  std::condition_variable idle_;
  size_t count_ = 0;
};

}  // namespace homeward
