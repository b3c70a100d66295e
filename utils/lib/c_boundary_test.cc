// The C-boundary guard: an exception thrown in a libuv callback (a thread-pool completion,
// a timer) stops at the guard, is logged, and the loop goes on serving its other handles.
#include "c_boundary.h"

#include <uv.h>

#include <gtest/gtest.h>
#include <kj/debug.h>
#include <kj/exception.h>
#include <spdlog/sinks/ostream_sink.h>
#include <spdlog/spdlog.h>

#include <memory>
#include <sstream>
#include <stdexcept>

#include "error.h"
#include "uv_work.h"

namespace homeward {
namespace {

// Captures what the process logs while a test runs.
class LogCapture {
 public:
  LogCapture() : previous_(spdlog::default_logger()) {
    auto sink = std::make_shared<spdlog::sinks::ostream_sink_mt>(out_);
    spdlog::set_default_logger(std::make_shared<spdlog::logger>("test", sink));
  }
  ~LogCapture() { spdlog::set_default_logger(previous_); }
  std::string text() const { return out_.str(); }

 private:
  std::ostringstream out_;
  std::shared_ptr<spdlog::logger> previous_;
};

class CBoundaryTest : public ::testing::Test {
 protected:
  void SetUp() override { ASSERT_EQ(uv_loop_init(&loop_), 0); }
  void TearDown() override {
    // Closes what the test left open, then lets the close callbacks run.
    uv_walk(
        &loop_,
        [](uv_handle_t* h, void*) {
          if (!uv_is_closing(h)) uv_close(h, nullptr);
        },
        nullptr);
    uv_run(&loop_, UV_RUN_DEFAULT);
    EXPECT_EQ(uv_loop_close(&loop_), 0);
  }
  uv_loop_t loop_;
};

TEST_F(CBoundaryTest, ThrowingWorkCompletionIsLoggedAndTheLoopLives) {
  LogCapture log;
  bool later_done = false;
  ASSERT_EQ(QueueWork(
                &loop_, [] {}, [] { Fail(ErrorKind::kFailed, "the completion broke on purpose"); }),
            0);
  // Work queued after the throwing one still completes on the same loop run.
  ASSERT_EQ(QueueWork(
                &loop_, [] {}, [&] { later_done = true; }),
            0);
  uv_run(&loop_, UV_RUN_DEFAULT);
  EXPECT_TRUE(later_done);
  EXPECT_NE(log.text().find("completion of thread-pool work: the completion broke on purpose"),
            std::string::npos)
      << log.text();
}

TEST_F(CBoundaryTest, ThrowingWorkOnThePoolIsLoggedAndItsCompletionStillRuns) {
  LogCapture log;
  bool done = false;
  ASSERT_EQ(QueueWork(
                &loop_, [] { throw std::runtime_error("the worker broke on purpose"); },
                [&] { done = true; }),
            0);
  uv_run(&loop_, UV_RUN_DEFAULT);
  EXPECT_TRUE(done);
  EXPECT_NE(log.text().find("work on the thread pool: the worker broke on purpose"),
            std::string::npos)
      << log.text();
}

// A timer, another kind of callback, that throws on its first tick and counts its ticks:
// it ticks again after throwing, so the loop and the handle both outlived the throw.
TEST_F(CBoundaryTest, ThrowingTimerKeepsTicking) {
  LogCapture log;
  struct State {
    uv_timer_t timer;
    int ticks = 0;
  } state;
  ASSERT_EQ(uv_timer_init(&loop_, &state.timer), 0);
  state.timer.data = &state;
  ASSERT_EQ(uv_timer_start(
                &state.timer,
                [](uv_timer_t* timer) {
                  GuardedCall("test timer", [timer] {
                    auto* s = static_cast<State*>(timer->data);
                    if (++s->ticks == 1) {
                      kj::throwFatalException(KJ_EXCEPTION(FAILED, "a kj exception on purpose"));
                    }
                    if (s->ticks == 3) uv_timer_stop(timer);
                  });
                },
                1, 1),
            0);
  uv_run(&loop_, UV_RUN_DEFAULT);
  EXPECT_EQ(state.ticks, 3);
  EXPECT_NE(log.text().find("a kj exception on purpose"), std::string::npos) << log.text();
  uv_close(reinterpret_cast<uv_handle_t*>(&state.timer), nullptr);
  uv_run(&loop_, UV_RUN_DEFAULT);  // the handle's memory is the test's: close it here
}

// Where C wants a number (a FUSE or libc answer), the failure becomes -errno: the system
// call's own errno, else the one the error's kind maps to, else EIO.
TEST_F(CBoundaryTest, NumericBoundaryAnswersMinusErrno) {
  LogCapture log;
  EXPECT_EQ(GuardedCall("ok", [] { return 7; }), 7);
  EXPECT_EQ(GuardedCall("syscall", []() -> int { throw SystemError(ENOSPC, "write"); }), -ENOSPC);
  EXPECT_EQ(GuardedCall("kind", []() -> int { Fail(ErrorKind::kNotFound, "no such node"); }),
            -ENOENT);
  EXPECT_EQ(GuardedCall("other", []() -> long { throw 42; }), -EIO);
  EXPECT_NE(log.text().find("other: an exception of unknown type"), std::string::npos);
}

}  // namespace
}  // namespace homeward
