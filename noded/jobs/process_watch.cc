#include "process_watch.h"

#include <sys/syscall.h>
#include <unistd.h>

#include <spdlog/spdlog.h>

#include "c_boundary.h"
#include "fd_keeper.h"
#include "uv_error.h"

namespace homeward {

ProcessWatch::ProcessWatch(uv_loop_t* loop, pid_t pid, uint64_t start_time,
                           std::function<void()> gone)
    : pid_(pid), gone_(std::move(gone)) {
  // The start time is read after the pidfd is open: a pid reused between the two would
  // show a start time other than the one asked for.
  pidfd_ = Fd::Adopt(static_cast<int>(::syscall(SYS_pidfd_open, pid, 0)));
  if (pidfd_.valid() && (start_time == 0 || ProcessStartTime(pid) == start_time)) {
    CheckUv(uv_poll_init(loop, poll_.get(), pidfd_.get()), "process watch");
    poll_.get()->data = this;
    CheckUv(uv_poll_start(poll_.get(), UV_READABLE,
                          [](uv_poll_t* poll, int, int) {
                            GuardedCall("a watched process's exit",
                                        [poll] { static_cast<ProcessWatch*>(poll->data)->Fire(); });
                          }),
            "process watch");
    return;
  }
  pidfd_.Reset();
  CheckUv(uv_timer_init(loop, early_.get()), "process watch");
  early_.get()->data = this;
  CheckUv(uv_timer_start(
              early_.get(),
              [](uv_timer_t* timer) {
                GuardedCall("a watched process's exit",
                            [timer] { static_cast<ProcessWatch*>(timer->data)->Fire(); });
              },
              0, 0),
          "process watch");
}

ProcessWatch::~ProcessWatch() = default;

void ProcessWatch::Fire() {
  // A pidfd stays readable once its process has exited: stop before calling back.
  if (pidfd_.valid()) uv_poll_stop(poll_.get());
  // Moved out first: `gone` may destroy this watch.
  auto gone = std::move(gone_);
  gone_ = nullptr;
  if (gone) gone();
}

}  // namespace homeward
