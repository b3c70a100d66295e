// Tests of the limits on unauthenticated peer connections: per source and in all, one
// deadline each, and refusals logged at a bounded rate.
#include "peer_admission.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

namespace homeward {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

PeerConfig Limits(int per_source, int all, int handshake_ms) {
  PeerConfig limits;
  limits.max_pending_per_source = per_source;
  limits.max_pending = all;
  limits.handshake = std::chrono::milliseconds(handshake_ms);
  return limits;
}

TEST(PendingPeers, CapsEachSource) {
  PendingPeers pending(Limits(2, 10, 5000));
  EXPECT_EQ(pending.Admit(3, "10.0.0.9", 0), std::nullopt);
  EXPECT_EQ(pending.Admit(4, "10.0.0.9", 0), std::nullopt);
  EXPECT_EQ(pending.Admit(5, "10.0.0.9", 0), PeerRefusal::kSourceFull);
  // Another address is not held back by the first one's connections.
  EXPECT_EQ(pending.Admit(6, "10.0.0.2", 0), std::nullopt);
  EXPECT_EQ(pending.From("10.0.0.9"), 2);
  EXPECT_EQ(pending.size(), 3u);
  // A finished handshake frees its source's place.
  pending.Remove(3);
  EXPECT_EQ(pending.From("10.0.0.9"), 1);
  EXPECT_EQ(pending.Admit(7, "10.0.0.9", 0), std::nullopt);
}

TEST(PendingPeers, CapsTheTotal) {
  PendingPeers pending(Limits(8, 3, 5000));
  EXPECT_EQ(pending.Admit(1, "10.0.0.1", 0), std::nullopt);
  EXPECT_EQ(pending.Admit(2, "10.0.0.2", 0), std::nullopt);
  EXPECT_EQ(pending.Admit(3, "10.0.0.3", 0), std::nullopt);
  EXPECT_EQ(pending.Admit(4, "10.0.0.4", 0), PeerRefusal::kAllFull);
  EXPECT_EQ(pending.size(), 3u);
  EXPECT_EQ(pending.From("10.0.0.4"), 0);  // a refusal records nothing
  pending.Remove(2);
  EXPECT_EQ(pending.Admit(4, "10.0.0.4", 0), std::nullopt);
}

TEST(PendingPeers, OneDeadlineFromAdmission) {
  PendingPeers pending(Limits(8, 64, 5000));
  EXPECT_EQ(pending.NextDeadline(), std::nullopt);
  pending.Admit(1, "10.0.0.1", 1000);
  pending.Admit(2, "10.0.0.1", 3000);
  EXPECT_EQ(pending.NextDeadline(), 6000);
  EXPECT_TRUE(pending.Expired(5999).empty());
  EXPECT_THAT(pending.Expired(6000), ElementsAre(1));
  EXPECT_THAT(pending.Expired(9000), ElementsAre(1, 2));
  pending.Remove(1);
  EXPECT_EQ(pending.NextDeadline(), 8000);
  pending.Remove(2);
  EXPECT_EQ(pending.NextDeadline(), std::nullopt);
  EXPECT_EQ(pending.size(), 0u);
}

TEST(PendingPeers, ForgetsUnknownAndReusedIds) {
  PendingPeers pending(Limits(1, 64, 5000));
  pending.Remove(42);  // never admitted: ignored
  EXPECT_EQ(pending.Admit(7, "10.0.0.1", 0), std::nullopt);
  // The same descriptor number again means the first connection is gone.
  EXPECT_EQ(pending.Admit(7, "10.0.0.2", 100), std::nullopt);
  EXPECT_EQ(pending.From("10.0.0.1"), 0);
  EXPECT_EQ(pending.size(), 1u);
  EXPECT_EQ(pending.NextDeadline(), 5100);
}

TEST(PendingPeers, AFloodStaysBounded) {
  PendingPeers pending(Limits(8, 64, 5000));
  int admitted = 0;
  for (int i = 0; i < 10000; ++i) {
    std::string source = "10.0." + std::to_string(i % 20) + ".1";
    if (!pending.Admit(i, source, i)) ++admitted;
  }
  EXPECT_EQ(admitted, 64);
  EXPECT_EQ(pending.size(), 64u);
  for (int id : pending.Expired(1'000'000)) pending.Remove(id);
  EXPECT_EQ(pending.size(), 0u);
}

TEST(RefusalLog, FirstAtOnceThenOneLinePerInterval) {
  RefusalLog log(10'000);
  EXPECT_EQ(log.Take(0), std::nullopt);
  EXPECT_EQ(log.NextLine(), std::nullopt);
  log.Count(PeerRefusal::kHandshake, "10.0.0.9:4000: the client did not prove the cluster key");
  auto first = log.Take(5);
  ASSERT_TRUE(first);
  EXPECT_THAT(*first, HasSubstr("refused peer 10.0.0.9:4000: the client did not prove"));
  EXPECT_THAT(*first, HasSubstr("1 failed handshake"));
  for (int i = 0; i < 500; ++i) log.Count(PeerRefusal::kSourceFull, "10.0.0.9:5000: too many");
  log.Count(PeerRefusal::kTimedOut, "10.0.0.9:4001: no handshake within 5000 ms");
  EXPECT_EQ(log.NextLine(), 10'005);
  EXPECT_EQ(log.Take(6000), std::nullopt);
  auto second = log.Take(10'005);
  ASSERT_TRUE(second);
  EXPECT_THAT(*second, HasSubstr("501 refused"));
  EXPECT_THAT(*second, HasSubstr("500 over the limit for their address"));
  EXPECT_THAT(*second, HasSubstr("1 handshake timed out"));
  EXPECT_EQ(log.Take(30'000), std::nullopt);  // nothing new: no line
  EXPECT_EQ(log.total(PeerRefusal::kSourceFull), 500u);
}

}  // namespace
}  // namespace homeward
