// ProcessWatch: calls back on the event loop once a process has exited. It waits on a
// pidfd (pidfd_open(2)), which becomes readable when the process exits, so it reacts at
// once and costs nothing while the process runs: no /proc polling, no timer.
#pragma once

#include <sys/types.h>
#include <uv.h>

#include <cstdint>
#include <functional>
#include <memory>

#include "fd.h"
#include "uv_handle.h"

namespace homeward {

class ProcessWatch {
 public:
  // Watches `pid`, if it is still the process that started at `start_time` (its
  // /proc/<pid>/stat starttime; 0 accepts any). `gone` runs once, on `loop`, when the
  // process has exited; on the loop's next turn if it is gone already (or its pid now
  // names another process). The watch may be destroyed from within `gone`.
  ProcessWatch(uv_loop_t* loop, pid_t pid, uint64_t start_time, std::function<void()> gone);
  ProcessWatch(const ProcessWatch&) = delete;
  ProcessWatch& operator=(const ProcessWatch&) = delete;
  ~ProcessWatch();

  pid_t pid() const { return pid_; }

 private:
  void Fire();

  pid_t pid_;
  Fd pidfd_;
  std::function<void()> gone_;
  UvHandle<uv_poll_t> poll_;    // on the pidfd while the process runs
  UvHandle<uv_timer_t> early_;  // a one-shot for a process gone before the watch began
};

}  // namespace homeward
