// gossip_sim: runs the daemon's own Membership code for thousands of simulated nodes in
// one process, with virtual time and a lossy virtual network, and prints how fresh the
// information stays and how fast changes spread, beside log2(N).
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
// the given property. Tracks who has received it.
struct Watch {
  std::string name;
  std::function<bool(const NodeRecord&, MemberState)> matches;
  std::vector<char> reached;
  size_t count = 0;
  int start_round = 0;
  int done_round = -1;
  bool active = false;
};

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
    nodes_.reserve(n);
    for (int i = 0; i < n; ++i) {
      NodeRecord self;
      self.name = fmt::format("n{}", i);
      self.address = Address(i);
      self.gossip_port = 4700;
      self.cores = 4;
      self.load = 0.5f;
      self.mem_total_mb = 16384;
      self.mem_free_mb = 8192;
      self.incarnation = 1;
      nodes_.push_back(std::make_unique<Membership>(self, options, params.seed * 1000003 + i));
      // A newcomer needs one seed: everyone starts from node 0.
      if (i != 0) nodes_.back()->AddSeed(Endpoint{Address(0), 4700});
      // A live node declared dead (not merely evicted from a full table) is a false death.
      nodes_.back()->SetChangeListener([this, i](const NodeRecord& peer, bool alive) {
        MemberView view;
        if (!alive && up_[static_cast<size_t>(IndexOf(peer.address))] &&
            nodes_[static_cast<size_t>(i)]->Find(peer.name, now_, &view)) {
          ++false_deaths_;
        }
      });
    }
  }

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
    for (auto* watch : {&change_, &idle_, &death_}) {
      if (watch->active && watch->done_round < 0 && watch->count * 100 >= Live() * 99) {
        watch->done_round = round_ - watch->start_round;
      }
    }
  }

  size_t Live() const {
    size_t live = 0;
    for (char u : up_) live += u;
    return live;
  }

  void StartWatch(Watch* watch, std::string name,
                  std::function<bool(const NodeRecord&, MemberState)> matches) {
    watch->name = std::move(name);
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
  Watch change_, idle_, death_;

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
      for (auto* watch : {&change_, &idle_, &death_}) Observe(watch, *message, to);
      replies_.clear();
      nodes_[static_cast<size_t>(to)]->Receive(*message, Endpoint{Address(from), 4700}, now_,
                                               &replies_);
      for (auto& reply : replies_) queue_.push_back({to, std::move(reply)});
    }
  }

  void Observe(Watch* watch, const GossipMessage& message, int to) {
    if (!watch->active || watch->reached[static_cast<size_t>(to)]) return;
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
  return fmt::format(">{} ({:.1f}%)", watch.done_round < 0 ? sim.round_ - watch.start_round : 0,
                     100.0 * static_cast<double>(watch.count) / static_cast<double>(sim.Live()));
}

void RunSize(int n, const Params& params) {
  Simulation sim(n, params);
  auto start = std::chrono::steady_clock::now();
  for (int r = 0; r < params.warmup_rounds; ++r) {
    sim.Round();
    if (r % 10 == 9) std::fprintf(stderr, "  N=%d: warm-up round %d\n", n, r + 1);
  }
  size_t known_min = SIZE_MAX, known_sum = 0;
  for (const auto& node : sim.nodes_) {
    known_min = std::min(known_min, node->known());
    known_sum += node->known();
  }
  sim.window_age_ = Stats{};
  uint64_t false_before = sim.false_deaths_;

  // A node gets busy (news), a node goes idle (damped), a node dies.
  int busy = n / 3, idle = n / 2, victim = n - 1;
  sim.nodes_[static_cast<size_t>(busy)]->UpdateSelf([&] {
    NodeRecord r = sim.nodes_[static_cast<size_t>(busy)]->self();
    r.load = 3.0f;
    return r;
  }());
  sim.StartWatch(&sim.change_, fmt::format("n{}", busy),
                 [](const NodeRecord& r, MemberState) { return r.load >= 2.9f; });
  sim.nodes_[static_cast<size_t>(idle)]->UpdateSelf([&] {
    NodeRecord r = sim.nodes_[static_cast<size_t>(idle)]->self();
    r.load = 0.0f;
    return r;
  }());
  sim.StartWatch(&sim.idle_, fmt::format("n{}", idle),
                 [](const NodeRecord& r, MemberState) { return r.load <= 0.01f; });
  sim.up_[static_cast<size_t>(victim)] = 0;
  sim.StartWatch(&sim.death_, fmt::format("n{}", victim),
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
  fmt::print("N={:<6} log2(N)={:<5.1f} loss={:.0f}% window={} table<={}  ({} rounds, {:.1f} s)\n",
             n, std::log2(n), lost_share, params.window, std::min<size_t>(params.capacity, n),
             params.warmup_rounds + rounds, seconds);
  fmt::print("  nodes known per node after warm-up: min {}, mean {:.0f}\n", known_min,
             static_cast<double>(known_sum) / n);
  fmt::print("  age of information in the gossip window (rounds): mean {:.2f}, max {:.0f}\n",
             sim.window_age_.mean(), sim.window_age_.max);
  fmt::print("  age of every record a node holds (rounds):        mean {:.1f}, max {:.0f}\n",
             picture.mean(), picture.max);
  fmt::print("  rounds to reach 99% of nodes: load rise {}, newly idle (damped) {}, death {}\n",
             Rounds(sim.change_, sim), Rounds(sim.idle_, sim), Rounds(sim.death_, sim));
  fmt::print("  false deaths (a live node declared dead somewhere): {}\n",
             sim.false_deaths_ - false_before);
}

}  // namespace
}  // namespace homeward

int main(int argc, char** argv) {
  homeward::Params params;
  CLI::App app{"Simulate Homeward gossip on a virtual cluster"};
  app.add_option("--sizes", params.sizes, "cluster sizes")->delimiter(',');
  app.add_option("--loss", params.loss, "datagram loss probability")->check(CLI::Range(0.0, 0.9));
  app.add_option("--window", params.window, "records per datagram");
  app.add_option("--capacity", params.capacity, "records kept per node at most");
  app.add_option("--warmup", params.warmup_rounds, "rounds before measuring");
  app.add_option("--max-rounds", params.max_rounds, "rounds to wait for changes to spread");
  app.add_flag("--wire", params.wire, "pass every datagram through the codec (MAC and all)");
  app.add_option("--seed", params.seed, "random seed");
  CLI11_PARSE(app, argc, argv);
  for (int n : params.sizes) homeward::RunSize(n, params);
  return 0;
}
