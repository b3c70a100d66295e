#include "child_process.h"
#include "error.h"

#include <sys/prctl.h>
#include <sys/wait.h>

#include <csignal>
#include <unistd.h>

#include <gtest/gtest.h>

#include <chrono>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

namespace homeward {
namespace {

using std::chrono::steady_clock;

// This test program is a child subreaper, as the daemon is: orphans of its children's
// children become its own.
class OrphanTest : public ::testing::Test {
 protected:
  void SetUp() override { ASSERT_EQ(::prctl(PR_SET_CHILD_SUBREAPER, 1), 0); }
};

char StateOf(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/stat");
  std::string stat((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  size_t close = stat.rfind(')');
  return close == std::string::npos || close + 2 >= stat.size() ? '?' : stat[close + 2];
}

// Calls ReapOrphans until it reaps something, for at most 30 s.
std::vector<ReapedOrphan> ReapUntilSome() {
  auto deadline = steady_clock::now() + std::chrono::seconds(30);
  while (steady_clock::now() < deadline) {
    auto reaped = ReapOrphans();
    if (!reaped.empty()) return reaped;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return {};
}

// Runs sh, which leaves a sleep running and exits: the sleep becomes ours, and a zombie
// when it ends. Returns the sleep's pid.
pid_t LeaveAnOrphan() {
  CommandResult run = RunCommand({"sh", "-c", "sleep 0.1 >/dev/null & echo $!"});
  EXPECT_EQ(run.status.code, 0);
  return static_cast<pid_t>(std::stol(run.output));
}

void WaitUntilZombie(pid_t pid) {
  auto deadline = steady_clock::now() + std::chrono::seconds(30);
  while (StateOf(pid) != 'Z' && steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  ASSERT_EQ(StateOf(pid), 'Z');
}

volatile sig_atomic_t handled = 0;

TEST(SpawnSharingMemory, NoHandlerOfOursRunsInTheChild) {
  // The child runs in our memory until it execs: a handler of ours run there would act on
  // our state (here, set our flag). It gets the signal's default action instead.
  struct sigaction action {}, before {};
  action.sa_handler = [](int) { handled = 1; };
  ASSERT_EQ(::sigaction(SIGUSR1, &action, &before), 0);
  pid_t pid = SpawnSharingMemory(
      [](void*) {
        sigset_t none;
        sigemptyset(&none);
        sigprocmask(SIG_SETMASK, &none, nullptr);
        raise(SIGUSR1);
        _exit(0);
      },
      nullptr);
  int status = 0;
  ASSERT_EQ(::waitpid(pid, &status, 0), pid);
  ::sigaction(SIGUSR1, &before, nullptr);
  EXPECT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGUSR1) << status;
  EXPECT_EQ(handled, 0);
}

TEST(SpawnSharingMemory, SpawnsAndReportsAProgramThatCannotRun) {
  SpawnOptions options;
  options.argv = {"sh", "-c", "exit 3"};
  EXPECT_EQ(ChildProcess::Spawn(options).Wait().code, 3);
  options.argv = {"/nonexistent/program"};
  EXPECT_THROW(ChildProcess::Spawn(options), Error);
}

TEST_F(OrphanTest, ReapsTheOrphanOfAChildThatLeftItBehind) {
  pid_t orphan = LeaveAnOrphan();
  auto reaped = ReapUntilSome();
  ASSERT_EQ(reaped.size(), 1u);
  EXPECT_EQ(reaped[0].pid, orphan);
  EXPECT_EQ(reaped[0].command, "sleep");
  EXPECT_EQ(reaped[0].status.code, 0);
  EXPECT_FALSE(reaped[0].status.signaled);
  EXPECT_TRUE(ReapOrphans().empty());
}

TEST_F(OrphanTest, LeavesAnOwnedChildToItsOwner) {
  SpawnOptions exit3;
  exit3.argv = {"sh", "-c", "exit 3"};
  ChildProcess child = ChildProcess::Spawn(exit3);
  WaitUntilZombie(child.pid());
  EXPECT_TRUE(ReapOrphans().empty());
  EXPECT_TRUE(ReapOrphans().empty());
  EXPECT_EQ(child.Wait().code, 3);  // its exit status is still the owner's
}

TEST_F(OrphanTest, WaitsWhileAnAdoptionIsPending) {
  pid_t orphan = -1;
  {
    // The orphan stands for a process a restore is about to adopt.
    AdoptionPending restoring;
    orphan = LeaveAnOrphan();
    WaitUntilZombie(orphan);
    EXPECT_TRUE(ReapOrphans().empty());
    EXPECT_TRUE(ReapOrphans().empty());
    EXPECT_EQ(StateOf(orphan), 'Z');
  }
  auto reaped = ReapUntilSome();
  ASSERT_EQ(reaped.size(), 1u);
  EXPECT_EQ(reaped[0].pid, orphan);
}

}  // namespace
}  // namespace homeward
