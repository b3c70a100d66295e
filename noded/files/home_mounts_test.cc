// HomeMounts takes a peer's mount down without waiting on the event loop: PeerDown returns
// at once, and its callback runs on the loop when the homefs has gone, on its own or
// killed after the grace time; a mount of the same name waits for the old one to go.
#include "home_mounts.h"

#include <gtest/gtest.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include "error.h"
#include "scratch_dir.h"

namespace homeward {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

class HomeMountsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    uv_loop_init(&loop_);
  }
  void TearDown() override {
    mounts_.reset();
    uv_run(&loop_, UV_RUN_DEFAULT);  // the handles' close callbacks
    EXPECT_EQ(uv_loop_close(&loop_), 0);
  }

  // A stand-in for `mosmount -f -o timeout=S TARGET DIR` that logs "up TARGET" once its SIGTERM
  // handling is in place, and "down TARGET" when it leaves on SIGTERM; a stubborn one
  // ignores SIGTERM.
  void Make(bool stubborn, int grace_ms) {
    std::string script = base_ + "/mosmount";
    std::ofstream(script) << "#!/bin/sh\n"
                          << (stubborn
                                  ? "trap '' TERM\n"
                                  : "trap 'echo \"down $4\" >> " + base_ + "/log; exit 0' TERM\n")
                          << "echo \"up $4\" >> " << base_ << "/log\n"
                          << "while :; do sleep 0.05 & wait $!; done\n";
    ::chmod(script.c_str(), 0755);
    HomeMountsOptions options;
    options.mosix_root = base_;
    options.self = "me";
    options.mosmount = script;
    options.stop_grace_ms = grace_ms;
    mounts_ = std::make_unique<HomeMounts>(&loop_, options);
  }
  std::string Log() {
    std::ifstream in(base_ + "/log");
    std::stringstream text;
    text << in.rdbuf();
    return text.str();
  }
  // Waits (up to 10 s) for the log to hold `line`: the stand-in's readiness.
  bool WaitForLog(const std::string& line) {
    for (auto end = Clock::now() + std::chrono::seconds(10); Clock::now() < end;) {
      if (Log().find(line + "\n") != std::string::npos) return true;
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    return false;
  }

  ScratchDir scratch_{"homeward-mounts"};
  std::string base_ = scratch_.path();
  uv_loop_t loop_;
  std::unique_ptr<HomeMounts> mounts_;
};

TEST_F(HomeMountsTest, PeerDownReturnsAtOnceAndAnswersWhenHomefsHasGone) {
  Make(false, 10000);
  mounts_->PeerUp("peer", "127.0.0.1", 1);
  ASSERT_TRUE(WaitForLog("up 127.0.0.1:1"));
  bool done = false;
  auto start = Clock::now();
  mounts_->PeerDown("peer", [&] { done = true; });
  EXPECT_FALSE(done);  // PeerDown returned before the homefs left: it does not wait for it
  uv_run(&loop_, UV_RUN_DEFAULT);  // returns once nothing is left to wait for
  EXPECT_TRUE(done);
  // The homefs's exit ended the wait, not the 10 s grace timer.
  EXPECT_LT(Clock::now() - start, std::chrono::seconds(5));
  EXPECT_NE(Log().find("down 127.0.0.1:1\n"), std::string::npos);
  bool again = false;
  mounts_->PeerDown("peer", [&] { again = true; });  // nothing mounted: answered at once
  EXPECT_TRUE(again);
}

TEST_F(HomeMountsTest, StubbornHomefsIsKilledAfterTheGraceTime) {
  Make(true, 300);
  mounts_->PeerUp("peer", "127.0.0.1", 1);
  ASSERT_TRUE(WaitForLog("up 127.0.0.1:1"));
  bool done = false;
  auto start = Clock::now();
  mounts_->PeerDown("peer", [&] { done = true; });
  EXPECT_FALSE(done);  // the homefs ignores SIGTERM: only the grace timer ends the wait
  uv_run(&loop_, UV_RUN_DEFAULT);
  EXPECT_TRUE(done);
  EXPECT_GE(Clock::now() - start, std::chrono::milliseconds(300));
}

TEST_F(HomeMountsTest, NewMountOfTheSameNameWaitsForTheOldOne) {
  Make(false, 10000);
  mounts_->PeerUp("peer", "127.0.0.1", 1);
  ASSERT_TRUE(WaitForLog("up 127.0.0.1:1"));
  mounts_->PeerUp("peer", "127.0.0.1", 2);  // another address: the old mount goes first
  EXPECT_EQ(Log().find("up 127.0.0.1:2"), std::string::npos);
  uv_run(&loop_, UV_RUN_DEFAULT);
  ASSERT_TRUE(WaitForLog("up 127.0.0.1:2"));
  std::string log = Log();
  EXPECT_LT(log.find("down 127.0.0.1:1"), log.find("up 127.0.0.1:2"));
  EXPECT_THROW(mounts_->PeerUp("../x", "127.0.0.1", 1), Error);
}

}  // namespace
}  // namespace homeward
