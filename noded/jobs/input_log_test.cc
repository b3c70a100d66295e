#include "input_log.h"

#include <gtest/gtest.h>
#include <stdlib.h>
#include <unistd.h>

#include <optional>
#include <string>

namespace homeward {
namespace {

constexpr int64_t kRun = 1700000000000;

class InputLogTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char dir[] = "/tmp/input_log_test-XXXXXX";
    ASSERT_NE(mkdtemp(dir), nullptr);
    dir_ = dir;
    path_ = InputLog::PathFor(dir_, 1000, "/home/u/ck");
  }
  void TearDown() override {
    unlink(path_.c_str());
    rmdir((dir_ + "/input-logs").c_str());
    rmdir(dir_.c_str());
  }
  std::optional<std::string> Replay(uint64_t from) {
    why_.clear();
    return InputLog::Replay(path_, kRun, from, &why_);
  }
  std::string dir_, path_, why_;
};

TEST_F(InputLogTest, ReplaysFromAnOffsetWhatCameOnceEach) {
  InputLog log = InputLog::Open(path_, kRun, true);
  log.Append(0, "1\n2\n", 4);
  log.Append(2, "2\n3\n", 4);  // sent again after a reconnect: only "3\n" is new
  EXPECT_EQ(log.end(), 6u);
  EXPECT_EQ(Replay(2), "2\n3\n");
  EXPECT_EQ(Replay(6), "");
  EXPECT_FALSE(Replay(7)) << why_;
  EXPECT_FALSE(InputLog::Replay(path_, kRun + 1, 2, &why_));
  EXPECT_NE(why_.find("another run"), std::string::npos) << why_;
  // A job started again with the same directory has a log of its own.
  EXPECT_EQ(InputLog::Open(path_, kRun + 1, false).end(), 0u);
}

TEST_F(InputLogTest, ATrimmedOrOverflowedLogReplaysOnlyFromItsStart) {
  {
    InputLog log = InputLog::Open(path_, kRun, true, 8);
    log.Append(0, "abcdef", 6);
    log.Trim(2);
    EXPECT_EQ(Replay(2), "cdef");
    EXPECT_FALSE(Replay(1));
    log.Append(6, "ghijkl", 6);  // past the bound of 8: the start moves on
    EXPECT_EQ(log.start(), 4u);
    EXPECT_FALSE(Replay(2));
    EXPECT_NE(why_.find("holds bytes 4 to 12"), std::string::npos) << why_;
    EXPECT_EQ(Replay(4), "efghijkl");
  }
  // A daemon started again goes on with the same log; a new job starts it afresh.
  InputLog again = InputLog::Open(path_, kRun, false, 8);
  EXPECT_EQ(again.start(), 4u);
  EXPECT_EQ(again.end(), 12u);
  InputLog fresh = InputLog::Open(path_, kRun, true, 8);
  EXPECT_EQ(fresh.end(), 0u);
  EXPECT_FALSE(Replay(4));
}

TEST_F(InputLogTest, AGapStartsTheLogAnewPastIt) {
  InputLog log = InputLog::Open(path_, kRun, true);
  log.Append(0, "ab", 2);
  log.Append(5, "fg", 2);
  EXPECT_EQ(log.start(), 5u);
  EXPECT_FALSE(Replay(0));
  EXPECT_EQ(Replay(5), "fg");
}

TEST_F(InputLogTest, ADamagedLogIsNotReplayed) {
  { InputLog::Open(path_, kRun, true).Append(0, "abc", 3); }
  ASSERT_EQ(truncate(path_.c_str(), 10), 0);
  EXPECT_FALSE(Replay(0));
  EXPECT_EQ(why_, "its input log is damaged");
  InputLog reopened = InputLog::Open(path_, kRun, false);  // made empty
  EXPECT_EQ(reopened.end(), 0u);
}

}  // namespace
}  // namespace homeward
