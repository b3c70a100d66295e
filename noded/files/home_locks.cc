// HomeLocks: waits for locks on a bounded set of threads, woken by a signal to cancel;
// and the table of who holds what, for F_GETLK's answer.
#include "home_locks.h"

#include <fcntl.h>
#include <signal.h>

#include <algorithm>
#include <cerrno>
#include <chrono>

#include <spdlog/spdlog.h>

namespace homeward {

namespace {

// Sent to a wait thread to end its blocking call (its handler does nothing, and it is
// installed without SA_RESTART, so the call fails with EINTR). Only these threads
// unblock it.
int WakeSignal() {
  return SIGRTMIN + 5;
}

void InstallWakeHandler() {
  static std::once_flag once;  // a process-wide disposition, set once; no state
  std::call_once(once, [] {
    struct sigaction action {};
    action.sa_handler = [](int) {};
    sigemptyset(&action.sa_mask);
    action.sa_flags = 0;  // no SA_RESTART: the blocking call must return
    if (::sigaction(WakeSignal(), &action, nullptr) < 0) {
      spdlog::error("file service: no signal to cancel lock waits: {}", std::strerror(errno));
    }
  });
}

bool Busy(int err) {
  return err == EAGAIN || err == EWOULDBLOCK || err == EACCES;
}

constexpr auto kPollInterval = std::chrono::milliseconds(100);

}  // namespace

struct HomeLocks::Entry {
  WaitKey key;
  Attempt attempt;
  Done done;
  pthread_t thread{};
  bool blocking = false;  // a thread is in attempt(true)
  int cancel_err = 0;     // set by Cancel
  bool finished = false;
};

HomeLocks::HomeLocks(int max_threads) : max_threads_(std::max(1, max_threads)) {}

HomeLocks::~HomeLocks() {
  std::vector<WaitKey> keys;
  {
    std::lock_guard lock(mutex_);
    for (auto& [key, entry] : entries_) keys.push_back(key);
  }
  for (auto& key : keys) Cancel(key, EINTR);
  {
    std::lock_guard lock(mutex_);
    stopping_ = true;
  }
  ready_.notify_all();
  polled_.notify_all();
  for (auto& t : threads_) t.join();
  if (poller_.joinable()) poller_.join();
}

size_t HomeLocks::waiting() {
  std::lock_guard lock(mutex_);
  return entries_.size();
}

void HomeLocks::Wait(WaitKey key, Attempt attempt, Done done) {
  InstallWakeHandler();
  auto entry = std::make_shared<Entry>();
  entry->key = key;
  entry->attempt = std::move(attempt);
  entry->done = std::move(done);
  std::unique_lock lock(mutex_);
  if (auto ended = ended_.find(key.first); ended != ended_.end()) {
    int err = ended->second;
    lock.unlock();
    entry->done(err);
    return;
  }
  entries_[key] = entry;
  queue_.push_back(entry);
  if (idle_ == 0) {
    if (static_cast<int>(threads_.size()) < max_threads_) {
      try {
        threads_.emplace_back([this] { Run(); });
      } catch (const std::system_error& e) {
        spdlog::warn("file service: no thread for a lock wait ({}); it is polled", e.what());
      }
    }
    // Waits no thread takes (all busy) are tried every 100 ms meanwhile.
    if (!poller_.joinable()) poller_ = std::thread([this] { Poll(); });
    polled_.notify_one();
  }
  ready_.notify_one();
}

void HomeLocks::Finish(std::unique_lock<std::mutex>& lock, const std::shared_ptr<Entry>& entry,
                       int err) {
  entry->finished = true;
  auto it = entries_.find(entry->key);
  if (it != entries_.end() && it->second == entry) entries_.erase(it);
  Done done = std::move(entry->done);
  entry->attempt = nullptr;  // lets go of the lock's descriptor
  finished_.notify_all();
  lock.unlock();
  try {
    if (done) done(err);
  } catch (const std::exception& e) {
    spdlog::warn("file service: answering a lock wait: {}", e.what());
  }
  lock.lock();
}

void HomeLocks::Run() {
  sigset_t wake;
  sigemptyset(&wake);
  sigaddset(&wake, WakeSignal());
  pthread_sigmask(SIG_UNBLOCK, &wake, nullptr);
  std::unique_lock lock(mutex_);
  for (;;) {
    ++idle_;
    ready_.wait(lock, [&] { return stopping_ || !queue_.empty(); });
    --idle_;
    if (queue_.empty()) return;  // stopping
    auto entry = std::move(queue_.front());
    queue_.pop_front();
    if (entry->cancel_err) {
      Finish(lock, entry, entry->cancel_err);
      continue;
    }
    entry->thread = pthread_self();
    entry->blocking = true;
    Attempt attempt = entry->attempt;
    int err;
    for (;;) {
      lock.unlock();
      err = attempt(true);
      lock.lock();
      // Woken by a cancel: the answer is the cancel's. A lock got first stands; any other
      // signal only wakes it to wait again.
      if (err != EINTR) break;
      if (entry->cancel_err) {
        err = entry->cancel_err;
        break;
      }
    }
    entry->blocking = false;
    Finish(lock, entry, err);
  }
}

void HomeLocks::Poll() {
  std::unique_lock lock(mutex_);
  while (!stopping_) {
    polled_.wait_for(lock, kPollInterval);
    if (stopping_) break;
    if (idle_ > 0) continue;  // the threads take what is queued
    std::vector<std::pair<std::shared_ptr<Entry>, int>> ended;
    for (auto it = queue_.begin(); it != queue_.end();) {
      int err = (*it)->cancel_err ? (*it)->cancel_err : (*it)->attempt(false);
      if (Busy(err) || err == EINTR) {
        ++it;
        continue;
      }
      ended.emplace_back(*it, err);
      it = queue_.erase(it);
    }
    for (auto& [entry, err] : ended) Finish(lock, entry, err);
  }
}

void HomeLocks::Cancel(WaitKey key, int err) {
  std::unique_lock lock(mutex_);
  auto it = entries_.find(key);
  if (it == entries_.end()) return;
  auto entry = it->second;
  if (!entry->cancel_err) entry->cancel_err = err;
  auto queued = std::find(queue_.begin(), queue_.end(), entry);
  if (queued != queue_.end()) {
    queue_.erase(queued);
    Finish(lock, entry, entry->cancel_err);
    return;
  }
  // A thread waits in the kernel: signal it until it is out. Again and again, because a
  // signal that arrives just before the thread enters the call is lost.
  while (!entry->finished) {
    if (entry->blocking) pthread_kill(entry->thread, WakeSignal());
    finished_.wait_for(lock, std::chrono::milliseconds(2));
  }
}

void HomeLocks::EndSession(const void* session, int err) {
  {
    std::lock_guard lock(mutex_);
    ended_[session] = err;
  }
  CancelAll(session, err);
}

void HomeLocks::CancelAll(const void* session, int err) {
  std::vector<WaitKey> keys;
  {
    std::lock_guard lock(mutex_);
    for (auto it = entries_.lower_bound({session, 0});
         it != entries_.end() && it->first.first == session; ++it) {
      keys.push_back(it->first);
    }
  }
  for (auto& key : keys) Cancel(key, err);
}

// --- holders ---------------------------------------------------------------------------

void HomeLocks::Held(Inode inode, Owner owner, int pid, short type, int64_t start, int64_t end) {
  Unheld(inode, owner, start, end);
  std::lock_guard lock(held_mutex_);
  held_[inode].push_back({owner, pid, type, start, end});
}

void HomeLocks::Unheld(Inode inode, Owner owner, int64_t start, int64_t end) {
  std::lock_guard lock(held_mutex_);
  auto it = held_.find(inode);
  if (it == held_.end()) return;
  std::vector<Range> kept;
  for (const Range& r : it->second) {
    if (r.owner != owner || r.end < start || r.start > end) {
      kept.push_back(r);
      continue;
    }
    if (r.start < start) kept.push_back({r.owner, r.pid, r.type, r.start, start - 1});
    if (r.end > end) kept.push_back({r.owner, r.pid, r.type, end + 1, r.end});
  }
  if (kept.empty()) {
    held_.erase(it);
  } else {
    it->second = std::move(kept);
  }
}

void HomeLocks::Forget(Inode inode, Owner owner) {
  std::lock_guard lock(held_mutex_);
  auto it = held_.find(inode);
  if (it == held_.end()) return;
  std::erase_if(it->second, [&](const Range& r) { return r.owner == owner; });
  if (it->second.empty()) held_.erase(it);
}

void HomeLocks::SessionGone(const void* session) {
  CancelAll(session, EINTR);
  {
    std::lock_guard lock(mutex_);
    ended_.erase(session);  // its address may be another session's next
  }
  ForgetSession(session);
}

void HomeLocks::ForgetSession(const void* session) {
  std::lock_guard lock(held_mutex_);
  for (auto it = held_.begin(); it != held_.end();) {
    std::erase_if(it->second, [&](const Range& r) { return r.owner.first == session; });
    it = it->second.empty() ? held_.erase(it) : std::next(it);
  }
}

std::optional<int> HomeLocks::Holder(Inode inode, Owner asker, short type, int64_t start,
                                     int64_t end) {
  std::lock_guard lock(held_mutex_);
  auto it = held_.find(inode);
  if (it == held_.end()) return std::nullopt;
  for (const Range& r : it->second) {
    if (r.owner == asker || r.end < start || r.start > end) continue;
    if (type == F_WRLCK || r.type == F_WRLCK) return r.pid;
  }
  return std::nullopt;
}

void HomeLocks::Rekey(Inode inode, Owner from, Owner to, int pid) {
  std::lock_guard lock(held_mutex_);
  auto it = held_.find(inode);
  if (it == held_.end()) return;
  for (Range& r : it->second) {
    if (r.owner != from) continue;
    r.owner = to;
    if (pid) r.pid = pid;
  }
}

void HomeLocks::Park(uint64_t token, std::shared_ptr<void> carried) {
  std::lock_guard lock(parked_mutex_);
  parked_[token] = std::move(carried);
}

std::shared_ptr<void> HomeLocks::Unpark(uint64_t token) {
  std::lock_guard lock(parked_mutex_);
  auto it = parked_.find(token);
  if (it == parked_.end()) return nullptr;
  auto carried = std::move(it->second);
  parked_.erase(it);
  return carried;
}

}  // namespace homeward
