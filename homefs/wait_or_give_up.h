// A condition wait that a caller may abandon: homefs's waits behind writes and resends
// end when the caller is interrupted while its home is silent, which no notification
// says, so the caller is asked at intervals.
#pragma once

#include <chrono>
#include <condition_variable>
#include <functional>
#include <mutex>

namespace homeward {

// Waits on `changed` (under `lock`) until `ready()`, asking `give_up` every `poll` while
// it is not; false when `give_up` said to stop first.
template <typename Ready>
bool WaitOrGiveUp(std::condition_variable& changed, std::unique_lock<std::mutex>& lock,
                  std::chrono::milliseconds poll, const std::function<bool()>& give_up,
                  Ready ready) {
  while (!ready()) {
    if (changed.wait_for(lock, poll, ready)) break;
    lock.unlock();
    bool stop = give_up && give_up();
    lock.lock();
    if (stop && !ready()) return false;
  }
  return true;
}

}  // namespace homeward
