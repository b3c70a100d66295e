// LockHolderSocket: names, for a job at home, the holder of a lock the home's kernel
// reports as an open file description's (pid -1) when a homefs client holds it through the
// file service (see ARCHITECTURE.md, "Locks are the home's", F_GETLK). The job's shim asks
// on a unix socket in the node's /mosix (utils/lib/lock_holder.h); the answer comes
// from HomeLocks' table of who holds what.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <memory>
#include <string>
#include <thread>

#include "fd.h"
#include "home_locks.h"

namespace homeward {

// The holder of an OFD lock a job's shim took for a POSIX lock (through a descriptor at or
// above kShimLockFdBase) on the file (dev, ino) that conflicts with `type` on [start, end]
// (end: HomeLocks::kToEnd for EOF), found where the kernel lists it, as a "lock:" line of
// the description that holds it in /proc/PID/fdinfo/FD: its holder's home id
// (HomeIdOf: a job's process by its home id). -1 when none is found. It reads every
// process's fdinfo: for F_GETLK only, after HomeLocks' table named no one (the OFD locks a
// job's shim takes for its POSIX locks at home are in no table).
// Neither this daemon's descriptions (its clients' are in the table) nor those of `asker`
// (a job's process asking, whose own locks do not count) are looked at.
int OfdHolderAtHome(uint64_t dev, uint64_t ino, short type, int64_t start, int64_t end,
                    pid_t asker = 0);

class LockHolderSocket {
 public:
  // Serves on `path` (kLockHolderSocketName in the node's mosix root) on a thread of its
  // own. Never throws: without the socket a job at home sees -1 as before, which is logged.
  LockHolderSocket(std::shared_ptr<HomeLocks> locks, const std::string& path);
  LockHolderSocket(const LockHolderSocket&) = delete;
  LockHolderSocket& operator=(const LockHolderSocket&) = delete;
  ~LockHolderSocket();  // stops serving

 private:
  void Run();
  void Answer(int fd);

  std::shared_ptr<HomeLocks> locks_;
  std::string path_;
  Fd listen_;
  Fd stop_;  // an eventfd, written once to end Run
  std::thread thread_;
};

}  // namespace homeward
