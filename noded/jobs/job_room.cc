// Room at home for a node that left the cluster (mosctl leave). Its guests went and its
// jobs came home, where there may be fewer cores than jobs: those brought home last are
// frozen to disk (as mosmigrate freeze does), and continued one at a time as cores come
// free, so that the home is never overloaded and no long-running job is killed.
#include <spdlog/spdlog.h>

#include <algorithm>
#include <thread>

#include "job_registry.h"

namespace homeward {

uint32_t JobRegistry::RunningHere() const {
  auto running = static_cast<uint32_t>(guests_.size());
  for (const auto& [slot, entry] : jobs_) {
    if (entry.here) ++running;
  }
  return running;
}

uint32_t JobRegistry::CoresHere() const {
  // As gossip publishes them (the node's cpuset), else the machine's.
  for (const auto& node : picture_()) {
    if (node.name == config_.name && node.cores > 0) return node.cores;
  }
  return std::max(1u, std::thread::hardware_concurrency());
}

void JobRegistry::KeepRoom() {
  std::erase_if(brought_home_, [this](int slot) {
    auto it = jobs_.find(slot);
    return it == jobs_.end() || !it->second.here;
  });
  if (room_busy_) return;
  // Most ticks have nothing to keep: the node is in its cluster and no job waits.
  bool waiting = std::any_of(jobs_.begin(), jobs_.end(), [](const auto& slot_entry) {
    const auto& away = slot_entry.second.away;
    return away && away->frozen && away->frozen->waits_for_room;
  });
  if (!left_ && !waiting) return;
  uint32_t running = RunningHere(), cores = CoresHere();
  if (left_ && running > cores) {
    // The job brought home last that can be frozen now (running, its output in order).
    for (auto last = brought_home_.rbegin(); last != brought_home_.rend(); ++last) {
      int slot = *last;
      std::shared_ptr<Job> job = jobs_[slot].here;
      if (job->state() != JobState::RUNNING || job->output_held()) continue;
      spdlog::info("job {} came home to no room ({} jobs run here on {} cores): freezing it "
                   "until there is",
                   job->home_pid(), running, cores);
      room_busy_ = true;
      brought_home_.erase(slot);
      auto frozen = [this](const MoveOutcome& outcome) {
        room_busy_ = false;
        if (!outcome.error.empty()) spdlog::warn("{}", outcome.error);
      };
      try {
        Freeze(slot, job, frozen, /*waits_for_room=*/true);
      } catch (const Error& e) {
        room_busy_ = false;
        spdlog::warn("job {} runs on: cannot freeze it: {}", job->home_pid(), e.what());
      }
      return;
    }
    return;
  }
  if (running >= cores) return;
  for (auto& [slot, entry] : jobs_) {
    if (!entry.away || !entry.away->frozen || !entry.away->frozen->waits_for_room) continue;
    spdlog::info("job {} continues: a core is free here ({} jobs run on {} cores)",
                 entry.away->home_pid(), running, cores);
    room_busy_ = true;
    auto away = entry.away;
    try {
      Continue(slot, away, [this, away](const MoveOutcome& outcome) {
        room_busy_ = false;
        if (!outcome.error.empty()) spdlog::warn("{}", outcome.error);
      });
    } catch (const Error& e) {
      room_busy_ = false;
      spdlog::warn("job {} stays frozen: {}", away->home_pid(), e.what());
    }
    return;
  }
}

}  // namespace homeward
