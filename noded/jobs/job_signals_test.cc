#include "job_signals.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <unistd.h>

#include <vector>

namespace homeward::job_signals {
namespace {

using ::testing::ElementsAre;

// Queues `value` on the carrier to this process, as the daemon does to a job's init.
void Queue(uint64_t value) {
  sigval carried{};
  carried.sival_ptr = reinterpret_cast<void*>(static_cast<uintptr_t>(value));
  ASSERT_EQ(sigqueue(getpid(), Carrier(), carried), 0);
}

// Takes every signal pending on this (blocked) process, as the init does, and returns
// what the init would forward for each.
std::vector<int> TakePending(Seen& seen) {
  sigset_t carrier;
  sigemptyset(&carrier);
  sigaddset(&carrier, Carrier());
  std::vector<int> forwarded;
  const timespec now{};
  siginfo_t info;
  while (sigtimedwait(&carrier, &info, &now) > 0) {
    forwarded.push_back(seen.Forward(info.si_signo, info.si_code,
                                     reinterpret_cast<uintptr_t>(info.si_value.sival_ptr)));
  }
  return forwarded;
}

class JobSignalsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    sigset_t carrier;
    sigemptyset(&carrier);
    sigaddset(&carrier, Carrier());
    sigprocmask(SIG_BLOCK, &carrier, &old_);
  }
  void TearDown() override {
    Seen drain;
    TakePending(drain);
    sigprocmask(SIG_SETMASK, &old_, nullptr);
  }
  sigset_t old_;
};

TEST_F(JobSignalsTest, ANumberComesOnceHoweverOftenItIsSent) {
  Seen seen;
  EXPECT_EQ(seen.Forward(Carrier(), SI_QUEUE, Value(SIGUSR1, 4242, 1)), SIGUSR1);
  EXPECT_EQ(seen.Forward(Carrier(), SI_QUEUE, Value(SIGUSR1, 4242, 1)), 0);
  EXPECT_EQ(seen.Forward(Carrier(), SI_QUEUE, Value(SIGTERM, 4242, 2)), SIGTERM);
}

// The daemon that delivered number 1 died before answering; the next one queues it again,
// and mosrun sends number 2 once that is answered, before the init ran: both are pending
// at once. Number 2 must not be swallowed by the resent 1 (a standard signal would be).
TEST_F(JobSignalsTest, ASignalQueuedBehindAResentOneOfItsKindIsForwarded) {
  Seen seen;
  EXPECT_EQ(seen.Forward(Carrier(), SI_QUEUE, Value(SIGUSR1, 4242, 1)), SIGUSR1);
  Queue(Value(SIGUSR1, 4242, 1));
  Queue(Value(SIGUSR1, 4242, 2));
  EXPECT_THAT(TakePending(seen), ElementsAre(0, SIGUSR1));
}

TEST_F(JobSignalsTest, AJobRestartedFromACheckpointHasANewMosrunThatCountsFromOne) {
  Seen seen;
  EXPECT_EQ(seen.Forward(Carrier(), SI_QUEUE, Value(SIGUSR1, 4242, 7)), SIGUSR1);
  EXPECT_EQ(seen.Forward(Carrier(), SI_QUEUE, Value(SIGUSR1, 5151, 1)), SIGUSR1);
}

TEST_F(JobSignalsTest, OtherSignalsPassAsTheyAre) {
  Seen seen;
  EXPECT_EQ(seen.Forward(SIGUSR1, SI_USER, 0), SIGUSR1);
  EXPECT_EQ(seen.Forward(SIGUSR1, SI_QUEUE, Value(SIGUSR1, 4242, 1)), SIGUSR1);
  // The carrier itself, sent by someone else than the daemon, is a signal like another.
  EXPECT_EQ(seen.Forward(Carrier(), SI_USER, 0), Carrier());
  EXPECT_EQ(seen.Forward(Carrier(), SI_QUEUE, 0), Carrier());
}

}  // namespace
}  // namespace homeward::job_signals
