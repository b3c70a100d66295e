// gossip_sim: runs the daemon's own Membership code for thousands of simulated nodes in
// one process, with virtual time and a lossy virtual network, and prints how fresh the
// information stays and how fast changes spread, beside log2(N). With --cluster-size the
// nodes form a multi-cluster of clusters that size in one ring: each node keeps its own
// cluster whole and a bounded partial view of the others.
#include <chrono>
#include <cmath>
#include <cstdio>
#include <deque>
#include <functional>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include <unistd.h>

#include <fmt/format.h>
#include <CLI/CLI.hpp>

#include "gossip_codec.h"
#include "membership.h"

namespace homeward {
namespace {

struct Params {
  std::vector<int> sizes{1000, 10000};
  double loss = 0.05;
  int window = 16;
  size_t capacity = 1000;
  size_t foreign_capacity = 256;
  int cluster_size = 0;  // 0: one cluster of all
  int warmup_rounds = 40;
  int max_rounds = 120;
  bool wire = false;
  uint64_t seed = 1;
};

std::string Address(int i) {
  return fmt::format("10.{}.{}.{}", (i >> 16) & 255, (i >> 8) & 255, i & 255);
}

int IndexOf(const std::string& host) {
  int a, b, c, d;
  if (std::sscanf(host.c_str(), "%d.%d.%d.%d", &a, &b, &c, &d) != 4) return -1;
  return (b << 16) | (c << 8) | d;
}

struct Stats {
  double sum = 0;
  double max = 0;
  uint64_t count = 0;
  void Add(double value) {
    sum += value;
    max = std::max(max, value);
    ++count;
  }
  double mean() const { return count ? sum / static_cast<double>(count) : 0; }
};

// What a change is, as the receivers see it: a datagram carrying the watched node with
// the given property. Tracks who of the node's cluster has received it.
struct Watch {
  std::string name;
  int cluster = 0;  // whose nodes count
  std::function<bool(const NodeRecord&, MemberState)> matches;
  std::vector<char> reached;
  size_t count = 0;
  int start_round = 0;
  int first_round = -1;  // when the first node of the cluster received it
  int done_round = -1;
  bool active = false;
};

size_t ResidentBytes() {
  long pages = 0, resident = 0;
  if (FILE* f = std::fopen("/proc/self/statm", "r")) {
    if (std::fscanf(f, "%ld %ld", &pages, &resident) != 2) resident = 0;
    std::fclose(f);
  }
  return static_cast<size_t>(resident) * static_cast<size_t>(sysconf(_SC_PAGESIZE));
}

class Simulation {
 public:
  Simulation(int n, const Params& params)
      : n_(n),
        params_(params),
        random_(params.seed),
        up_(n, 1),
        codec_(std::vector<uint8_t>(32, 0x5a)) {
    MembershipOptions options;
    options.interval_ms = 1000;
    options.suspect_after_ms = 3000;
    options.dead_after_ms = 8000;
    options.window = params.window;
    options.capacity = std::min(params.capacity, static_cast<size_t>(n));
    options.foreign_capacity = params.foreign_capacity;
    cluster_size_ = params.cluster_size > 0 ? params.cluster_size : n;
    nodes_.reserve(n);
    for (int i = 0; i < n; ++i) {
      NodeRecord self;
      self.name = fmt::format("n{}", i);
      self.cluster = fmt::format("c{}", ClusterOf(i));
      self.address = Address(i);
      self.gossip_port = 4700;
      self.cores = 4;
      self.load = 0.5f;
      self.mem_total_mb = 16384;
      self.mem_free_mb = 8192;
      self.incarnation = 1;
      nodes_.push_back(std::make_unique<Membership>(self, options, params.seed * 1000003 + i));
      // A newcomer needs seeds: its cluster's first node, and node 0 for the others.
      int head = ClusterOf(i) * cluster_size_;
      if (i != head) nodes_.back()->AddSeed(Endpoint{Address(head), 4700});
      if (i != 0) nodes_.back()->AddSeed(Endpoint{Address(0), 4700});
      // A node declared dead (not merely evicted from a full table, or another cluster's
      // record forgotten unheard) is a verdict; a live one, a false death.
      nodes_.back()->SetChangeListener([this, i](const NodeRecord& peer, bool alive) {
        MemberView view;
        if (alive || !nodes_[static_cast<size_t>(i)]->Find(peer.name, now_, &view)) return;
        ++verdicts_;
        if (up_[static_cast<size_t>(IndexOf(peer.address))]) ++false_deaths_;
      });
    }
  }

