#include "node_check.h"

#include <gtest/gtest.h>

namespace homeward {
namespace {

using Verdict = CheckLine::Verdict;
constexpr std::chrono::milliseconds kWindow{30000};

TEST(CheckClocksTest, NoPeerHeardIsNothingToCompare) {
  CheckLine line = CheckClocks({}, kWindow);
  EXPECT_EQ(line.verdict, Verdict::kOk);
  EXPECT_EQ(line.what, "clocks");
  EXPECT_EQ(line.detail, "no live peer heard yet: nothing to compare with");
}

TEST(CheckClocksTest, PeersWithinHalfASecondAgree) {
  CheckLine line = CheckClocks({{"node2", 3}, {"node3", -120}, {"c2/node4", 40}}, kWindow);
  EXPECT_EQ(line.verdict, Verdict::kOk);
  EXPECT_EQ(line.detail, "within 120 ms of 3 live peers (the farthest: node3)");
  EXPECT_TRUE(line.fix.empty());
}

TEST(CheckClocksTest, TheFarthestPeerIsNamedWithItsDirection) {
  CheckLine line = CheckClocks({{"node2", 3}, {"node3", -2500}}, kWindow);
  EXPECT_EQ(line.verdict, Verdict::kWarn);
  EXPECT_EQ(line.detail, "node3's clock is 2500 ms behind this node's: a job that moves "
                         "between them sees its wall clock jump");
  EXPECT_NE(line.fix.find("chrony"), std::string::npos);
  EXPECT_EQ(CheckClocks({{"node2", kClockWarnMs}}, kWindow).verdict, Verdict::kOk);
  EXPECT_EQ(CheckClocks({{"node2", kClockWarnMs + 1}}, kWindow).verdict, Verdict::kWarn);
}

TEST(CheckClocksTest, BeyondHalfTheReplayWindowGossipBreaks) {
  CheckLine line = CheckClocks({{"node2", 15001}}, kWindow);
  EXPECT_EQ(line.verdict, Verdict::kFail);
  EXPECT_EQ(line.detail, "node2's clock is 15001 ms ahead of this node's: more than half the "
                         "gossip replay window (30000 ms), so its datagrams are dropped as stale");
  EXPECT_EQ(CheckClocks({{"node2", 15000}}, kWindow).verdict, Verdict::kWarn);
}

}  // namespace
}  // namespace homeward
