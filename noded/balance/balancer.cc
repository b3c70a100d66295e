// The balancing rounds of a node.
#include "balancer.h"

#include <unistd.h>

#include <chrono>

#include <spdlog/spdlog.h>

#include "c_boundary.h"
#include "uv_error.h"

namespace homeward {

std::vector<balance::Node> PolicyNodes(const std::vector<MemberView>& picture,
                                       const std::string& own_cluster) {
  std::vector<balance::Node> nodes;
  for (const MemberView& view : picture) {
    if (view.state != MemberState::kAlive) continue;
    const NodeRecord& record = view.record;
    balance::Node node;
    node.name = record.name;
    node.cores = record.cores;
    node.speed = record.speed;
    node.load = record.load;
    node.mem_free_mb = record.mem_free_mb;
    node.mem_total_mb = record.mem_total_mb;
    node.accepts_guests = !record.blocked;
    node.age_ms = view.age_ms;
    node.group = record.group;
    node.long_job_after_ms = int64_t{record.long_job_after_s} * 1000;
    // Empty for this cluster's own (as older releases publish it).
    if (record.cluster != own_cluster) node.cluster = record.cluster;
    nodes.push_back(std::move(node));
  }
  return nodes;
}

balance::Options PolicyOptions(const NodeConfig& config) {
  balance::Options options;
  options.hysteresis = config.balance.hysteresis_percent / 100.0;
  options.min_residency_ms = config.balance.min_residency.count();
  options.usher_free_mb = config.balance.usher_free_mb;
  // NodeMetrics samples once per gossip round and publishes a rise after two samples.
  options.rise_shows_ms = 2 * config.gossip.interval.count();
  return options;
}

Balancer::Balancer(uv_loop_t* loop, const NodeConfig& config, Gossip& gossip, JobRegistry& jobs)
    : loop_(loop),
      config_(config),
      gossip_(gossip),
      jobs_(jobs),
      policy_(config.name, PolicyOptions(config),
              static_cast<uint64_t>(::getpid()) ^ std::hash<std::string>()(config.name)) {}

void Balancer::Start() {
  jobs_.OnArrival([this] { policy_.Arrived(1.0, static_cast<int64_t>(uv_now(loop_))); });
  jobs_.OnPlaced([this](const std::string& node) {
    policy_.Placed(node, 1.0, static_cast<int64_t>(uv_now(loop_)));
  });
  CheckUv(uv_timer_init(loop_, timer_.get()), "balancer timer");
  timer_.get()->data = this;
  auto interval = static_cast<uint64_t>(config_.balance.interval.count());
  CheckUv(uv_timer_start(
              timer_.get(),
              [](uv_timer_t* timer) {
                GuardedCall("balancer round",
                            [timer] { static_cast<Balancer*>(timer->data)->Round(); });
              },
              interval, interval),
          "balancer timer");
  spdlog::info("balancer: a round every {} ms, automatic moves {}", interval,
               config_.balance.automatic ? "on" : "off");
}

std::vector<balance::Node> Balancer::Nodes() const {
  std::vector<balance::Node> nodes = PolicyNodes(gossip_.Picture(), config_.cluster);
  for (balance::Node& node : nodes) {
    if (node.name != config_.name) continue;
    const NodeMetrics& metrics = gossip_.metrics();
    node.load = metrics.smoothed_load();
    node.runnable_now = metrics.runnable_now();
    node.age_ms = std::chrono::duration_cast<std::chrono::milliseconds>(
                      std::chrono::steady_clock::now() - metrics.sampled_at())
                      .count();
  }
  return nodes;
}

std::vector<balance::Node> Balancer::Picture() {
  return policy_.Adjusted(static_cast<int64_t>(uv_now(loop_)), Nodes());
}

void Balancer::Stop() {
  *alive_ = false;
  timer_.Close();
}

// Runs inside a libuv callback: nothing may throw out of it.
void Balancer::Round() {
  try {
    int64_t now = static_cast<int64_t>(uv_now(loop_));
    std::vector<balance::Job> movable = jobs_.MovableJobs(now);
    // One round's moves at a time: the next round sees what they did.
    if (!config_.balance.automatic || moving_ > 0 || movable.empty()) return;
    // The partners' nodes too: where jobs that may leave the cluster go when it is busy,
    // and where partners' guests go back to.
    std::vector<balance::Node> nodes = Nodes();
    for (balance::Node& node : PolicyNodes(gossip_.PartnerPicture(), config_.cluster)) {
      nodes.push_back(std::move(node));
    }
    for (const balance::Decision& decision : policy_.Round(now, nodes, movable)) {
      double demand = std::max(decision.demand, 0.1);
      spdlog::info("balancer: {} move to {} (load here {:.2f}, there {:.2f})", decision.reason,
                   decision.target, decision.load_here, decision.load_there);
      ++moving_;
      jobs_.MoveAutomatically(decision.job, decision.target,
                              [this, alive = alive_, decision, demand](const MoveOutcome& outcome) {
                                if (!*alive) return;
                                --moving_;
                                int64_t at = static_cast<int64_t>(uv_now(loop_));
                                if (outcome.error.empty()) {
                                  policy_.Moved(decision, demand, at);
                                } else {
                                  spdlog::warn("balancer: move to {} did not happen: {}",
                                               decision.target, outcome.error);
                                  policy_.Refused(decision, at);
                                }
                              });
    }
  } catch (const std::exception& e) {
    spdlog::error("balancer round failed: {}", e.what());
  }
}

}  // namespace homeward
