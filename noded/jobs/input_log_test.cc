#include "input_log.h"

#include <gtest/gtest.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <optional>
#include <string>
#include <vector>

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
    InputLog::Remove(path_);
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

TEST_F(InputLogTest, IsDirtyAfterAWriteUntilSynced) {
  InputLog log = InputLog::Open(path_, kRun, true);
  log.Sync();
  EXPECT_FALSE(log.dirty());
  log.Append(0, "1\n", 2);
  EXPECT_TRUE(log.dirty());
  log.Sync();
  EXPECT_FALSE(log.dirty());
  log.Append(0, "1\n", 2);  // nothing new: nothing to sync
  EXPECT_FALSE(log.dirty());
  log.Trim(1);  // the header changes
  EXPECT_TRUE(log.dirty());
}

TEST_F(InputLogTest, RemoveTakesTheLogAndItsNote) {
  InputLog::Open(path_, kRun, true).Append(0, "1\n", 2);
  InputLog::NoteDir(path_, "/home/u/ck");
  InputLog::Remove(path_);
  EXPECT_NE(access(path_.c_str(), F_OK), 0);
  EXPECT_NE(access((path_ + ".dir").c_str(), F_OK), 0);
}

TEST_F(InputLogTest, TheSweepKeepsLogsInUseAndThoseWhoseDirectoryStays) {
  std::string kept_dir = dir_ + "/ck";  // exists: a lost job's `mosrun -R` needs its log
  ASSERT_EQ(mkdir(kept_dir.c_str(), 0700), 0);
  std::string in_use = InputLog::PathFor(dir_, 1000, "/gone/a");
  std::string kept = InputLog::PathFor(dir_, 1000, kept_dir);
  std::string gone = InputLog::PathFor(dir_, 1000, "/gone/b");
  std::string unnoted = InputLog::PathFor(dir_, 1000, "/gone/c");
  for (const std::string& path : {in_use, kept, gone, unnoted}) {
    InputLog::Open(path, kRun, true).Append(0, "x", 1);
  }
  InputLog::NoteDir(in_use, "/gone/a");
  InputLog::NoteDir(kept, kept_dir);
  InputLog::NoteDir(gone, "/gone/b");
  auto removed = InputLog::SweepOrphans(dir_, {in_use});
  std::sort(removed.begin(), removed.end());
  std::vector<std::string> expected = {gone, unnoted};
  std::sort(expected.begin(), expected.end());
  EXPECT_EQ(removed, expected);
  EXPECT_EQ(access(in_use.c_str(), F_OK), 0);
  EXPECT_EQ(access(kept.c_str(), F_OK), 0);
  EXPECT_NE(access(gone.c_str(), F_OK), 0);
  EXPECT_NE(access((gone + ".dir").c_str(), F_OK), 0);
  for (const std::string& path : {in_use, kept}) InputLog::Remove(path);
  rmdir(kept_dir.c_str());
}

}  // namespace
}  // namespace homeward
