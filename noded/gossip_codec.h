// The gossip datagram codec: [header: magic, version][Cap'n Proto message][MAC]. The MAC
// is libsodium's crypto_auth (HMAC-SHA512-256) over header and payload with the cluster
// key. Decoding never throws and never keeps anything of a datagram it drops: each drop
// is counted by reason, so that garbage costs a counter increment and nothing more.
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
inline constexpr size_t kGossipHeaderBytes = 8;
inline constexpr size_t kGossipMacBytes = crypto_auth_BYTES;
inline constexpr uint32_t kGossipMagic = 0x48574753;  // "HWGS"

class GossipCodec {
 public:
  // `key` must be crypto_auth_KEYBYTES (32) long; throws Error(kInvalidInput) otherwise.
  explicit GossipCodec(const std::vector<uint8_t>& key);

  // The datagram for `message`; throws Error(kInvalidInput) if it would exceed the limit
  // (the caller sends a smaller window).
  std::vector<uint8_t> Encode(const GossipMessage& message) const;
  // The message, or nothing with the reason counted in `drops`.
  std::optional<GossipMessage> Decode(std::span<const uint8_t> datagram, DropCounters* drops) const;

  // For tests: a datagram with an arbitrary header version, correctly MACed.
  std::vector<uint8_t> EncodeWithVersion(const GossipMessage& message, uint16_t version) const;

 private:
  std::array<uint8_t, crypto_auth_KEYBYTES> key_;
};

}  // namespace homeward
