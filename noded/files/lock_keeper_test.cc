// LockKeeper: a lock held on a kept description outlives the daemon that kept it, and the
// next one takes it back for its client; the last reference lets it go at once.
#include "lock_keeper.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>

#include <gtest/gtest.h>

#include "scratch_dir.h"

namespace homeward {
namespace {

// F_OFD_SETLK of a write lock on the whole file through a fresh description of `path`: 0
// or the errno.
int TryLock(const std::string& path) {
  Fd fd = Fd::Open(path, O_RDWR);
  struct flock all {};
  all.l_type = F_WRLCK;
  all.l_whence = SEEK_SET;
  return ::fcntl(fd.get(), F_OFD_SETLK, &all) == 0 ? 0 : errno;
}

pid_t KeeperPid(const std::string& record) {
  long pid = 0;
  std::sscanf(ReadTextFile(record).c_str(), "%ld", &pid);
  return static_cast<pid_t>(pid);
}

class LockKeeperTest : public ::testing::Test {
 protected:
  void SetUp() override {
    file_ = scratch_ / "locked";
    Fd::Open(file_, O_RDWR | O_CREAT, 0600);
    record_ = scratch_ / "files-locks";
  }
  void TearDown() override {
    // The keeper outlives its LockKeeper on purpose: ended here, and reaped (our child).
    if (pid_t pid = KeeperPid(record_); pid > 0) {
      ::kill(pid, SIGKILL);
      ::waitpid(pid, nullptr, 0);
    }
  }
  ScratchDir scratch_{"homeward-lock-keeper"};
  std::string file_, record_;
};

TEST_F(LockKeeperTest, ALockOutlivesTheDaemonAndGoesBackToItsClient) {
  LockKeeper::Meta meta;
  meta.kind = LockKeeper::Kind::kPosix;
  meta.client = 42;
  meta.owner = 7;
  meta.pid = 1234;
  meta.access = O_RDWR;
  meta.host = "127.0.0.2";
  {
    auto keeper = LockKeeper::Start(record_);
    Fd fd = Fd::Open(file_, O_RDWR);
    struct flock all {};
    all.l_type = F_WRLCK;
    all.l_whence = SEEK_SET;
    ASSERT_EQ(::fcntl(fd.get(), F_OFD_SETLK, &all), 0);
    auto kept = keeper->Keep(fd.get(), meta);
    ASSERT_TRUE(kept);
    EXPECT_EQ(TryLock(file_), EAGAIN);
    // The daemon goes (as SIGKILLed: its descriptors close, nothing is unlocked).
    keeper->Detach();
  }
  EXPECT_EQ(TryLock(file_), EAGAIN) << "the keeper's copy holds the lock";

  auto next = LockKeeper::Start(record_);
  EXPECT_TRUE(next->Adopt(41).empty());
  auto orphans = next->Adopt(42);
  ASSERT_EQ(orphans.size(), 1u);
  EXPECT_EQ(orphans[0].meta.owner, 7u);
  EXPECT_EQ(orphans[0].meta.pid, 1234);
  EXPECT_EQ(orphans[0].meta.host, "127.0.0.2");
  EXPECT_EQ(TryLock(file_), EAGAIN);
  orphans.clear();  // the client let it go
  EXPECT_EQ(TryLock(file_), 0);
}

TEST_F(LockKeeperTest, AParkedLockAndANodeDeclaredDeadAreDroppedAfterARestart) {
  std::string other = scratch_ / "other";
  Fd::Open(other, O_RDWR | O_CREAT, 0600);
  {
    auto keeper = LockKeeper::Start(record_);
    std::vector<std::shared_ptr<LockKeeper::Kept>> kept;
    for (const std::string& path : {file_, other}) {
      Fd fd = Fd::Open(path, O_RDWR);
      struct flock all {};
      all.l_type = F_WRLCK;
      all.l_whence = SEEK_SET;
      ASSERT_EQ(::fcntl(fd.get(), F_OFD_SETLK, &all), 0);
      LockKeeper::Meta meta;
      meta.client = 42;
      meta.host = "127.0.0.3";
      kept.push_back(keeper->Keep(fd.get(), meta));
    }
    LockKeeper::Meta parked;
    parked.kind = LockKeeper::Kind::kParked;
    kept[0]->Describe(parked);
    keeper->Detach();
  }
  EXPECT_EQ(TryLock(file_), EAGAIN);
  EXPECT_EQ(TryLock(other), EAGAIN);
  auto next = LockKeeper::Start(record_);
  EXPECT_EQ(TryLock(file_), 0) << "a moving job's lock goes with the daemon that parked it";
  EXPECT_EQ(TryLock(other), EAGAIN);
  next->DropOrphans("127.0.0.3");
  EXPECT_EQ(TryLock(other), 0);
  EXPECT_TRUE(next->Adopt(42).empty());
}

}  // namespace
}  // namespace homeward

// The keeper is this executable started again (LockKeeper::Start runs /proc/self/exe).
int main(int argc, char** argv) {
  if (argc == 2 && std::strcmp(argv[1], "--keep-locks") == 0) return homeward::LockKeeperMain();
  ::testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
}
