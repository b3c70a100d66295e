// LockHolderSocket: names, for a job at home, the holder of a lock the home's kernel
// reports as an open file description's (pid -1) when a homefs client holds it through the
// file service (see ARCHITECTURE.md, "Locks are the home's", F_GETLK). The job's shim asks
// on a unix socket of the abstract namespace (utils/lib/lock_holder.h); the answer comes
// from HomeLocks' table of who holds what.
#pragma once

#include <memory>
#include <string>
#include <thread>

#include "fd.h"
#include "home_locks.h"

namespace homeward {

class LockHolderSocket {
 public:
  // Serves on kLockHolderSocketPrefix + `host` (this node's name, the HOMEWARD_HOME of its
  // jobs) on a thread of its own. Never throws: without the socket (the name taken) a job
  // at home sees -1 as before, which is logged.
  LockHolderSocket(std::shared_ptr<HomeLocks> locks, const std::string& host);
  LockHolderSocket(const LockHolderSocket&) = delete;
  LockHolderSocket& operator=(const LockHolderSocket&) = delete;
  ~LockHolderSocket();  // stops serving

 private:
  void Run();
  void Answer(int fd);

  std::shared_ptr<HomeLocks> locks_;
  Fd listen_;
  Fd stop_;  // an eventfd, written once to end Run
  std::thread thread_;
};

}  // namespace homeward
