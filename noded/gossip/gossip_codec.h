// The gossip datagram codec: [header: magic, version, stamp][Cap'n Proto message][MAC].
// The MAC is libsodium's crypto_auth (HMAC-SHA512-256) over header and payload with the
// cluster key; the stamp (the sender's clock, strictly increasing) lets the receiver drop
// replays (noded/gossip/gossip_replay.h). Decoding never throws and never keeps anything of a
// datagram it drops: each drop is counted by reason, so that garbage costs a counter
// increment and nothing more.
#pragma once

#include <sodium.h>

#include <array>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "membership.h"

namespace homeward {

enum class DropReason : uint8_t {
  kTruncated = 0,  // shorter than header + MAC
  kOversized,      // larger than kMaxGossipDatagram
  kBadMagic,       // not a Homeward gossip datagram
  kBadVersion,     // a protocol version this node does not speak
  kBadMac,         // not made with this cluster's key (or altered)
  kMalformed,      // authentic, but its message does not parse or is out of bounds
  kStale,          // authentic, but stamped too far from this node's clock
  kReplayed,       // authentic, but not newer than what its sender sent before
  kCount,
};
const char* DropReasonName(DropReason reason);

struct DropCounters {
  std::array<uint64_t, static_cast<size_t>(DropReason::kCount)> by_reason{};
  uint64_t total() const;
  void Count(DropReason reason) { ++by_reason[static_cast<size_t>(reason)]; }
  uint64_t operator[](DropReason reason) const { return by_reason[static_cast<size_t>(reason)]; }
};

inline constexpr size_t kMaxGossipDatagram = 32 * 1024;
// magic u32 | version u16 | reserved u16 | stamp u64 (big-endian)
inline constexpr size_t kGossipHeaderBytes = 16;
inline constexpr size_t kGossipMacBytes = crypto_auth_BYTES;
inline constexpr uint32_t kGossipMagic = 0x48574753;  // "HWGS"

class GossipCodec {
 public:
  // `key` must be crypto_auth_KEYBYTES (32) long; throws Error(kInvalidInput) otherwise.
  explicit GossipCodec(const std::vector<uint8_t>& key);

  // The datagram for `message`, stamped with message.stamp; throws Error(kInvalidInput)
  // if it would exceed the limit (the caller sends a smaller window).
  std::vector<uint8_t> Encode(const GossipMessage& message) const;
  // The message (its stamp from the header), or nothing with the reason counted in
  // `drops`. Replays are the caller's to check: decoding keeps no state.
  std::optional<GossipMessage> Decode(std::span<const uint8_t> datagram, DropCounters* drops) const;

  // For tests: a datagram with an arbitrary header version, correctly MACed.
  std::vector<uint8_t> EncodeWithVersion(const GossipMessage& message, uint16_t version) const;

 private:
  std::array<uint8_t, crypto_auth_KEYBYTES> key_;
};

}  // namespace homeward
