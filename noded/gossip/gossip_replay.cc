// Gossip replay protection: stamps and the per-sender high-water marks.
#include "gossip_replay.h"

#include <algorithm>

namespace homeward {

uint64_t StampClock::Next(uint64_t now_us) {
  last_ = std::max(now_us, last_ + 1);
  return last_;
}

ReplayGuard::Verdict ReplayGuard::Check(const std::string& sender, uint64_t incarnation,
                                        uint64_t stamp_us, uint64_t now_us) {
  uint64_t window = static_cast<uint64_t>(window_us_);
  if (stamp_us + window < now_us || stamp_us > now_us + window) return Verdict::kStale;
  auto it = senders_.find(sender);
  if (it != senders_.end()) {
    Last& last = it->second;
    // A new life (or a refutation) raises the incarnation; within one, stamps rise.
    // Anything not strictly newer was accepted before, or was overtaken: either way it
    // tells nothing new, and a replay must not be answered.
    if (incarnation < last.incarnation ||
        (incarnation == last.incarnation && stamp_us <= last.stamp_us)) {
      return Verdict::kReplayed;
    }
    last = Last{incarnation, stamp_us, now_us};
    return Verdict::kFresh;
  }
  if (senders_.size() >= max_senders_) EvictOne();
  senders_.emplace(sender, Last{incarnation, stamp_us, now_us});
  return Verdict::kFresh;
}

void ReplayGuard::EvictOne() {
  auto oldest = std::min_element(
      senders_.begin(), senders_.end(),
      [](const auto& a, const auto& b) { return a.second.heard_us < b.second.heard_us; });
  if (oldest != senders_.end()) senders_.erase(oldest);
}

}  // namespace homeward
