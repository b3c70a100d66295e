#include "criu_acting.h"

#include <fcntl.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <optional>
#include <string>

namespace homeward {
namespace {

class CriuActingCacheTest : public ::testing::Test {
 protected:
  void SetUp() override {
    // Only a directory of root's is believed.
    if (::geteuid() != 0) GTEST_SKIP() << "needs root";
    char dir[] = "/tmp/criu_acting_test-XXXXXX";
    ASSERT_NE(mkdtemp(dir), nullptr);
    dir_ = dir;
    acting_ = {dir_ + "/acting", {1234, 5678, {42}}};
    ns_ = Fd::Open("/proc/self/ns/mnt", O_RDONLY);
  }
  void TearDown() override {
    if (dir_.empty()) return;
    ClearCriuActing(acting_.dir);
    ::rmdir(acting_.dir.c_str());
    ::rmdir(dir_.c_str());
  }
  std::string dir_;
  ActingUser acting_;
  Fd ns_;
};

TEST_F(CriuActingCacheTest, AnswersFromTheCacheUntilTheDirectoryChanges) {
  ASSERT_EQ(::mkdir(acting_.dir.c_str(), 0700), 0);
  CriuActingCache cache(acting_.dir);
  EXPECT_EQ(cache.For(::getpid()), std::nullopt);
  EXPECT_EQ(cache.For(::getpid()), std::nullopt);
  EXPECT_EQ(cache.disk_reads(), 1u);  // the second from the cache
  {
    CriuActingAs as(acting_, ns_.get());
    std::optional<FsIdentity> who = cache.For(::getpid());  // the entry's creation was seen
    ASSERT_TRUE(who.has_value());
    EXPECT_EQ(who->uid, 1234u);
    EXPECT_EQ(who->gid, 5678u);
    EXPECT_EQ(who->groups, std::vector<gid_t>{42});
    uint64_t reads = cache.disk_reads();
    for (int i = 0; i < 100; ++i) ASSERT_EQ(cache.For(::getpid())->uid, 1234u);
    EXPECT_EQ(cache.disk_reads(), reads);
  }
  // Removed: the very next call sees it gone.
  EXPECT_EQ(cache.For(::getpid()), std::nullopt);
}

TEST_F(CriuActingCacheTest, ADaemonStartingMakesTheDirectorySoTheCacheWorksAtOnce) {
  ClearCriuActing(acting_.dir);  // as a daemon starts, before any criu
  struct stat st;
  ASSERT_EQ(::lstat(acting_.dir.c_str(), &st), 0);
  EXPECT_TRUE(S_ISDIR(st.st_mode));
  EXPECT_EQ(st.st_mode & 0777, 0700u);
  CriuActingCache cache(acting_.dir);
  for (int i = 0; i < 10; ++i) EXPECT_EQ(cache.For(::getpid()), std::nullopt);
  EXPECT_EQ(cache.disk_reads(), 1u);
}

// Root's every call through homefs asks; while nothing is written down (no criu at work)
// the answer needs no look at the caller's namespace.
TEST_F(CriuActingCacheTest, WhileNothingIsWrittenDownNoNamespaceIsLookedUp) {
  ClearCriuActing(acting_.dir);
  CriuActingCache cache(acting_.dir);
  for (int i = 0; i < 10; ++i) EXPECT_EQ(cache.For(::getpid()), std::nullopt);
  EXPECT_EQ(cache.namespace_lookups(), 0u);
  {
    CriuActingAs as(acting_, ns_.get());
    ASSERT_TRUE(cache.For(::getpid()).has_value());  // written down: looked up
    EXPECT_EQ(cache.namespace_lookups(), 1u);
  }
  EXPECT_EQ(cache.For(::getpid()), std::nullopt);  // removed: seen at once
  EXPECT_EQ(cache.For(::getpid()), std::nullopt);
  EXPECT_EQ(cache.namespace_lookups(), 1u);
  // Anything in the directory, even what is not an entry, makes it looked up again.
  std::string stray = acting_.dir + "/stray";
  Fd::Open(stray, O_WRONLY | O_CREAT | O_CLOEXEC, 0600);
  EXPECT_EQ(cache.For(::getpid()), std::nullopt);
  EXPECT_EQ(cache.namespace_lookups(), 2u);
  ASSERT_EQ(::unlink(stray.c_str()), 0);
}

TEST_F(CriuActingCacheTest, ADirectoryOthersMayWriteIsNotBelievedAtOnce) {
  ASSERT_EQ(::mkdir(acting_.dir.c_str(), 0700), 0);
  CriuActingCache cache(acting_.dir);
  CriuActingAs as(acting_, ns_.get());
  ASSERT_TRUE(cache.For(::getpid()).has_value());
  ASSERT_EQ(::chmod(acting_.dir.c_str(), 0777), 0);
  EXPECT_EQ(cache.For(::getpid()), std::nullopt);
  ASSERT_EQ(::chmod(acting_.dir.c_str(), 0700), 0);
  EXPECT_TRUE(cache.For(::getpid()).has_value());
}

TEST_F(CriuActingCacheTest, ADirectoryMadeLaterOrReplacedIsWatchedAnew) {
  CriuActingCache cache(acting_.dir);
  EXPECT_EQ(cache.For(::getpid()), std::nullopt);  // no directory yet: nothing to watch
  {
    CriuActingAs as(acting_, ns_.get());  // makes the directory
    EXPECT_TRUE(cache.For(::getpid()).has_value());
  }
  EXPECT_EQ(cache.For(::getpid()), std::nullopt);
  // The directory replaced by another that holds an entry.
  std::string moved = dir_ + "/old";
  ASSERT_EQ(::rename(acting_.dir.c_str(), moved.c_str()), 0);
  {
    CriuActingAs as(acting_, ns_.get());
    EXPECT_TRUE(cache.For(::getpid()).has_value());
  }
  ::rmdir(moved.c_str());
}

}  // namespace
}  // namespace homeward
