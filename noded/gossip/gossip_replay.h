// Replay protection for gossip: every datagram carries its sender's stamp (microseconds
// of the sender's wall clock, strictly increasing within one life of the daemon) in its
// authenticated header. A receiver accepts a datagram only if the stamp is within the
// window of its own clock and (incarnation, stamp) is newer than anything it accepted
// from that sender, so a recorded datagram sent again, seconds or days later, is
// dropped. Pure logic with time passed in.
#pragma once

#include <cstdint>
#include <string>
#include <unordered_map>

namespace homeward {

// A peer whose clock is further than this from ours is worth a warning (mosctl check, and
// the daemon's log): a job that moves between the two sees its wall clock jump.
constexpr int64_t kClockWarnMs = 500;

// Makes the stamps one daemon puts on its datagrams.
class StampClock {
 public:
  // The stamp for a datagram sent at now_us (wall clock): now_us, or one more than the
  // previous stamp if the clock has not moved on (or went back).
  uint64_t Next(uint64_t now_us);

 private:
  uint64_t last_ = 0;
};

class ReplayGuard {
 public:
  enum class Verdict { kFresh, kStale, kReplayed };

  // window_ms: how far a stamp may be from this node's clock, either way (clock skew
  // between nodes plus transit). max_senders bounds the table; the least recently
  // heard sender is forgotten first, and the window alone then guards against its
  // replays.
  explicit ReplayGuard(int64_t window_ms, size_t max_senders = 4096)
      : window_us_(window_ms * 1000), max_senders_(max_senders) {}

  // Checks a datagram that passed its MAC; remembers it when fresh.
  Verdict Check(const std::string& sender, uint64_t incarnation, uint64_t stamp_us,
                uint64_t now_us);

  size_t size() const { return senders_.size(); }

 private:
  struct Last {
    uint64_t incarnation;
    uint64_t stamp_us;
    uint64_t heard_us;  // for eviction
  };
  void EvictOne();

  int64_t window_us_;
  size_t max_senders_;
  std::unordered_map<std::string, Last> senders_;
};

}  // namespace homeward
