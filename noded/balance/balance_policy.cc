// The placement and load-balancing policy: BestNode for new jobs, and the Balancer's
// rounds (memory ushering, guests going home for their I/O, load moves).
#include "balance_policy.h"

#include <algorithm>
#include <cmath>
#include <functional>
#include <set>

namespace homeward::balance {

namespace {

// Shares this close are equal: ties are settled by the rules, not by rounding.
constexpr double kTie = 1e-9;
// Forced departures: a node counts as wanted by work of higher precedence when half a
// runnable process or more of it waits beyond the cores, and a target has room when the
// guest fits there with a quarter process to spare (published loads are noisy).
constexpr double kMinHigherWork = 0.5;
constexpr double kRoomSlack = 0.25;
// An adjustment whose weight has fallen below this (in processes) is forgotten.
constexpr double kNegligibleLoad = 0.02;
// A node's published free memory shows a move this long after the move.
constexpr int64_t kMemorySettleMs = 2000;
// Records older than this are not trusted to show anything (gossip keeps them fresher).
constexpr int64_t kMaxRecordAgeMs = 30000;

// The picture one round works on: adjusted for this node's recent moves, then for the
// moves decided earlier in the same round, so a second decision sees the first.
struct Working {
  std::vector<Node> nodes;
  size_t self = 0;
  std::set<uint64_t> decided;
  std::vector<Decision> decisions;

