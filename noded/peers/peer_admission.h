// Admission of unauthenticated peer connections: how many handshakes one address and
// everyone together may hold open before proving the cluster key, until when, and how
// refusals reach the log. Pure logic with time passed in, so the limits are tested
// without sockets; noded/peers/peer_server.h applies them.
#pragma once

#include <array>
#include <cstdint>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "config.h"

namespace homeward {

// Why a connection to the peer port was closed without being served.
enum class PeerRefusal : uint8_t {
  kSourceFull = 0,  // its address already holds max_pending_per_source handshakes
  kAllFull,         // max_pending handshakes are under way
  kTimedOut,        // the handshake did not finish within its deadline
  kHandshake,       // not a Homeward peer, or did not prove the cluster key
  kClosed,          // closed or reset before the handshake finished
  kUnknownService,  // authenticated, but asked for a service this node does not run
  kNotForCluster,   // a partner cluster's node, asking for a service its cluster may not use
  kNoResources,     // no descriptor, memory or thread could be had for it
  kCount,
};
const char* PeerRefusalName(PeerRefusal reason);

// The connections in their handshake, each with its source address and deadline.
// Bounded by max_pending, whatever arrives.
class PendingPeers {
 public:
  explicit PendingPeers(const PeerConfig& limits) : limits_(limits) {}

  // Records connection `id` from `source`, due to finish by now + handshake; or returns
  // why it may not wait (and records nothing).
  std::optional<PeerRefusal> Admit(int id, const std::string& source, int64_t now_ms);
  // Forgets `id` (authenticated, refused or closed); unknown ids are ignored.
  void Remove(int id);
  // The connections whose deadline has passed at now_ms.
  std::vector<int> Expired(int64_t now_ms) const;
  // The earliest deadline, if any connection waits.
  std::optional<int64_t> NextDeadline() const;

  size_t size() const { return entries_.size(); }
  int From(const std::string& source) const;

 private:
  struct Entry {
    std::string source;
    int64_t deadline_ms;
  };
  PeerConfig limits_;
  std::map<int, Entry> entries_;
  std::map<std::string, int> per_source_;        // only sources with a pending connection
  std::set<std::pair<int64_t, int>> deadlines_;  // (deadline, id)
};

// Refusals are counted by reason and logged at most once per interval, so that a flood
// of strangers costs a counter increment each and one log line per interval. The first
// refusal after a quiet interval is logged at once.
class RefusalLog {
 public:
  explicit RefusalLog(int64_t interval_ms = 10'000) : interval_ms_(interval_ms) {}

  // Counts one refusal; `detail` ("ADDRESS: why") is kept for the next line.
  void Count(PeerRefusal reason, std::string detail);
  // The line to log at now_ms, if one is due: the latest refusal's detail and the
  // counts by reason since the last line.
  std::optional<std::string> Take(int64_t now_ms);
  // When Take will next return a line, if refusals wait to be reported.
  std::optional<int64_t> NextLine() const;

  uint64_t total(PeerRefusal reason) const { return totals_[static_cast<size_t>(reason)]; }

 private:
  int64_t interval_ms_;
  std::optional<int64_t> logged_at_ms_;
  std::array<uint64_t, static_cast<size_t>(PeerRefusal::kCount)> unreported_{};
  std::array<uint64_t, static_cast<size_t>(PeerRefusal::kCount)> totals_{};
  std::string last_detail_;
};

}  // namespace homeward
