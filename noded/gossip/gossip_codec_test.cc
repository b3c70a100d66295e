// Tests of the gossip datagram codec: round trip, and every kind of bad datagram dropped
// with its reason counted.
#include "gossip_codec.h"

#include <gtest/gtest.h>

#include <random>

#include "error.h"

namespace homeward {
namespace {

std::vector<uint8_t> Key(uint8_t fill) {
  return std::vector<uint8_t>(32, fill);
}

GossipMessage Sample() {
  GossipMessage message;
  message.kind = GossipMessage::Kind::kPingReq;
  message.seq = 42;
  message.sender.name = "node1";
  message.sender.cluster = "a";
  message.sender.address = "127.77.1.1";
  message.sender.gossip_port = 4700;
  message.sender.peer_port = 4701;
  message.sender.cores = 2;
  message.sender.speed = 1.25f;
  message.sender.load = 0.5f;
  message.sender.mem_free_mb = 1000;
  message.sender.mem_total_mb = 2000;
  message.sender.jobs_away = 3;
  message.sender.guests_here = 1;
  message.sender.incarnation = 1234567;
  message.sender.boot_time_s = 1796000000;
  message.sender.users = 4;
  message.sender.group = "physics";
  message.sender.long_job_after_s = 600;
  WindowEntry entry;
  entry.record.name = "node2";
  entry.record.address = "127.77.1.2";
  entry.record.load = 2.0f;
  entry.age_ms = 1500;
  entry.state = MemberState::kSuspect;
  message.entries.push_back(entry);
  message.news = 1;
  message.probe_name = "node3";
  message.probe = Endpoint{"127.77.1.3", 4700};
  message.stamp = 0x0123456789abcdefu;
  return message;
}

TEST(GossipCodec, RoundTrip) {
  GossipCodec codec(Key(7));
  DropCounters drops;
  auto datagram = codec.Encode(Sample());
  auto decoded = codec.Decode(datagram, &drops);
  ASSERT_TRUE(decoded.has_value());
  EXPECT_EQ(drops.total(), 0u);
  EXPECT_EQ(decoded->kind, GossipMessage::Kind::kPingReq);
  EXPECT_EQ(decoded->seq, 42u);
  EXPECT_EQ(decoded->sender.name, "node1");
  EXPECT_EQ(decoded->sender.cluster, "a");
  EXPECT_EQ(decoded->sender.address, "127.77.1.1");
  EXPECT_EQ(decoded->sender.cores, 2);
  EXPECT_FLOAT_EQ(decoded->sender.speed, 1.25f);
  EXPECT_EQ(decoded->sender.jobs_away, 3u);
  EXPECT_EQ(decoded->sender.incarnation, 1234567u);
  EXPECT_EQ(decoded->sender.boot_time_s, 1796000000u);
  EXPECT_EQ(decoded->sender.users, 4);
  EXPECT_EQ(decoded->sender.group, "physics");
  EXPECT_EQ(decoded->sender.long_job_after_s, 600u);
  ASSERT_EQ(decoded->entries.size(), 1u);
  EXPECT_EQ(decoded->entries[0].record.name, "node2");
  EXPECT_EQ(decoded->entries[0].age_ms, 1500u);
  EXPECT_EQ(decoded->entries[0].state, MemberState::kSuspect);
  EXPECT_EQ(decoded->news, 1);
  EXPECT_EQ(decoded->probe_name, "node3");
  EXPECT_EQ(decoded->probe, (Endpoint{"127.77.1.3", 4700}));
  EXPECT_EQ(decoded->stamp, 0x0123456789abcdefu);
}

TEST(GossipCodec, TheStampIsAuthenticated) {
  // A replayer cannot make an old datagram look new: the stamp is under the MAC.
  GossipCodec codec(Key(7));
  DropCounters drops;
  auto datagram = codec.Encode(Sample());
  datagram[15] ^= 1;
  EXPECT_FALSE(codec.Decode(datagram, &drops));
  EXPECT_EQ(drops[DropReason::kBadMac], 1u);
}

TEST(GossipCodec, TheFormerVersionIsDropped) {
  // Version 1 had no stamp: a node of that version is not heard, rather than heard
  // without replay protection.
  GossipCodec codec(Key(7));
  DropCounters drops;
  EXPECT_FALSE(codec.Decode(codec.EncodeWithVersion(Sample(), 1), &drops));
  EXPECT_EQ(drops[DropReason::kBadVersion], 1u);
}

TEST(GossipCodec, TruncatedIsDropped) {
  GossipCodec codec(Key(7));
  DropCounters drops;
  auto datagram = codec.Encode(Sample());
  for (size_t size : {size_t{0}, size_t{5}, size_t{40}}) {
    EXPECT_FALSE(codec.Decode(std::span(datagram.data(), size), &drops));
  }
  EXPECT_EQ(drops[DropReason::kTruncated], 3u);
  // Cut short but still long enough: the MAC no longer matches.
  EXPECT_FALSE(codec.Decode(std::span(datagram.data(), datagram.size() - 8), &drops));
  EXPECT_EQ(drops[DropReason::kBadMac], 1u);
}

TEST(GossipCodec, WrongKeyIsDropped) {
  GossipCodec ours(Key(7));
  GossipCodec theirs(Key(8));
  DropCounters drops;
  EXPECT_FALSE(ours.Decode(theirs.Encode(Sample()), &drops));
  EXPECT_EQ(drops[DropReason::kBadMac], 1u);
}

TEST(GossipCodec, AlteredByteIsDropped) {
  GossipCodec codec(Key(7));
  DropCounters drops;
  auto datagram = codec.Encode(Sample());
  datagram[datagram.size() / 2] ^= 1;
  EXPECT_FALSE(codec.Decode(datagram, &drops));
  EXPECT_EQ(drops[DropReason::kBadMac], 1u);
}

TEST(GossipCodec, WrongVersionIsDropped) {
  GossipCodec codec(Key(7));
  DropCounters drops;
  EXPECT_FALSE(codec.Decode(codec.EncodeWithVersion(Sample(), 99), &drops));
  EXPECT_EQ(drops[DropReason::kBadVersion], 1u);
}

TEST(GossipCodec, OversizedAndForeignAreDropped) {
  GossipCodec codec(Key(7));
  DropCounters drops;
  std::vector<uint8_t> big(kMaxGossipDatagram + 1, 0);
  EXPECT_FALSE(codec.Decode(big, &drops));
  EXPECT_EQ(drops[DropReason::kOversized], 1u);
  std::vector<uint8_t> foreign(200, 'x');
  EXPECT_FALSE(codec.Decode(foreign, &drops));
  EXPECT_EQ(drops[DropReason::kBadMagic], 1u);
}

TEST(GossipCodec, AuthenticGarbageIsMalformedNotFatal) {
  // A peer holding the key but sending nonsense payloads: every one is dropped.
  GossipCodec codec(Key(7));
  std::vector<uint8_t> key = Key(7);
  std::mt19937 random(1);
  DropCounters drops;
  for (int i = 0; i < 2000; ++i) {
    size_t words = 1 + random() % 64;
    std::vector<uint8_t> datagram(kGossipHeaderBytes + words * 8 + kGossipMacBytes);
    for (auto& byte : datagram) byte = static_cast<uint8_t>(random());
    datagram[0] = 'H';
    datagram[1] = 'W';
    datagram[2] = 'G';
    datagram[3] = 'S';
    datagram[4] = 0;
    datagram[5] = 2;  // the current version
    size_t signed_bytes = datagram.size() - kGossipMacBytes;
    crypto_auth(datagram.data() + signed_bytes, datagram.data(), signed_bytes, key.data());
    auto decoded = codec.Decode(datagram, &drops);
    if (decoded) {
      EXPECT_LE(decoded->entries.size(), 256u);
    }
  }
  EXPECT_GT(drops[DropReason::kMalformed], 0u);
  EXPECT_EQ(drops[DropReason::kBadMac], 0u);
}

TEST(GossipCodec, RefusesAShortKey) {
  EXPECT_THROW(GossipCodec(std::vector<uint8_t>(16, 1)), Error);
}

}  // namespace
}  // namespace homeward