  int ClusterOf(int i) const { return i / cluster_size_; }

  void Round() {
    ++round_;
    now_ += 1000;
    order_.resize(static_cast<size_t>(n_));
    for (int i = 0; i < n_; ++i) order_[static_cast<size_t>(i)] = i;
    std::shuffle(order_.begin(), order_.end(), random_);
    for (int i : order_) {
      if (!up_[static_cast<size_t>(i)]) continue;
      out_.clear();
      nodes_[static_cast<size_t>(i)]->Tick(now_, &out_);
      for (auto& o : out_) {
        Count(o.message);
        if (o.message.kind == GossipMessage::Kind::kPing) {
          const auto& entries = o.message.entries;
          for (size_t e = o.message.news; e < entries.size(); ++e) {
            window_age_.Add(entries[e].age_ms / 1000.0);
          }
        }
        queue_.push_back({i, std::move(o)});
      }
      Deliver();
    }
    for (auto* watch : {&change_, &idle_, &suspicion_, &death_}) {
      if (watch->active && watch->first_round < 0 && watch->count > 0) {
        watch->first_round = round_ - watch->start_round;
      }
      if (watch->active && watch->done_round < 0 &&
          watch->count * 100 >= Live(watch->cluster) * 99) {
        watch->done_round = round_ - watch->start_round;
      }
    }
  }

  // Live nodes of a cluster.
  size_t Live(int cluster) const {
    size_t live = 0;
    int end = std::min(n_, (cluster + 1) * cluster_size_);
    for (int i = cluster * cluster_size_; i < end; ++i) live += up_[static_cast<size_t>(i)];
    return live;
  }

  void StartWatch(Watch* watch, int node,
                  std::function<bool(const NodeRecord&, MemberState)> matches) {
    watch->name = fmt::format("n{}", node);
    watch->cluster = ClusterOf(node);
    watch->first_round = -1;
    watch->matches = std::move(matches);
    watch->reached.assign(static_cast<size_t>(n_), 0);
    watch->count = 0;
    watch->start_round = round_;
    watch->done_round = -1;
    watch->active = true;
  }

  // Age of every record each node holds (not only its window): grows with N / window.
  Stats PictureAge(int sample) {
    Stats stats;
    for (int k = 0; k < sample; ++k) {
      int i = static_cast<int>(random_() % static_cast<uint64_t>(n_));
      if (!up_[static_cast<size_t>(i)]) continue;
      for (const auto& view : nodes_[static_cast<size_t>(i)]->Picture(now_)) {
        if (!view.self && view.state != MemberState::kDead) stats.Add(view.age_ms / 1000.0);
      }
    }
    return stats;
  }

  int n_;
  Params params_;
  std::mt19937_64 random_;
  std::vector<std::unique_ptr<Membership>> nodes_;
  std::vector<char> up_;
  int round_ = 0;
  int64_t now_ = 0;
  Stats window_age_;
  uint64_t delivered_ = 0;
  uint64_t lost_ = 0;
  uint64_t false_deaths_ = 0;
  uint64_t verdicts_ = 0;
  uint64_t sent_ = 0;          // datagrams sent
  uint64_t sampled_ = 0;       // ... of which encoded to weigh them
  uint64_t sampled_bytes_ = 0;
  double bytes_per_node_ = 0;  // memory of one node's membership after warm-up
  int cluster_size_ = 0;
  Watch change_, idle_, suspicion_, death_;

 private:
  void Deliver() {
    std::bernoulli_distribution lose(params_.loss);
    while (!queue_.empty()) {
      auto [from, outgoing] = std::move(queue_.front());
      queue_.pop_front();
      int to = IndexOf(outgoing.to.host);
      if (to < 0 || to >= n_ || !up_[static_cast<size_t>(to)]) continue;
      if (lose(random_)) {
        ++lost_;
        continue;
      }
      ++delivered_;
      const GossipMessage* message = &outgoing.message;
      std::optional<GossipMessage> decoded;
      if (params_.wire) {  // through the real codec: encode, MAC, verify, decode
        decoded = codec_.Decode(codec_.Encode(outgoing.message), &drops_);
        if (!decoded) continue;
        message = &*decoded;
      }
      for (auto* watch : {&change_, &idle_, &suspicion_, &death_}) Observe(watch, *message, to);
      replies_.clear();
      nodes_[static_cast<size_t>(to)]->Receive(*message, Endpoint{Address(from), 4700}, now_,
                                               &replies_);
      for (auto& reply : replies_) {
        Count(reply.message);
        queue_.push_back({to, std::move(reply)});
      }
    }
  }

