// Pending peer connections' limits and deadlines, and the rate-limited refusal log.
#include "peer_admission.h"

#include <fmt/format.h>

namespace homeward {

const char* PeerRefusalName(PeerRefusal reason) {
  switch (reason) {
    case PeerRefusal::kSourceFull:
      return "over the limit for their address";
    case PeerRefusal::kAllFull:
      return "over the limit of pending handshakes";
    case PeerRefusal::kTimedOut:
      return "handshake timed out";
    case PeerRefusal::kHandshake:
      return "failed handshake";
    case PeerRefusal::kClosed:
      return "closed during the handshake";
    case PeerRefusal::kUnknownService:
      return "unknown service";
    case PeerRefusal::kNotForCluster:
      return "service not for its cluster";
    case PeerRefusal::kNoResources:
      return "out of resources";
    case PeerRefusal::kCount:
      break;
  }
  return "?";
}

std::optional<PeerRefusal> PendingPeers::Admit(int id, const std::string& source, int64_t now_ms) {
  if (entries_.contains(id)) Remove(id);  // a reused descriptor: the old one is gone
  if (static_cast<int>(entries_.size()) >= limits_.max_pending) return PeerRefusal::kAllFull;
  auto count = per_source_.find(source);
  if (count != per_source_.end() && count->second >= limits_.max_pending_per_source) {
    return PeerRefusal::kSourceFull;
  }
  int64_t deadline = now_ms + limits_.handshake.count();
  entries_.emplace(id, Entry{source, deadline});
  ++per_source_[source];
  deadlines_.emplace(deadline, id);
  return std::nullopt;
}

void PendingPeers::Remove(int id) {
  auto it = entries_.find(id);
  if (it == entries_.end()) return;
  auto count = per_source_.find(it->second.source);
  if (--count->second == 0) per_source_.erase(count);
  deadlines_.erase({it->second.deadline_ms, id});
  entries_.erase(it);
}

std::vector<int> PendingPeers::Expired(int64_t now_ms) const {
  std::vector<int> expired;
  for (const auto& [deadline, id] : deadlines_) {
    if (deadline > now_ms) break;
    expired.push_back(id);
  }
  return expired;
}

std::optional<int64_t> PendingPeers::NextDeadline() const {
  if (deadlines_.empty()) return std::nullopt;
  return deadlines_.begin()->first;
}

int PendingPeers::From(const std::string& source) const {
  auto it = per_source_.find(source);
  return it == per_source_.end() ? 0 : it->second;
}

void RefusalLog::Count(PeerRefusal reason, std::string detail) {
  ++unreported_[static_cast<size_t>(reason)];
  ++totals_[static_cast<size_t>(reason)];
  last_detail_ = std::move(detail);
}

std::optional<int64_t> RefusalLog::NextLine() const {
  uint64_t waiting = 0;
  for (uint64_t n : unreported_) waiting += n;
  if (waiting == 0) return std::nullopt;
  if (!logged_at_ms_) return INT64_MIN;
  return *logged_at_ms_ + interval_ms_;
}

std::optional<std::string> RefusalLog::Take(int64_t now_ms) {
  auto due = NextLine();
  if (!due || *due > now_ms) return std::nullopt;
  uint64_t count = 0;
  std::string reasons;
  for (size_t i = 0; i < unreported_.size(); ++i) {
    if (unreported_[i] == 0) continue;
    count += unreported_[i];
    if (!reasons.empty()) reasons += ", ";
    reasons += fmt::format("{} {}", unreported_[i], PeerRefusalName(static_cast<PeerRefusal>(i)));
  }
  unreported_.fill(0);
  logged_at_ms_ = now_ms;
  return fmt::format("refused peer {} ({} refused since the last report: {})", last_detail_, count,
                     reasons);
}

}  // namespace homeward
