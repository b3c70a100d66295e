// HomeMounts runs one homefs for /mosix/home and tells it the live nodes, a whole list
// each time; stopping it never waits on the event loop (a homefs that ignores SIGTERM is
// killed after the grace time); a homefs that dies after mounting is started again and
// told the list; one that never mounts leaves this node's own tree bound alone.
#include "home_mounts.h"

#include <fcntl.h>
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
#include "mount.h"
#include "scratch_dir.h"

namespace homeward {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

class HomeMountsTest : public ::testing::Test {
 protected:
  void SetUp() override { uv_loop_init(&loop_); }
  void TearDown() override {
    mounts_.reset();
    uv_run(&loop_, UV_RUN_DEFAULT);  // the handles' close callbacks
    EXPECT_EQ(uv_loop_close(&loop_), 0);
  }

  // A stand-in for `mosmount --tree ... --daemon-fd 3 ... DIR`: logs "start", says
  // "mounted" on fd 3 (unless `mounts` is false), then appends every list it reads
  // there to the log. A stubborn one ignores SIGTERM; a short-lived one exits after
  // saying mounted, the first time only.
  void Make(bool stubborn, bool mounts = true, bool short_lived = false) {
    std::string script = base_ + "/mosmount";
    std::ofstream(script) << "#!/bin/sh\n"
                          << (stubborn ? "trap '' TERM\n" : "trap 'exit 0' TERM\n")
                          << "echo start >> " << base_ << "/log\n"
                          << (mounts ? "printf mounted >&3\n" : "exit 1\n")
                          << (short_lived ? "if [ ! -e " + base_ + "/died ]; then touch " +
                                                base_ + "/died; exit 1; fi\n"
                                          : "")
                          << "cat <&3 >> " << base_ << "/log &\n"
                          << "while :; do sleep 0.05 & wait $!; done\n";
    ::chmod(script.c_str(), 0755);
    HomeMountsOptions options;
    options.mosix_root = base_;
    options.self = "me";
    options.export_root = base_ + "/tree";
    options.mosmount = script;
    options.stop_grace_ms = 300;
    options.restart_ms = 50;
    fs::create_directories(options.export_root);
    mounts_ = std::make_unique<HomeMounts>(&loop_, options);
  }
  std::string Log() {
    std::ifstream in(base_ + "/log");
    std::stringstream text;
    text << in.rdbuf();
    return text.str();
  }
  // Runs the loop until the log holds `text` (up to 10 s).
  bool RunUntilLogged(const std::string& text) {
    for (auto end = Clock::now() + std::chrono::seconds(10); Clock::now() < end;) {
      uv_run(&loop_, UV_RUN_NOWAIT);
      if (Log().find(text) != std::string::npos) return true;
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    return false;
  }
  size_t Count(const std::string& text) {
    std::string log = Log();
    size_t n = 0;
    for (size_t at = log.find(text); at != std::string::npos; at = log.find(text, at + 1)) ++n;
    return n;
  }

  ScratchDir scratch_{"homeward-mounts"};
  std::string base_ = scratch_.path();
  uv_loop_t loop_;
  std::unique_ptr<HomeMounts> mounts_;
};

TEST_F(HomeMountsTest, HomefsIsToldTheWholeListOnEveryChange) {
  Make(false);
  mounts_->Start();
  mounts_->PeerUp("a", "127.0.0.1", 1);
  mounts_->PeerUp("b", "127.0.0.2", 2);
  ASSERT_TRUE(RunUntilLogged("# live nodes\na 127.0.0.1 1\nb 127.0.0.2 2\n"));
  bool done = false;
  mounts_->PeerDown("a", [&] { done = true; });
  EXPECT_TRUE(done);  // told at once
  ASSERT_TRUE(RunUntilLogged("b 127.0.0.2 2\n# live nodes\nb 127.0.0.2 2\n"));
  mounts_->PeerUp("me", "127.0.0.9", 9);  // this node: its own tree, never listed
  mounts_->PeerUp("b", "127.0.0.2", 2);   // no change: nothing sent
  mounts_->PeerUp("c", "127.0.0.3", 3);
  ASSERT_TRUE(RunUntilLogged("# live nodes\nb 127.0.0.2 2\nc 127.0.0.3 3\n"));
  EXPECT_EQ(Count("# live nodes"), 5u);  // the empty list at start, and four changes
  EXPECT_EQ(Log().find("me "), std::string::npos);
  EXPECT_THROW(mounts_->PeerUp("../x", "127.0.0.1", 1), Error);
}

TEST_F(HomeMountsTest, StopReturnsAtOnceAndAStubbornHomefsIsKilledAfterTheGrace) {
  Make(true);
  mounts_->Start();
  ASSERT_TRUE(RunUntilLogged("# live nodes\n"));
  auto start = Clock::now();
  mounts_->Stop();
  EXPECT_LT(Clock::now() - start, std::chrono::milliseconds(200));
  uv_run(&loop_, UV_RUN_DEFAULT);  // returns once the grace timer has killed it
  // libuv's loop time is whole milliseconds (truncated): its 300 ms timer may end up to
  // 1 ms short of 300 ms by this clock (299.7 ms seen under load).
  EXPECT_GE(Clock::now() - start, std::chrono::milliseconds(299));
  mounts_->PeerUp("a", "127.0.0.1", 1);  // stopped: nothing more is sent
  EXPECT_EQ(Log().find("a 127.0.0.1"), std::string::npos);
}

TEST_F(HomeMountsTest, HomefsThatDiesAfterMountingIsStartedAgainAndToldTheList) {
  Make(false, true, true);
  mounts_->PeerUp("a", "127.0.0.1", 1);
  mounts_->Start();
  ASSERT_TRUE(RunUntilLogged("start\nstart\n"));
  ASSERT_TRUE(RunUntilLogged("# live nodes\na 127.0.0.1 1\n"));
}

TEST_F(HomeMountsTest, HomefsThatCannotMountLeavesThisNodesOwnTreeAlone) {
  if (::geteuid() != 0) GTEST_SKIP() << "a bind mount needs root";
  Make(false, false);
  std::ofstream(base_ + "/tree/mine") << "x";
  mounts_->Start();
  for (auto end = Clock::now() + std::chrono::seconds(10);
       Clock::now() < end && !fs::exists(base_ + "/home/me/mine");) {
    uv_run(&loop_, UV_RUN_NOWAIT);
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  EXPECT_TRUE(fs::exists(base_ + "/home/me/mine"));
  EXPECT_EQ(Count("start"), 1u);  // not started again
  mounts_->Stop();
  EXPECT_FALSE(fs::exists(base_ + "/home/me/mine"));
}

TEST_F(HomeMountsTest, AnEarlierDaemonsMountsAreDetachedAtStart) {
  if (::geteuid() != 0) GTEST_SKIP() << "mounting needs root";
  std::string home = base_ + "/home";
  fs::create_directories(home);
  std::vector<Mount> stale;  // detached again at the end, should the test fail
  for (int i = 0; i < 2; ++i) stale.push_back(Mount::Create("stale", home, "tmpfs", 0, "size=1m"));
  ASSERT_EQ(MountsAt(home), 2);
  std::ofstream(home + "/held") << "x";
  int held = ::open((home + "/held").c_str(), O_RDONLY | O_CLOEXEC);
  ASSERT_GE(held, 0);
  Make(false);
  mounts_->Start();
  EXPECT_EQ(MountsAt(home), 0);
  // What was open there stays readable.
  char c = 0;
  EXPECT_EQ(::read(held, &c, 1), 1);
  EXPECT_EQ(c, 'x');
  ::close(held);
  ASSERT_TRUE(RunUntilLogged("# live nodes\n"));
}

}  // namespace
}  // namespace homeward
