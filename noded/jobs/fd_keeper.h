// FdKeeper: a small process per job that holds a copy of the daemon's ends of the job's
// pipes (and the spool files behind them), so that a daemon killed outright takes none of
// them with it: the job never sees an end of input or a broken pipe, and the daemon that
// starts next takes the descriptors back with pidfd_getfd. See "Daemon restarts" in
// docs/ARCHITECTURE.md.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <optional>
#include <vector>

#include "child_process.h"
#include "fd.h"

namespace homeward {

// When process `pid` started (clock ticks since boot, /proc/PID/stat), or 0 when it is
// gone: with the pid, what names a process across a daemon's restart.
uint64_t ProcessStartTime(pid_t pid);

// A keeper process (the fd keeper, the file service's lock keeper) holds descriptors for
// the daemon that starts next. In the keeper: 3 its end of the command socket, 4 the
// daemon's end (held so that the socket never reads an end while no daemon runs; a
// restarted daemon takes it back), then the descriptors it was started with.
inline constexpr int kKeeperCommandFd = 3;
inline constexpr int kKeeperDaemonEndFd = 4;

struct SpawnedKeeper {
  ChildProcess child;
  Fd command;  // the daemon's end of the command socket
};
// Starts this executable with `flag` as a keeper of `fds`: stdio on /dev/null and a
// session of its own, so that nothing sent to the daemon's process group reaches it.
SpawnedKeeper SpawnKeeper(const char* flag, const std::vector<int>& fds);

// The keeper `pid` a daemon before this one started at `start_time`, if it still runs:
// a pidfd of it (taken before the start time is compared, so that a match names that very
// process); invalid when it is gone.
Fd OpenKeeper(pid_t pid, uint64_t start_time);

class FdKeeper {
 public:
  FdKeeper() = default;
  FdKeeper(FdKeeper&&) = default;
  FdKeeper& operator=(FdKeeper&&) = default;
  ~FdKeeper();

  // Starts a keeper (this executable with --keep-fds) holding copies of `fds`.
  static FdKeeper Spawn(const std::vector<int>& fds);
  // Finds the keeper a daemon before this one started (`pid`, started at `start_time`) and
  // takes back copies of the `count` descriptors it holds; one it closed comes back
  // invalid. Throws Error(kNotFound) when the keeper is gone.
  static FdKeeper Reclaim(pid_t pid, uint64_t start_time, size_t count, std::vector<Fd>* fds);

  // The keeper closes its copy of descriptor `index` (the end of a job's input, which the
  // job sees only once every copy of the write end is closed).
  void Drop(size_t index);
  // Ends the keeper: the job is over, or gone from this node.
  void Stop();
  bool running() const { return pid_ > 0; }
  pid_t pid() const { return pid_; }
  uint64_t start_time() const { return start_time_; }

 private:
  std::optional<ChildProcess> child_;  // ours when this daemon started it
  Fd pidfd_;
  Fd command_;
  pid_t pid_ = -1;
  uint64_t start_time_ = 0;
};

// The keeper's main (mosnoded --keep-fds): holds its descriptors until it is killed, and
// closes one when asked to on its command socket (fd 3).
int FdKeeperMain();

}  // namespace homeward
