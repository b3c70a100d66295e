// Tests of gossip replay protection: a datagram is accepted once, within the window of
// the receiver's clock, and only if newer than what its sender sent before.
#include "gossip_replay.h"

#include <gtest/gtest.h>

namespace homeward {
namespace {

using Verdict = ReplayGuard::Verdict;
constexpr uint64_t kSecond = 1'000'000;
constexpr uint64_t kNow = 1'700'000'000 * kSecond;

TEST(StampClock, StrictlyIncreasingEvenWhenTheClockStandsOrGoesBack) {
  StampClock clock;
  EXPECT_EQ(clock.Next(kNow), kNow);
  EXPECT_EQ(clock.Next(kNow), kNow + 1);
  EXPECT_EQ(clock.Next(kNow - 5 * kSecond), kNow + 2);
  EXPECT_EQ(clock.Next(kNow + kSecond), kNow + kSecond);
}

TEST(ReplayGuard, ADatagramIsAcceptedOnce) {
  ReplayGuard guard(30'000);
  EXPECT_EQ(guard.Check("node1", 7, kNow, kNow), Verdict::kFresh);
  // The same datagram 5 s later: within the window, but not newer.
  EXPECT_EQ(guard.Check("node1", 7, kNow, kNow + 5 * kSecond), Verdict::kReplayed);
  EXPECT_EQ(guard.Check("node1", 7, kNow + 1, kNow + 5 * kSecond), Verdict::kFresh);
}

TEST(ReplayGuard, OlderThanTheLastIsDropped) {
  ReplayGuard guard(30'000);
  EXPECT_EQ(guard.Check("node1", 7, kNow + 10, kNow), Verdict::kFresh);
  // A datagram the sender sent earlier (to this node or another) arrives after a newer
  // one: it is not accepted, so a datagram recorded on its way to a third node cannot
  // be played here either.
  EXPECT_EQ(guard.Check("node1", 7, kNow + 5, kNow), Verdict::kReplayed);
  // Each sender has its own stamps.
  EXPECT_EQ(guard.Check("node2", 3, kNow + 5, kNow), Verdict::kFresh);
}

TEST(ReplayGuard, OutsideTheWindowIsStale) {
  ReplayGuard guard(30'000);
  EXPECT_EQ(guard.Check("node1", 7, kNow - 31 * kSecond, kNow), Verdict::kStale);
  EXPECT_EQ(guard.Check("node1", 7, kNow + 31 * kSecond, kNow), Verdict::kStale);
  EXPECT_EQ(guard.Check("node1", 7, kNow - 29 * kSecond, kNow), Verdict::kFresh);
  // A stale datagram leaves no trace: the sender's newer ones still pass.
  EXPECT_EQ(guard.Check("node1", 7, kNow - 28 * kSecond, kNow), Verdict::kFresh);
}

TEST(ReplayGuard, ANewIncarnationStartsOverAndOldOnesAreReplays) {
  ReplayGuard guard(30'000);
  EXPECT_EQ(guard.Check("node1", 7, kNow, kNow), Verdict::kFresh);
  // The node restarted with its clock set back a little: a higher incarnation wins.
  EXPECT_EQ(guard.Check("node1", 9, kNow - kSecond, kNow), Verdict::kFresh);
  // Its former life's datagrams are replays now, however new their stamp.
  EXPECT_EQ(guard.Check("node1", 7, kNow + kSecond, kNow), Verdict::kReplayed);
  EXPECT_EQ(guard.Check("node1", 9, kNow, kNow), Verdict::kFresh);
}

TEST(ReplayGuard, TheTableIsBounded) {
  ReplayGuard guard(30'000, 3);
  for (int i = 0; i < 100; ++i) {
    EXPECT_EQ(guard.Check("node" + std::to_string(i), 1, kNow + i, kNow + i), Verdict::kFresh);
  }
  EXPECT_EQ(guard.size(), 3u);
  // The most recently heard are kept, so their replays are still caught.
  EXPECT_EQ(guard.Check("node99", 1, kNow + 99, kNow + 200), Verdict::kReplayed);
}

}  // namespace
}  // namespace homeward
