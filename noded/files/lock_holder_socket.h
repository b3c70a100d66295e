// LockHolderSocket: names, for a job at home, the holder of a lock the home's kernel
// reports as an open file description's (pid -1) when a homefs client holds it through the
// file service (see ARCHITECTURE.md, "Locks are the home's", F_GETLK). The job's shim asks
// on a unix socket in the node's /mosix (utils/lib/lock_holder.h), passing a descriptor of
// the file; the answer comes from HomeLocks' table of who holds what, else from the
// descriptions of the processes of jobs at home. On the same socket a job that came home
// takes the locks the file service held for it (HomeHandover, lock_handover.h).
//
// Any local user may connect, so nothing in a question is trusted: the file is the one the
// asker has open (the descriptor's fstat), the asker is its SO_PEERCRED, and the work a
// question costs and the connections served at once are bounded.
#pragma once

#include <sys/stat.h>
#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "fd.h"
#include "home_handover.h"
#include "home_locks.h"
#include "lock_handover.h"
#include "lock_holder.h"

namespace homeward {

// The holder of an OFD lock a job's shim took for a POSIX lock (through a descriptor at or
// above kShimLockFdBase) on the file (dev, ino) that conflicts with `type` on [start, end]
// (end: HomeLocks::kToEnd for EOF), found where the kernel lists it, as a "lock:" line of
// the description that holds it in /proc/PID/fdinfo/FD: its holder's home id
// (HomeIdOf: a job's process by its home id). -1 when none is found. Only the processes
// of the jobs at home whose inits are `job_inits` are looked at (no one else takes such
// locks), within a bounded number of processes and descriptors: for F_GETLK only, after
// HomeLocks' table named no one (the OFD locks a job's shim takes for its POSIX locks at
// home are in no table). Neither this daemon's descriptions (its clients' are in the
// table) nor those of `asker` (a job's process asking, whose own locks do not count) are.
int OfdHolderAtHome(const std::vector<pid_t>& job_inits, uint64_t dev, uint64_t ino,
                    short type, int64_t start, int64_t end, pid_t asker = 0);

class LockHolderSocket {
 public:
  // Serves on `path` (kLockHolderSocketName in the node's mosix root) on a thread of its
  // own. Never throws: without the socket a job at home sees -1 as before, which is logged.
  // `handover` (borrowed, may be null): hands a job that came home its locks.
  LockHolderSocket(std::shared_ptr<HomeLocks> locks, const std::string& path,
                   HomeHandover* handover = nullptr);
  LockHolderSocket(const LockHolderSocket&) = delete;
  LockHolderSocket& operator=(const LockHolderSocket&) = delete;
  ~LockHolderSocket();  // stops serving

  // At most this many connections wait for their question at once, this many of one uid;
  // each gets kPatience to ask. Beyond them a connection is closed unanswered.
  static constexpr size_t kMaxClients = 32;
  static constexpr size_t kMaxClientsPerUid = 4;
  static constexpr std::chrono::milliseconds kPatience{200};

 private:
  struct Client {
    Fd fd;
    uid_t uid;
    pid_t pid;  // the asker (SO_PEERCRED at accept), whose own locks do not count
    std::chrono::steady_clock::time_point deadline;
  };
  void Run();
  void Accept();
  // Reads the question on `client` and answers it (-1 to a question refused).
  void Answer(const Client& client);
  // The holder `question` asks for about the file `st`, or why it is refused.
  int HolderFor(const Client& client, const LockHolderQuestion& question,
                const struct stat& st, std::string* refusal);
  // Hands `client` what `question` asks for on the file `st` (null: the question is
  // refused already, for `refusal`), or refuses it.
  void HandOver(const Client& client, const LockHandoverQuestion& question,
                const struct stat* st, std::string refusal);
  // Logs a refusal, at most once per 10 s (the others are counted in the next line).
  void Refused(const std::string& why);

  std::shared_ptr<HomeLocks> locks_;
  HomeHandover* handover_;
  std::string path_;
  Fd listen_;
  Fd stop_;  // an eventfd, written once to end Run
  std::vector<Client> clients_;
  std::chrono::steady_clock::time_point logged_at_{};
  uint64_t unlogged_ = 0;
  std::thread thread_;
};

}  // namespace homeward
