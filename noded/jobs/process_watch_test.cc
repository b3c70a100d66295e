#include "process_watch.h"

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include "fd_keeper.h"

namespace homeward {
namespace {

class ProcessWatchTest : public ::testing::Test {
 protected:
  void SetUp() override { ASSERT_EQ(uv_loop_init(&loop_), 0); }
  void TearDown() override {
    if (child_ > 0) {
      ::kill(child_, SIGKILL);
      ::waitpid(child_, nullptr, 0);
    }
    uv_run(&loop_, UV_RUN_DEFAULT);  // runs the handles' close callbacks
    EXPECT_EQ(uv_loop_close(&loop_), 0);
  }
  pid_t SpawnSleeper() {
    child_ = ::fork();
    if (child_ == 0) {
      ::pause();
      ::_exit(0);
    }
    return child_;
  }
  void Reap() {
    ::waitpid(child_, nullptr, 0);
    child_ = -1;
  }

  uv_loop_t loop_;
  pid_t child_ = -1;
};

TEST_F(ProcessWatchTest, WaitsWithNoTimerAndFiresWhenTheProcessExits) {
  pid_t pid = SpawnSleeper();
  int fired = 0;
  ProcessWatch watch(&loop_, pid, ProcessStartTime(pid), [&] { ++fired; });
  uv_run(&loop_, UV_RUN_NOWAIT);
  EXPECT_EQ(fired, 0);
  // Only the pidfd is waited on: the loop would block in epoll with no timeout at all,
  // so nothing wakes it (no poll of /proc each second) until the process exits.
  EXPECT_TRUE(uv_loop_alive(&loop_));
  EXPECT_EQ(uv_backend_timeout(&loop_), -1);
  ASSERT_EQ(::kill(pid, SIGKILL), 0);
  // One turn, blocking: it returns because the pidfd became readable.
  uv_run(&loop_, UV_RUN_ONCE);
  EXPECT_EQ(fired, 1);
  Reap();
  // Fired once only, though the pidfd stays readable.
  uv_run(&loop_, UV_RUN_NOWAIT);
  EXPECT_EQ(fired, 1);
  EXPECT_FALSE(uv_loop_alive(&loop_));
}

TEST_F(ProcessWatchTest, AProcessGoneBeforeTheWatchFiresOnTheNextTurn) {
  pid_t pid = SpawnSleeper();
  ::kill(pid, SIGKILL);
  Reap();
  int fired = 0;
  ProcessWatch watch(&loop_, pid, 0, [&] { ++fired; });
  EXPECT_EQ(fired, 0);  // not from within the constructor
  uv_run(&loop_, UV_RUN_ONCE);
  EXPECT_EQ(fired, 1);
}

TEST_F(ProcessWatchTest, APidNamingAnotherProcessCountsAsGone) {
  pid_t pid = SpawnSleeper();
  int fired = 0;
  ProcessWatch watch(&loop_, pid, ProcessStartTime(pid) + 1, [&] { ++fired; });
  uv_run(&loop_, UV_RUN_ONCE);
  EXPECT_EQ(fired, 1);
}

TEST_F(ProcessWatchTest, MayBeDestroyedFromItsCallback) {
  pid_t pid = SpawnSleeper();
  std::unique_ptr<ProcessWatch> watch;
  int fired = 0;
  watch = std::make_unique<ProcessWatch>(&loop_, pid, 0, [&] {
    ++fired;
    watch.reset();
  });
  ::kill(pid, SIGKILL);
  uv_run(&loop_, UV_RUN_ONCE);
  EXPECT_EQ(fired, 1);
  EXPECT_EQ(watch, nullptr);
}

}  // namespace
}  // namespace homeward