  // Weighs one datagram in 64 on the wire (header, MAC and all).
  void Count(const GossipMessage& message) {
    if (sent_++ % 64 != 0) return;
    ++sampled_;
    sampled_bytes_ += codec_.Encode(message).size();
  }

  void Observe(Watch* watch, const GossipMessage& message, int to) {
    if (!watch->active || watch->reached[static_cast<size_t>(to)] ||
        ClusterOf(to) != watch->cluster) {
      return;
    }
    bool hit =
        message.sender.name == watch->name && watch->matches(message.sender, MemberState::kAlive);
    for (const auto& entry : message.entries) {
      hit = hit || (entry.record.name == watch->name && watch->matches(entry.record, entry.state));
    }
    if (hit) {
      watch->reached[static_cast<size_t>(to)] = 1;
      ++watch->count;
    }
  }

  std::vector<int> order_;
  std::vector<Outgoing> out_;
  std::vector<Outgoing> replies_;
  std::deque<std::pair<int, Outgoing>> queue_;
  GossipCodec codec_;
  DropCounters drops_;
};

std::string Rounds(const Watch& watch, const Simulation& sim) {
  if (watch.done_round >= 0) return fmt::format("{}", watch.done_round);
  return fmt::format(">{} ({:.1f}%)", sim.round_ - watch.start_round,
                     100.0 * static_cast<double>(watch.count) /
                         static_cast<double>(sim.Live(watch.cluster)));
}

void RunSize(int n, const Params& params) {
  size_t resident_before = ResidentBytes();
  Simulation sim(n, params);
  auto start = std::chrono::steady_clock::now();
  for (int r = 0; r < params.warmup_rounds; ++r) {
    sim.Round();
    if (r % 10 == 9) std::fprintf(stderr, "  N=%d: warm-up round %d\n", n, r + 1);
  }
  size_t known_min = SIZE_MAX, known_sum = 0, foreign_sum = 0, own_min = SIZE_MAX;
  for (const auto& node : sim.nodes_) {
    known_min = std::min(known_min, node->known());
    own_min = std::min(own_min, node->known() - node->known_foreign());
    known_sum += node->known();
    foreign_sum += node->known_foreign();
  }
  // What one node's membership holds once the tables are full (the simulator's own
  // bookkeeping, a few bytes a node, included).
  sim.bytes_per_node_ = static_cast<double>(ResidentBytes() - resident_before) / n;
  sim.window_age_ = Stats{};
  uint64_t false_before = sim.false_deaths_, verdicts_before = sim.verdicts_;
  sim.sent_ = sim.sampled_ = sim.sampled_bytes_ = 0;
  int measured_from = sim.round_;

  // A node gets busy (news), a node goes idle (damped), a node dies.
  int busy = n / 3, idle = n / 2, victim = n - 1;
  sim.nodes_[static_cast<size_t>(busy)]->UpdateSelf([&] {
    NodeRecord r = sim.nodes_[static_cast<size_t>(busy)]->self();
    r.load = 3.0f;
    return r;
  }());
  sim.StartWatch(&sim.change_, busy,
                 [](const NodeRecord& r, MemberState) { return r.load >= 2.9f; });
  sim.nodes_[static_cast<size_t>(idle)]->UpdateSelf([&] {
    NodeRecord r = sim.nodes_[static_cast<size_t>(idle)]->self();
    r.load = 0.0f;
    return r;
  }());
  sim.StartWatch(&sim.idle_, idle,
                 [](const NodeRecord& r, MemberState) { return r.load <= 0.01f; });
  sim.up_[static_cast<size_t>(victim)] = 0;
  sim.StartWatch(&sim.suspicion_, victim,
                 [](const NodeRecord&, MemberState s) { return s != MemberState::kAlive; });
  sim.StartWatch(&sim.death_, victim,
                 [](const NodeRecord&, MemberState s) { return s == MemberState::kDead; });
  int rounds = 0;
  while (rounds < params.max_rounds &&
         (sim.change_.done_round < 0 || sim.death_.done_round < 0 || sim.idle_.done_round < 0)) {
    sim.Round();
    ++rounds;
  }
  Stats picture = sim.PictureAge(50);
  double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  double lost_share =
      100.0 * static_cast<double>(sim.lost_) / static_cast<double>(sim.lost_ + sim.delivered_);
  int cluster_size = std::min(n, params.cluster_size > 0 ? params.cluster_size : n);
  fmt::print("N={:<6} log2(N)={:<5.1f} clusters of {} loss={:.0f}% window={} table<={}+{}  "
             "({} rounds, {:.1f} s)\n",
             n, std::log2(n), cluster_size, lost_share, params.window,
             std::min<size_t>(params.capacity, static_cast<size_t>(cluster_size)),
             cluster_size < n ? params.foreign_capacity : 0, params.warmup_rounds + rounds,
             seconds);
  fmt::print("  nodes known per node after warm-up: min {}, mean {:.0f} ({:.0f} of other clusters; "
             "of its own, min {})\n",
             known_min, static_cast<double>(known_sum) / n, static_cast<double>(foreign_sum) / n,
             own_min);
  double measured_rounds = std::max(1, sim.round_ - measured_from);
  double datagram_bytes =
      sim.sampled_ ? static_cast<double>(sim.sampled_bytes_) / static_cast<double>(sim.sampled_) : 0;
  fmt::print("  per node: {:.0f} KiB of membership, {:.1f} datagrams and {:.1f} KiB sent a round "
             "({:.0f} bytes a datagram)\n",
             sim.bytes_per_node_ / 1024.0, static_cast<double>(sim.sent_) / n / measured_rounds,
             static_cast<double>(sim.sent_) * datagram_bytes / n / measured_rounds / 1024.0,
             datagram_bytes);
  fmt::print("  age of information in the gossip window (rounds): mean {:.2f}, max {:.0f}\n",
             sim.window_age_.mean(), sim.window_age_.max);
  fmt::print("  age of every record a node holds (rounds):        mean {:.1f}, max {:.0f}\n",
             picture.mean(), picture.max);
  fmt::print("  rounds to reach 99% of the node's cluster: load rise {}, newly idle (damped) {}, "
             "death {} ({} after the first suspicion)\n",
             Rounds(sim.change_, sim), Rounds(sim.idle_, sim), Rounds(sim.death_, sim),
             sim.death_.done_round >= 0 && sim.suspicion_.first_round >= 0
                 ? fmt::format("{}", sim.death_.done_round - sim.suspicion_.first_round)
                 : std::string("-"));
  uint64_t verdicts = sim.verdicts_ - verdicts_before, false_deaths = sim.false_deaths_ - false_before;
  fmt::print("  death verdicts: {}, false (a live node declared dead somewhere): {} ({:.3f}%)\n",
             verdicts, false_deaths,
             verdicts ? 100.0 * static_cast<double>(false_deaths) / static_cast<double>(verdicts) : 0.0);
}

}  // namespace
}  // namespace homeward

int main(int argc, char** argv) {
  homeward::Params params;
  CLI::App app{"Simulate Homeward gossip on a virtual cluster"};
  app.add_option("--sizes", params.sizes, "cluster sizes")->delimiter(',');
  app.add_option("--loss", params.loss, "datagram loss probability")->check(CLI::Range(0.0, 0.9));
  app.add_option("--window", params.window, "records per datagram");
  app.add_option("--capacity", params.capacity, "records of its own cluster kept per node at most");
  app.add_option("--foreign", params.foreign_capacity,
                 "records of other clusters kept per node at most");
  app.add_option("--cluster-size", params.cluster_size,
                 "nodes per cluster (0: one cluster of all)");
  app.add_option("--warmup", params.warmup_rounds, "rounds before measuring");
  app.add_option("--max-rounds", params.max_rounds, "rounds to wait for changes to spread");
  app.add_flag("--wire", params.wire, "pass every datagram through the codec (MAC and all)");
  app.add_option("--seed", params.seed, "random seed");
  CLI11_PARSE(app, argc, argv);
  for (int n : params.sizes) homeward::RunSize(n, params);
  return 0;
}
