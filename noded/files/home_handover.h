// HomeHandover: the locks of a job that comes home (see ARCHITECTURE.md, "Locks of a job
// that comes home"). Away, the job's locks on its home's files are held by the home's file
// service on descriptions of its own; the source parks them when the job moves, as for any
// move. At home the restored job's files are the real files, so no homefs claims them:
// the home takes them out of the parked table for the job's mount namespace before criu
// runs and holds them until the job's processes take them (its shim asks on the lock
// holder socket as the process next locks, unlocks, flocks or closes the file: a POSIX
// owner's description goes into the shim's table of its own, a flock's description
// replaces the program's descriptor), and lets go of what no process of the job holds
// open any more (it closed the file or ended without asking), so the locks go then.
//
// Only the job's own processes are handed anything: the asker (its pid and uid as the
// socket's SO_PEERCRED gave them) must be in the job's mount namespace, which no other
// process is in, run as the job's user, and a POSIX owner's description goes only to
// the process that owned it (by its pid in the job).
#pragma once

#include <sys/types.h>

#include <condition_variable>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include "fd.h"
#include "home_locks.h"

namespace homeward {

class HomeHandover {
 public:
  explicit HomeHandover(std::shared_ptr<HomeLocks> locks);
  HomeHandover(const HomeHandover&) = delete;
  HomeHandover& operator=(const HomeHandover&) = delete;
  ~HomeHandover();  // what is still held goes (its locks with it)

  // Takes what is parked under `token` for the job of user `uid` restored in mount
  // namespace `mntns` (false: nothing parked).
  bool Claim(uint64_t token, uint64_t mntns, uid_t uid);
  // criu restored the job: from now on what no process of it holds open goes.
  void Restored(uint64_t token);
  // The restore failed: parked again under `token`, for the source's unpark.
  void Unclaim(uint64_t token);

  struct Handed {
    Fd fd;
    int kind = 0;  // kHandPosix, kHandFlock; 0: nothing; -1: refused (see `refusal`)
    int left = 0;  // what is still held for the job
    std::string refusal;
  };
  // The description through which process `pid` of user `uid` (of this node, SO_PEERCRED)
  // holds locks of `kind` (lock_handover.h) on the file `inode` (the fstat of a descriptor
  // the asker passed), taken out of the service's hands. Refused unless the process is
  // one of a job coming home, of that job's user.
  Handed Hand(pid_t pid, uid_t uid, HomeLocks::Inode inode, int kind);

 private:
  struct Claimed;
  void Watch();
  // Lets go of what no process of a restored job holds open.
  void Sweep();

  std::shared_ptr<HomeLocks> locks_;
  std::mutex mutex_;
  std::condition_variable wake_;
  std::map<uint64_t, std::shared_ptr<Claimed>> claims_;  // by token
  bool stopping_ = false;
  std::thread watcher_;
};

}  // namespace homeward
