// WritesBehind: the writes a mount acknowledged to the kernel before the home answered
// them (write-behind, as NFS and sshfs do), counted until the home does. A writer then
// pays one trip into homefs per write instead of a round trip to the home; what it must
// still see is kept by the callers: every other request waits for the writes behind to
// be answered first (Drain), so that a read, a stat, a lock, an fsync or a close of any
// file on the mount finds them done at the home; and a write the home refused is
// reported by the next write, fsync or close of its handle (TakeError), as NFS does.
#pragma once

#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <unordered_map>

#include "wait_or_give_up.h"

namespace homeward {

class WritesBehind {
 public:
  // One write out: its destructor counts it answered, with `unanswered` (EIO: a write
  // whose request was dropped unanswered, as at unmount, failed) unless Finish says
  // otherwise.
  class Ticket {
   public:
    Ticket(WritesBehind& owner, uint64_t fh, size_t bytes, int unanswered)
        : owner_(owner), fh_(fh), bytes_(bytes), err_(unanswered) {}
    Ticket(const Ticket&) = delete;
    Ticket& operator=(const Ticket&) = delete;
    ~Ticket() { owner_.Done(fh_, bytes_, err_); }
    // The home's answer: 0, or the errno the write failed with.
    void Finish(int err) { err_ = err; }

   private:
    WritesBehind& owner_;
    uint64_t fh_;
    size_t bytes_;
    int err_;
  };

  // Asked while a wait goes on (every poll interval): true ends the wait.
  using GiveUp = std::function<bool()>;
  static constexpr std::chrono::milliseconds kPoll{50};

  // At most `max_bytes` of data and `max_writes` writes out at once (one write is let out
  // whatever its size).
  WritesBehind(size_t max_bytes, size_t max_writes) : max_bytes_(max_bytes), max_writes_(max_writes) {}

  // Runs before any wait for answers: writes behind may be held a moment to go out
  // together (FileClient::Send), and one that is waited for goes out at once.
  void BeforeWaiting(std::function<void()> send_held) { send_held_ = std::move(send_held); }

  // Waits for room, then counts a write of `bytes` on handle `fh` out. Null when
  // `give_up` ended the wait first. `unanswered`: the error counted against `fh` if the
  // ticket ends without Finish (0 for requests whose failures are reported elsewhere).
  std::shared_ptr<Ticket> Start(uint64_t fh, size_t bytes, const GiveUp& give_up,
                                int unanswered = EIO) {
    std::unique_lock lock(mutex_);
    if (!WaitLocked(lock, give_up, [&] {
          return writes_ == 0 || (writes_ < max_writes_ && bytes_ + bytes <= max_bytes_);
        })) {
      return nullptr;
    }
    ++writes_;
    bytes_ += bytes;
    ++out_by_fh_[fh];
    return std::make_shared<Ticket>(*this, fh, bytes, unanswered);
  }

  // Waits until no write is out. False when `give_up` ended the wait first.
  bool Drain(const GiveUp& give_up) {
    std::unique_lock lock(mutex_);
    return WaitLocked(lock, give_up, [&] { return writes_ == 0; });
  }
  // Waits until no write of handle `fh` is out (a close of one file does not wait for
  // another's writes).
  bool DrainHandle(uint64_t fh, const GiveUp& give_up) {
    std::unique_lock lock(mutex_);
    return WaitLocked(lock, give_up, [&] { return !out_by_fh_.contains(fh); });
  }

  // The first error of a write on `fh` not reported yet; it is reported once.
  int TakeError(uint64_t fh) {
    std::lock_guard lock(mutex_);
    auto it = errors_.find(fh);
    if (it == errors_.end()) return 0;
    int err = it->second;
    errors_.erase(it);
    return err;
  }
  // Whether a write of any handle failed and no one has heard yet.
  bool HasErrors() {
    std::lock_guard lock(mutex_);
    return !errors_.empty();
  }
  bool Idle() {
    std::lock_guard lock(mutex_);
    return writes_ == 0;
  }

 private:
  template <typename Ready>
  bool WaitLocked(std::unique_lock<std::mutex>& lock, const GiveUp& give_up, Ready ready) {
    if (!ready() && send_held_) {
      lock.unlock();
      send_held_();
      lock.lock();
    }
    return WaitOrGiveUp(changed_, lock, kPoll, give_up, ready);
  }

  void Done(uint64_t fh, size_t bytes, int err) {
    std::lock_guard lock(mutex_);
    --writes_;
    bytes_ -= bytes;
    if (auto it = out_by_fh_.find(fh); it != out_by_fh_.end() && --it->second == 0) {
      out_by_fh_.erase(it);
    }
    if (err != 0) errors_.try_emplace(fh, err);
    changed_.notify_all();
  }

  const size_t max_bytes_, max_writes_;
  std::function<void()> send_held_;  // set before the mount serves
  std::mutex mutex_;
  std::condition_variable changed_;
  size_t writes_ = 0, bytes_ = 0;
  std::unordered_map<uint64_t, int> errors_;  // by handle: the first unreported error
  std::unordered_map<uint64_t, size_t> out_by_fh_;  // writes out, by handle
};

}  // namespace homeward
