// HomeLocks: what the file service shares between its sessions about locks taken through
// homefs (see ARCHITECTURE.md, "Locks"):
//
// - waits: a request that must wait for its lock (F_SETLKW, flock without LOCK_NB) waits
//   in the kernel (a blocking fcntl or flock) on one of a bounded set of threads, never on
//   a worker or the connection's thread. A cancel (the client's FUSE interrupt, the end of
//   its connection, its node declared dead) wakes that thread with a signal whose handler
//   does nothing, so the call returns EINTR. Beyond the bound, waits are tried again
//   without blocking every 100 ms by one thread;
// - holders: who holds which range of which file, as the owners' requests said, so that
//   F_GETLK can name the holder of a lock the home's kernel reports as an OFD lock (pid
//   -1): homefs's locks are OFD locks held by the file service.
#pragma once

#include <pthread.h>
#include <sys/types.h>

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <thread>
#include <utility>
#include <vector>

namespace homeward {

class LockKeeper;

// A description through which a job at home holds locks (its flock, or the OFD locks its
// shim takes for its POSIX locks), taken from the frozen job by the daemon for its move
// (see ARCHITECTURE.md, "Locks of a job that leaves home").
struct HomeJobLock {
  int fd = -1;      // a descriptor of the description (the caller keeps it open)
  bool flock = false;
  int32_t pid = 0;  // the process that holds it, in the job's pid namespace
};

class HomeLocks {
 public:
  // One try to take a lock: 0, or an errno (EAGAIN/EWOULDBLOCK/EACCES: held by another;
  // EINTR: woken). `block`: the try may wait in the kernel.
  using Attempt = std::function<int(bool block)>;
  // The wait's answer, exactly once.
  using Done = std::function<void(int err)>;
  // Identifies a wait: the session and its client's request id.
  using WaitKey = std::pair<const void*, uint64_t>;

  explicit HomeLocks(int max_threads = 64);
  HomeLocks(const HomeLocks&) = delete;
  HomeLocks& operator=(const HomeLocks&) = delete;
  // Ends every wait with EINTR and joins the threads.
  ~HomeLocks();

  // Starts waiting (after a first try without blocking failed). `done` runs on a wait
  // thread, or on Cancel's caller.
  void Wait(WaitKey key, Attempt attempt, Done done);
  // Ends the wait `key` with `err` unless it got its lock first (then with 0). Returns once
  // it has ended; nothing if there is no such wait.
  void Cancel(WaitKey key, int err);
  // The same for every wait of `session`.
  void CancelAll(const void* session, int err);
  // Its client is gone: every wait of `session` ends with `err`, and so does any it starts
  // from now on (a request still being handled), until ForgetSession.
  void EndSession(const void* session, int err);
  size_t waiting();

  // --- holders -------------------------------------------------------------------------
  using Inode = std::pair<uint64_t, uint64_t>;  // (st_dev, st_ino)
  using Owner = std::pair<const void*, uint64_t>;  // session and the client's lock owner
  static constexpr int64_t kToEnd = INT64_MAX;
  // `owner` now holds [start, end] with `type` (F_RDLCK/F_WRLCK); pid as its node said.
  void Held(Inode inode, Owner owner, int pid, short type, int64_t start, int64_t end);
  // `owner` no longer holds [start, end].
  void Unheld(Inode inode, Owner owner, int64_t start, int64_t end);
  // `owner` holds nothing on `inode` any more.
  void Forget(Inode inode, Owner owner);
  // No owner of `session` holds anything any more.
  void ForgetSession(const void* session);
  // The session is destroyed: its waits end (EINTR) and nothing of it is kept.
  void SessionGone(const void* session);
  // The pid of an owner other than `asker` holding a lock on [start, end] that conflicts
  // with `type`.
  std::optional<int> Holder(Inode inode, Owner asker, short type, int64_t start, int64_t end);
  // What `from` holds is `to`'s now (a lock carried across a move), with `pid` unless 0.
  void Rekey(Inode inode, Owner from, Owner to, int pid = 0);

  // --- locks of a moving job (see ARCHITECTURE.md, "Locks across a move") ---------------
  // The session that parks them and the one that claims them differ, so the parked locks
  // wait here, shared; what they are is the file service's (FileSession::Carried).
  void Park(uint64_t token, std::shared_ptr<void> carried);
  // Takes what is parked under `token` (nothing: nullptr).
  std::shared_ptr<void> Unpark(uint64_t token);

  // --- jobs at home, whose shims take their POSIX locks as OFD locks ---------------------
  // The inits of this node's jobs at home: only their processes hold OFD locks a shim took
  // (OfdHolderAtHome looks at no one else's). The daemon's loop publishes them after
  // every turn (only when they changed); any thread reads a copy.
  void SetJobInits(std::vector<pid_t> inits) {
    std::lock_guard lock(inits_mutex_);
    if (inits != job_inits_) job_inits_ = std::move(inits);
  }
  std::vector<pid_t> JobInits() const {
    std::lock_guard lock(inits_mutex_);
    return job_inits_;
  }

  // Keeps the descriptions that hold locks across a restart of the daemon (set once,
  // before the first session; null: none, as in unit tests).
  std::shared_ptr<LockKeeper> keeper;

 private:
  struct Entry;
  void Run();
  void Poll();
  void Finish(std::unique_lock<std::mutex>& lock, const std::shared_ptr<Entry>& entry, int err);

  const int max_threads_;
  std::mutex mutex_;
  std::condition_variable ready_;     // work for the wait threads, or stopping
  std::condition_variable finished_;  // an entry finished
  std::condition_variable polled_;    // work for the poller
  std::map<WaitKey, std::shared_ptr<Entry>> entries_;
  std::map<const void*, int> ended_;  // EndSession's sessions and their errno
  std::deque<std::shared_ptr<Entry>> queue_;  // not taken by a thread yet
  int idle_ = 0;
  bool stopping_ = false;
  std::vector<std::thread> threads_;
  std::thread poller_;

  struct Range {
    Owner owner;
    int pid;
    short type;
    int64_t start, end;
  };
  std::mutex held_mutex_;
  std::map<Inode, std::vector<Range>> held_;
  std::mutex parked_mutex_;
  std::map<uint64_t, std::shared_ptr<void>> parked_;
  mutable std::mutex inits_mutex_;
  std::vector<pid_t> job_inits_;
};

}  // namespace homeward
