// WorkThread: runs posted jobs in order on a thread of its own. The thread starts with
// the first job and ends after `linger` without one, so a home nobody uses holds no
// thread (homefs serves every home of the cluster from one process).
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <deque>
#include <functional>
#include <mutex>
#include <thread>

#include <spdlog/spdlog.h>

#include "unpinned_thread.h"
#include "wait_or_give_up.h"

namespace homeward {

class WorkThread {
 public:
  // `stopping`: the job runs from Stop, not on the thread (the mount is going away).
  using Job = std::function<void(bool stopping)>;

  WorkThread(const char* what, std::chrono::milliseconds linger) : what_(what), linger_(linger) {}
  WorkThread(const WorkThread&) = delete;
  WorkThread& operator=(const WorkThread&) = delete;
  ~WorkThread() { Stop(); }

  // Queues `job`; false (and the job is dropped) when stopped or `limit` jobs wait.
  bool Post(Job job, size_t limit = SIZE_MAX) {
    std::lock_guard lock(mutex_);
    if (stopping_ || jobs_.size() >= limit) return false;
    jobs_.push_back(std::move(job));
    if (!running_) {
      // The last thread has left its loop (running_ is cleared as it goes); joining it
      // waits at most for its return.
      if (thread_.joinable()) thread_.join();
      running_ = true;
      thread_ = UnpinnedThread("homefs work", [this] { Loop(); });
    }
    ready_.notify_one();
    return true;
  }

  // Ends the thread after its current job; what is left runs here with `stopping`.
  void Stop() {
    std::deque<Job> left;
    {
      std::lock_guard lock(mutex_);
      stopping_ = true;
    }
    ready_.notify_all();
    if (thread_.joinable()) thread_.join();
    {
      std::lock_guard lock(mutex_);
      left.swap(jobs_);
    }
    for (auto& job : left) Run(job, true);
    idle_.notify_all();
  }

  // Whether no job waits or runs.
  bool idle() {
    std::lock_guard lock(mutex_);
    return jobs_.empty() && !busy_;
  }
  // Waits until no job waits or runs; false when `give_up`, asked every `poll` while the
  // wait goes on, ended it first.
  bool WaitIdle(const std::function<bool()>& give_up, std::chrono::milliseconds poll) {
    std::unique_lock lock(mutex_);
    return WaitOrGiveUp(idle_, lock, poll, give_up, [&] { return jobs_.empty() && !busy_; });
  }
  // Whether the thread exists (for the tests of a home's cost).
  bool running() {
    std::lock_guard lock(mutex_);
    return running_;
  }

 private:
  void Loop() {
    std::unique_lock lock(mutex_);
    for (;;) {
      if (!ready_.wait_for(lock, linger_, [&] { return stopping_ || !jobs_.empty(); }) ||
          stopping_) {
        running_ = false;
        return;
      }
      Job job = std::move(jobs_.front());
      jobs_.pop_front();
      busy_ = true;
      lock.unlock();
      Run(job, false);
      job = nullptr;  // what it holds goes before the next wait
      lock.lock();
      busy_ = false;
      if (jobs_.empty()) idle_.notify_all();
    }
  }

  void Run(Job& job, bool stopping) {
    try {
      job(stopping);
    } catch (const std::exception& e) {
      spdlog::error("homefs: {}: {}", what_, e.what());
    }
  }

  const char* what_;
  std::chrono::milliseconds linger_;
  std::mutex mutex_;
  std::condition_variable ready_;
  std::condition_variable idle_;
  std::deque<Job> jobs_;
  bool stopping_ = false;
  bool running_ = false;
  bool busy_ = false;
  std::thread thread_;
};

}  // namespace homeward
