// FuseUring: a FUSE session's requests taken and answered through io_uring (Linux 6.14 and
// later). The kernel queues a request to the ring entries of the CPU that made it; here
// each entry has a thread of its own pinned to that CPU (a lane), so the caller's
// wake-ups each way stay on its CPU instead of crossing to whichever thread read
// /dev/fuse.
//
// It sits under libfuse (3.14 does not speak it), carried by the session's I/O
// (session_io.h): the INIT reply asks for io_uring, each CPU gets a lane, and every
// request a lane takes goes to fuse_session_process_buf; a reply written for one of them
// (from any thread) goes into its entry and is committed by the lane, which fetches the
// next. The rest (INIT, FORGET, INTERRUPT, the change notices) keep going through
// /dev/fuse and libfuse's own loop.
// Where the kernel does not allow it (the fuse module's enable_uring parameter is off) or
// a ring cannot be set up, requests keep coming through /dev/fuse.
#pragma once

#include <fuse_lowlevel.h>
#include <sys/uio.h>

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <unordered_map>
#include <vector>

#include "session_io.h"

namespace homeward {

class FuseUring : public SessionIo::Carrier {
 public:
  // Whether this kernel lets a FUSE server use io_uring (/sys/module/fuse/parameters/
  // enable_uring is Y).
  static bool Allowed();

  // Carried by `io` (`session`'s), if installed. `no_lanes`: the fault point
  // no-io-uring-lane (no lane can be made).
  FuseUring(fuse_session* session, SessionIo& io, bool no_lanes);
  FuseUring(const FuseUring&) = delete;
  FuseUring& operator=(const FuseUring&) = delete;
  // Ends the lanes; once the session loop has ended, before the unmount (requests then
  // wait in the kernel until the unmount ends them, as after libfuse's loop).
  ~FuseUring() override;

  bool TakeReply(const struct iovec* iov, int count) override;
  // Asks for io_uring where the kernel offered it and every CPU's first lane is made.
  bool AmendInit(fuse_init_out& reply, uint64_t offered) override;
  // Lets the lanes register, or ends them.
  void InitWritten(bool told) override;

  struct Entry;
  struct Lane;
  struct Queue;

 private:
  // Makes every CPU's first lane (its thread waits for Launch); false, with none left,
  // if it could not.
  bool Prepare();
  // Lets the lanes register (the kernel has the INIT reply that asked for io_uring), or
  // end.
  void Launch(bool told);
  // Ends and frees every lane.
  void EndLanes();
  // Adds a lane to `queue` (up to kMaxLanes); false if it could not.
  bool AddLane(Queue& queue);
  void Run(Lane& lane);
  // Hands the request in `entry` to libfuse.
  void Process(Entry& entry);
  // Puts a reply into its entry and has its lane commit it.
  void Commit(Entry& entry, const struct iovec* iov, int count);
  // On the lane's thread: queue the registration of its entry, or the commit of its
  // entry's reply (which counts the lane idle again); the lane's loop submits them as it
  // next waits.
  void Register(Lane& lane);
  void PrepareCommit(Lane& lane);

  fuse_session* session_;
  SessionIo& io_;
  int fd_;
  size_t payload_size_ = 0;
  bool no_lanes_;
  std::atomic<bool> stopping_{false};
  enum class Go { kWaiting, kRun, kDrop };
  std::mutex launch_mutex_;
  std::condition_variable launched_;
  Go go_ = Go::kWaiting;
  std::vector<std::unique_ptr<Queue>> queues_;  // one per possible CPU, made by Prepare
  std::mutex in_flight_mutex_;
  std::unordered_map<uint64_t, Entry*> in_flight_;  // by the request's unique
};

}  // namespace homeward