  Node& here() { return nodes[self]; }
  void Decide(const Job& job, size_t target, const char* reason) {
    Node& from = nodes[self];
    Node& to = nodes[target];
    decisions.push_back({job.id, to.name, reason, job.memory_mb, job.demand, from.load, to.load});
    from.load = std::max(0.0, from.load - job.demand);
    to.load += job.demand;
    from.mem_free_mb += job.memory_mb;
    to.mem_free_mb -= std::min(to.mem_free_mb, job.memory_mb);
    decided.insert(job.id);
  }
};

std::optional<size_t> IndexOf(const std::vector<Node>& nodes, const std::string& name) {
  for (size_t i = 0; i < nodes.size(); ++i) {
    if (nodes[i].name == name) return i;
  }
  return std::nullopt;
}

// Whether `node` may take `job` at all: a blocked node still takes back its own jobs.
bool Admits(const Node& node, const Job& job) {
  if (!node.cluster.empty() && node.cluster == job.home_cluster) {
    // A partner's guest goes back to its own cluster at its home only, which alone
    // knows it sent the job away (partner_services.h, PartnerMayMoveIn).
    return node.name == job.home;
  }
  if (!node.cluster.empty()) {
    // Another cluster's node: this cluster's jobs that may leave it, to a partner that
    // takes them.
    return job.home_cluster.empty() && job.partners && node.accepts_guests;
  }
  return node.accepts_guests || node.name == job.home;
}

// A node of the cluster this node is in (where jobs go first).
bool OwnCluster(const Node& node) {
  return node.cluster.empty();
}

bool InGroup(const std::vector<std::string>& groups, const std::string& group) {
  return std::find(groups.begin(), groups.end(), group) != groups.end();
}

// A node of a sub-cluster the user (of `groups`) is not in.
bool OfAnotherGroup(const Node& node, const std::vector<std::string>& groups) {
  return !node.group.empty() && !InGroup(groups, node.group);
}

// Where `job` would rather go, best first: 0, a node of this cluster where it would be of
// the node's own work; 1, one where it would rank below it (another group's node, a node
// for short jobs once the job has run long); 2, a partner cluster's node.
int Tier(const Node& node, const Job& job) {
  if (!OwnCluster(node)) return 2;
  bool other_group = OfAnotherGroup(node, job.groups);
  bool long_there = node.long_job_after_ms > 0 && job.run_ms >= node.long_job_after_ms;
  return other_group || long_there ? 1 : 0;
}

// What moving `job` costs, in milliseconds of the job's time: it is frozen meanwhile.
double MoveCostMs(const Job& job, const Options& options) {
  return options.move_overhead_ms + job.memory_mb / options.bandwidth_mb_per_s * 1000.0;
}

}  // namespace

int JobPrecedence(const PrecedenceRules& rules, bool guest, int partner_priority,
                  const std::vector<std::string>& groups, int64_t run_ms) {
  if (!guest) return 0;
  int precedence = std::max(partner_priority, 0);
  if (!rules.group.empty() && !InGroup(groups, rules.group)) {
    precedence = std::max(precedence, rules.others);
  }
  if (rules.long_job_after_ms > 0 && run_ms >= rules.long_job_after_ms) {
    precedence = std::max(precedence, rules.long_job);
  }
  return precedence;
}

double ExpectedShare(const Node& node, double added) {
  double runnable = node.load + added;
  double fraction = runnable > 0 ? std::min(1.0, node.cores / runnable) : 1.0;
  return node.speed * fraction;
}

std::optional<std::string> BestNode(const std::vector<Node>& nodes, const std::string& self,
                                    uint32_t min_free_mb,
                                    const std::vector<std::string>& user_groups) {
  const Node* best = nullptr;
  double best_share = 0;
  for (int pass = 0; pass < 2 && (!best || best_share < best->speed - kTie); ++pass) {
    for (const Node& node : nodes) {
      if (node.mem_free_mb < min_free_mb) continue;
      if (!node.accepts_guests && node.name != self) continue;
      // The user's own nodes first (its home among them).
      if (pass == 0 && node.name != self && OfAnotherGroup(node, user_groups)) continue;
      double share = ExpectedShare(node, 1);
      bool better = !best || share > best_share + kTie ||
                    (share > best_share - kTie && node.name == self && best->name != self);
      if (better) {
        best = &node;
        best_share = share;
      }
    }
  }
  if (!best) return std::nullopt;
  return best->name;
}

Balancer::Balancer(std::string self, Options options, uint64_t random_seed)
    : self_(std::move(self)), options_(options), random_(random_seed) {}

std::vector<Node> Balancer::Adjusted(int64_t now_ms, const std::vector<Node>& nodes) {
  double tau = static_cast<double>(std::max<int64_t>(1, options_.load_time_constant_ms));
  std::erase_if(adjustments_, [&](const Adjustment& a) {
    int64_t since = now_ms - a.at_ms;
    return std::abs(a.load) * std::exp(-static_cast<double>(since) / tau) < kNegligibleLoad &&
           since > kMemorySettleMs + kMaxRecordAgeMs;
  });
  std::vector<Node> picture = nodes;
  std::vector<double> added(picture.size(), 0.0);
  std::vector<int64_t> memory(picture.size(), 0);
  std::vector<double> added_now(picture.size(), 0.0);
  for (const Adjustment& a : adjustments_) {
    auto at = IndexOf(picture, a.node);
    if (!at) continue;
    // Information measured before the move does not show it at all. A rise shows in full
    // once it has lasted two samples (NodeMetrics publishes the recent count when it is
    // higher); of a fall, the published EWMA has caught up all but exp(-elapsed / tau).
    int64_t elapsed = now_ms - picture[*at].age_ms - a.at_ms;
    bool rise = a.load > 0 && options_.rises_published;
    if (elapsed <= (rise ? options_.rise_shows_ms : 0)) {
      added[*at] += a.load;
    } else if (!rise) {
      added[*at] += a.load * std::exp(-static_cast<double>(elapsed) / tau);
    }
    // Free memory is measured, not smoothed: it shows a move once the images written
    // and read on the way are gone too.
    if (elapsed <= kMemorySettleMs) memory[*at] += a.memory_mb;
    // A node's recent count shows a fall from the first sample after it, a rise once two
    // samples have seen it.
    if (elapsed <= (a.load > 0 ? options_.rise_shows_ms : 0)) added_now[*at] += a.load;
  }
  for (size_t i = 0; i < picture.size(); ++i) {
    picture[i].load = std::max(0.0, picture[i].load + added[i]);
    // A node that knows its recent count needs no model of its own falls: the average, as
    // adjusted, or the recent count (as adjusted for moves it has not seen yet) when that
    // is higher, as it would publish it.
    if (picture[i].runnable_now >= 0) {
      picture[i].load =
          std::max(picture[i].load, std::max(0.0, picture[i].runnable_now + added_now[i]));
    }
    picture[i].mem_free_mb =
        static_cast<uint32_t>(std::max<int64_t>(0, picture[i].mem_free_mb + memory[i]));
  }
  return picture;
}

namespace {

bool Avoided(const std::map<std::string, int64_t>& avoid, const std::string& name) {
  return avoid.count(name) != 0;
}

// The node `job` would get the most CPU on among those that admit it and `fits`, of the
// best tier there is (Tier: a partner's only when none of this cluster's will do).
std::optional<size_t> BestTarget(const Working& w, const Job& job,
                                 const std::map<std::string, int64_t>& avoid,
                                 const std::function<bool(const Node&)>& fits) {
  std::optional<size_t> target;
  double target_share = 0;
  for (size_t i = 0; i < w.nodes.size(); ++i) {
    const Node& node = w.nodes[i];
    if (i == w.self || !Admits(node, job) || Avoided(avoid, node.name) || !fits(node)) continue;
    double share = ExpectedShare(node, job.demand);
    int tier = Tier(node, job);
    if (target && tier != Tier(w.nodes[*target], job)) {
      if (tier > Tier(w.nodes[*target], job)) continue;
      target.reset();
    }
    if (!target || share > target_share + kTie) {
      target = i;
      target_share = share;
    }
  }
  return target;
}

// Memory ushering: this node is short of memory, so one job goes where it fits with room
// to spare, to the node there with the most CPU for it. The job chosen is the smallest
// that covers the shortage, or else the largest that fits anywhere.
void Usher(Working& w, const std::vector<Job>& jobs, const Options& options,
           const std::map<std::string, int64_t>& avoid) {
  if (w.here().mem_free_mb >= options.usher_free_mb) return;
  uint32_t shortage = options.usher_free_mb - w.here().mem_free_mb;
  const Job* chosen = nullptr;
  size_t chosen_target = 0;
  for (const Job& job : jobs) {
    if (job.memory_mb == 0 || w.decided.count(job.id)) continue;
    auto target = BestTarget(w, job, avoid, [&](const Node& node) {
      return node.mem_free_mb >= static_cast<uint64_t>(job.memory_mb) + options.usher_free_mb &&
             node.mem_free_mb >= job.min_free_mb;
    });
    if (!target) continue;
    bool better = false;
    if (!chosen) {
      better = true;
    } else {
      bool covers = job.memory_mb >= shortage, chosen_covers = chosen->memory_mb >= shortage;
      if (covers != chosen_covers) {
        better = covers;
      } else {
        better = covers ? job.memory_mb < chosen->memory_mb : job.memory_mb > chosen->memory_mb;
      }
    }
    if (better) {
      chosen = &job;
      chosen_target = *target;
    }
  }
  if (chosen) w.Decide(*chosen, chosen_target, "memory");
}

// Forced departure: the guest of lowest precedence (a partner's, another group's, a long
// job on a node for short ones) leaves a node whose cores are wanted by work of higher
// precedence.
void ForceOut(Working& w, const std::vector<Job>& jobs, const std::map<std::string, int64_t>& avoid) {
  const Node& here = w.here();
  if (here.load < here.cores + kMinHigherWork) return;
  const Job* worst = nullptr;
  for (const Job& job : jobs) {
    if (job.priority > 0 && !w.decided.count(job.id) && (!worst || job.priority > worst->priority)) {
      worst = &job;
    }
  }
  if (!worst) return;
  double lower = 0;  // what runs here of the worst guest's precedence or less
  for (const Job& job : jobs) {
    if (job.priority >= worst->priority) lower += job.demand;
  }
  // Work of higher precedence waits when the cores cannot hold it beside these guests.
  if (here.load - lower < kMinHigherWork) return;
  // A node with room for it; failing one, its home.
  auto target = BestTarget(w, *worst, avoid, [&](const Node& node) {
    return node.mem_free_mb >= std::max(worst->memory_mb, worst->min_free_mb) &&
           node.load + worst->demand <= node.cores + kRoomSlack;
  });
  if (!target) {
    target = IndexOf(w.nodes, worst->home);
    if (target && (*target == w.self || Avoided(avoid, worst->home))) target.reset();
  }
  if (target) w.Decide(*worst, *target, "priority");
}

// A guest that mostly talks to its home and hardly computes goes home: there its file
// and terminal traffic is local. The busiest talker first.
void SendHome(Working& w, const std::vector<Job>& jobs, const Options& options,
              const std::map<std::string, int64_t>& avoid) {
  const Job* chosen = nullptr;
  size_t home = 0;
  for (const Job& job : jobs) {
    if (!job.guest || w.decided.count(job.id)) continue;
    if (job.home_io_bytes_per_s < options.home_io_bytes_per_s ||
        job.cpu_use >= options.home_io_max_cpu || job.resident_ms < options.min_residency_ms) {
      continue;
    }
    auto at = IndexOf(w.nodes, job.home);
    if (!at || *at == w.self || Avoided(avoid, job.home)) continue;
    if (w.nodes[*at].mem_free_mb < job.memory_mb) continue;
    if (!chosen || job.home_io_bytes_per_s > chosen->home_io_bytes_per_s) {
      chosen = &job;
      home = *at;
    }
  }
  if (chosen) w.Decide(*chosen, home, "home I/O");
}

}  // namespace

std::vector<Decision> Balancer::Round(int64_t now_ms, const std::vector<Node>& nodes,
                                      const std::vector<Job>& jobs) {
  std::erase_if(avoid_until_ms_, [&](const auto& entry) { return entry.second <= now_ms; });
  Working w;
  w.nodes = Adjusted(now_ms, nodes);
  auto self = IndexOf(w.nodes, self_);
  if (!self) return {};
  w.self = *self;

  ForceOut(w, jobs, avoid_until_ms_);
  // Jobs started with mosrun -L only leave when forced out.
  std::vector<Job> free_jobs;
  for (const Job& job : jobs) {
    if (!job.locked) free_jobs.push_back(job);
  }
  Usher(w, free_jobs, options_, avoid_until_ms_);
  SendHome(w, free_jobs, options_, avoid_until_ms_);

  // Load: each move takes the job with the best gain for its cost, to a target drawn
  // among the good ones with odds in proportion to their gain.
  struct Candidate {
    size_t target = 0;
    double gain_ms = 0;
  };
  std::vector<Candidate> candidates, best_candidates;
  for (int move = 0; move < options_.max_moves_per_round; ++move) {
    double here = ExpectedShare(w.here(), 0);
    const Job* best_job = nullptr;
    double best_ratio = 0;
    for (const Job& job : free_jobs) {
      if (w.decided.count(job.id) || job.resident_ms < options_.min_residency_ms ||
          job.demand < options_.min_demand) {
        continue;
      }
      double cost_ms = MoveCostMs(job, options_);
      uint64_t needed = std::max(job.memory_mb, job.min_free_mb) + uint64_t{options_.usher_free_mb};
      candidates.clear();
      double ratio = 0;
      for (size_t i = 0; i < w.nodes.size(); ++i) {
        const Node& node = w.nodes[i];
        if (i == w.self || !Admits(node, job) || Avoided(avoid_until_ms_, node.name)) continue;
        if (node.mem_free_mb < needed) continue;
        double there = ExpectedShare(node, job.demand);
        if (there <= here * (1 + options_.hysteresis)) continue;
        // The job has as long to go as it has run; here that much time buys `here`, there
        // the same work takes here/there of it.
        double gain_ms = static_cast<double>(job.run_ms) * (1 - here / there);
        if (gain_ms <= options_.cost_factor * cost_ms) continue;
        candidates.push_back({i, gain_ms});
      }
      // Only the best tier's (Tier): another cluster's nodes only when none of this
      // cluster's would do, and nodes where the job would rank low only when no other would.
      int best_tier = 2;
      for (const Candidate& c : candidates) best_tier = std::min(best_tier, Tier(w.nodes[c.target], job));
      std::erase_if(candidates, [&](const Candidate& c) { return Tier(w.nodes[c.target], job) > best_tier; });
      for (const Candidate& c : candidates) ratio = std::max(ratio, c.gain_ms / cost_ms);
      if (!candidates.empty() && (!best_job || ratio > best_ratio)) {
        best_job = &job;
        best_ratio = ratio;
        std::swap(candidates, best_candidates);
      }
    }
    if (!best_job) break;
    double total = 0;
    for (const Candidate& c : best_candidates) total += c.gain_ms;
    double draw = std::uniform_real_distribution<double>(0, total)(random_);
    size_t target = best_candidates.back().target;
    for (const Candidate& c : best_candidates) {
      if (draw < c.gain_ms) {
        target = c.target;
        break;
      }
      draw -= c.gain_ms;
    }
    w.Decide(*best_job, target, "load");
  }
  return std::move(w.decisions);
}

void Balancer::Moved(const Decision& decision, double demand, int64_t now_ms) {
  int64_t memory = decision.memory_mb;
  adjustments_.push_back({self_, -demand, memory, now_ms});
  adjustments_.push_back({decision.target, demand, -memory, now_ms});
}

void Balancer::Placed(const std::string& node, double demand, int64_t now_ms) {
  adjustments_.push_back({node, demand, 0, now_ms});
}

void Balancer::Refused(const Decision& decision, int64_t now_ms) {
  avoid_until_ms_[decision.target] = now_ms + options_.refused_avoid_ms;
}

void Balancer::Arrived(double demand, int64_t now_ms) {
  adjustments_.push_back({self_, demand, 0, now_ms});
}

}  // namespace homeward::balance
