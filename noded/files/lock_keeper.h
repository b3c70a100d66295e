// LockKeeper: a process of the file service's own (mosnoded --keep-locks) that holds a copy
// of every open file description holding locks taken through homefs (a lock owner's
// description, a flocked open file), so that the locks outlive a restart of the home's
// daemon: OFD and flock locks belong to the description, which stays open while any copy
// does. The next daemon takes the copies back (its file service reads them out of the
// keeper, which it finds by the record in the state directory) and gives each to its client
// when that client connects again. See ARCHITECTURE.md, "Locks across a restart".
#pragma once

#include <sys/types.h>

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "child_process.h"
#include "fd.h"

namespace homeward {

class LockKeeper : public std::enable_shared_from_this<LockKeeper> {
 public:
  // What a kept description is, as the next daemon needs to know it. kParked: a moving
  // job's (only this daemon could give it to the job's target), so a restart drops it.
  enum class Kind { kPosix, kFlock, kParked };
  struct Meta {
    Kind kind = Kind::kPosix;
    uint64_t client = 0;  // the homefs mount's id (its hello's)
    uint64_t owner = 0;   // the client's lock owner (kPosix)
    std::pair<uint64_t, uint64_t> inode;
    int pid = 0;       // the holder's home id, for F_GETLK
    int access = 0;    // the description's O_ACCMODE
    std::string host;  // the client's node, whose death drops it
  };

  // One description the keeper holds a copy of, with the service's own descriptor of it.
  // The last reference releases what the description still holds (the service no longer
  // wants its locks: an unlock here is at once, whatever the keeper does) and tells the
  // keeper to close its copy.
  class Kept {
   public:
    Kept(std::weak_ptr<LockKeeper> keeper, uint64_t serial, Fd fd);
    Kept(const Kept&) = delete;
    Kept& operator=(const Kept&) = delete;
    ~Kept();
    int fd() const { return fd_.get(); }
    // What it is now (a carried lock bound to another client's owner, parked, a new pid).
    void Describe(const Meta& meta);
    // The description is handed to a job at home, whose own it is from now on (see
    // ARCHITECTURE.md, "Locks of a job that comes home"): the keeper closes its copy now,
    // and nothing here unlocks it, now or when the last reference goes.
    void Release();

   private:
    std::weak_ptr<LockKeeper> keeper_;
    uint64_t serial_;
    Fd fd_;
    std::atomic<bool> released_{false};
  };

  // A description a daemon before this one kept, for its client to take back.
  struct Orphan {
    Meta meta;
    std::shared_ptr<Kept> kept;
  };

  // Finds the keeper `record` names (a daemon before this one started it) and takes back
  // what it holds, else starts one. Never throws: without a keeper the locks are the
  // daemon's alone (logged).
  static std::shared_ptr<LockKeeper> Start(const std::string& record);
  ~LockKeeper();

  // Keeps a copy of `fd`'s description, described by `meta`; nullptr when it cannot.
  std::shared_ptr<Kept> Keep(int fd, const Meta& meta);
  // The descriptions kept for `client` before this daemon started (taken: each once).
  std::vector<Orphan> Adopt(uint64_t client);
  // The node `host` was declared dead: what was kept for its clients goes.
  void DropOrphans(const std::string& host);
  // The daemon stops: the keeper goes on holding everything for the next one (and the
  // service's descriptions are no longer unlocked when they close).
  void Detach();
  bool detached();

 private:
  LockKeeper() = default;
  void Send(const std::string& text, int fd = -1);
  void Reclaim();

  std::mutex mutex_;
  Fd command_;
  std::optional<ChildProcess> child_;
  uint64_t next_serial_ = 1;
  std::vector<Orphan> orphans_;
  bool detached_ = false;
};

// The keeper's main (mosnoded --keep-locks): holds what it is given until told to close
// it, and hands every copy it holds to whoever asks (a daemon restarted). Once its daemon
// is gone it ends at once if it holds nothing, else after 10 minutes without a new one.
int LockKeeperMain();

}  // namespace homeward
