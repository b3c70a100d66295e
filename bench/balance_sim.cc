// balance_sim: runs the daemon's own placement and balancing policy (BestNode and
// Balancer from noded/balance/balance_policy.h) on 100 and 1,000 simulated nodes under a stream
// of jobs, and compares it with random placement and with an all-knowing placement.
//
// The model:
// - Nodes have 1, 2 or 4 cores (equally often), a core speed drawn from [0.6, 1.4] and
//   4 GiB of memory per core. Every policy sees the same cluster and the same jobs.
// - Jobs arrive as a Poisson stream at a rate that offers the chosen utilisation of the
//   cluster's capacity (the sum of cores x speed). Each has a home node, drawn in
//   proportion to capacity (--uniform-homes: every node equally), so that each node
//   alone would run at that utilisation. Work is 1 s plus a Pareto tail (Lomax,
//   alpha 1.5, scale 20 s) cut at 10 minutes, in seconds on a speed-1.0 core: mean about
//   30 s, half the jobs under 13 s. Memory is lognormal, median 200 MB, at most 4 GiB.
// - Each node shares its cores equally among the jobs it runs (processor sharing), in
//   virtual time steps of 100 ms. Memory is only accounted, never paged.
// - Once a second (each node at its own phase within the second) a node samples its
//   load as NodeMetrics does, an EWMA with a 5 s time constant of its runnable jobs,
//   and publishes it with its free memory. Its picture is itself (age 0) and a window
//   of 24 other nodes drawn afresh each round, as gossip's freshest-records window is,
//   each known as it was 1 to 3 s ago.
// - Policies: "random" runs every job at its home and never moves it; "homeward" starts
//   jobs at home and runs a Balancer round on every node each second; "homeward -b"
//   also starts each job on BestNode over its home's picture (mosrun -b); "oracle"
//   starts each job on the node with the most expected CPU knowing every node's exact
//   runnable count at that instant, and never moves it.
// - A move freezes the job for 300 ms plus its memory at 200 MB/s (the policy's own
//   estimate, Options' defaults); it counts on neither node meanwhile. A target short
//   of real memory refuses (Balancer::Refused). Moves are reported with Moved at the
//   source and Arrived at the target when they complete.
// - Slowdown is a job's response time over its work, i.e. over the time it would take
//   alone on a speed-1.0 core (so a job alone on a fast node has a slowdown below 1).
//   Jobs arriving during a warm-up are not counted; after the measured arrivals, jobs
//   keep arriving until every measured job has finished.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <memory>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include <fmt/format.h>
#include <CLI/CLI.hpp>

#include "balance_policy.h"
#include "node_metrics.h"

namespace homeward {
namespace {

using balance::Balancer;
using balance::Decision;

struct Params {
  std::vector<int> sizes{100, 1000};
  std::vector<double> utilisations{0.7, 0.9};
  int measured_jobs = 50000;
  double warmup_s = 120;
  double drain_limit_s = 3600;
  int window = 24;
  int max_age_s = 3;
  bool uniform_homes = false;
  bool ewma_only = false;
  int threads = 2;
  uint64_t seed = 1;
  balance::Options options;
};

enum class Policy { kRandom, kHomeward, kHomewardBest, kOracle };
constexpr Policy kPolicies[] = {Policy::kRandom, Policy::kHomeward, Policy::kHomewardBest,
                                Policy::kOracle};

const char* PolicyName(Policy policy) {
  switch (policy) {
    case Policy::kRandom:
      return "random (at home)";
    case Policy::kHomeward:
      return "homeward";
    case Policy::kHomewardBest:
      return "homeward -b";
    case Policy::kOracle:
      return "oracle";
  }
  return "?";
}

constexpr int64_t kStepMs = 100;
constexpr int kStepsPerRound = 1000 / kStepMs;
constexpr int kHistory = 8;  // seconds of published records kept per node
constexpr double kAlpha = 1.5, kScaleS = 20, kMinWorkS = 1, kMaxTailS = 600;
constexpr double kMemoryMedianMb = 200, kMemorySigma = 1.0, kMemoryMaxMb = 4096;

// The mean of the work distribution, for the arrival rate: 1 s plus a Lomax cut at
// kMaxTailS (drawn by inverting its CDF below the cut).
double MeanWorkS() {
  double tail = 1 + kMaxTailS / kScaleS;
  double survive = std::pow(tail, -kAlpha);
  double integral = kScaleS / (kAlpha - 1) * (1 - std::pow(tail, 1 - kAlpha)) - kMaxTailS * survive;
  return kMinWorkS + integral / (1 - survive);
}

struct NodeSpec {
  int cores = 1;
  double speed = 1;
  uint32_t mem_total_mb = 0;
};

std::vector<NodeSpec> MakeCluster(int n, uint64_t seed) {
  std::mt19937_64 random(seed);
  std::vector<NodeSpec> nodes(static_cast<size_t>(n));
  for (auto& node : nodes) {
    node.cores = 1 << std::uniform_int_distribution<int>(0, 2)(random);
    node.speed = std::uniform_real_distribution<double>(0.6, 1.4)(random);
    node.mem_total_mb = 4096 * static_cast<uint32_t>(node.cores);
  }
  return nodes;
}

struct JobSpec {
  double arrival_ms = 0;
  int home = 0;
  double work_s = 0;
  uint32_t memory_mb = 0;
};

// The job stream: the same for every policy, given the seed.
class Arrivals {
 public:
  Arrivals(const std::vector<NodeSpec>& nodes, double utilisation, bool uniform_homes,
           uint64_t seed)
      : random_(seed) {
    std::vector<double> weights;
    double capacity = 0;
    for (const auto& node : nodes) {
      capacity += node.cores * node.speed;
      weights.push_back(uniform_homes ? 1.0 : node.cores * node.speed);
    }
    homes_ = std::discrete_distribution<int>(weights.begin(), weights.end());
    rate_per_ms_ = utilisation * capacity / MeanWorkS() / 1000.0;
  }

  JobSpec Next() {
    JobSpec job;
    now_ms_ += std::exponential_distribution<double>(rate_per_ms_)(random_);
    job.arrival_ms = now_ms_;
    job.home = homes_(random_);
    double cut = 1 - std::pow(1 + kMaxTailS / kScaleS, -kAlpha);
    double u = std::uniform_real_distribution<double>(0, cut)(random_);
    job.work_s = kMinWorkS + kScaleS * (std::pow(1 - u, -1 / kAlpha) - 1);
    double memory = kMemoryMedianMb * std::exp(kMemorySigma * normal_(random_));
    job.memory_mb = static_cast<uint32_t>(std::clamp(memory, 1.0, kMemoryMaxMb));
    return job;
  }
  double rate_per_s() const { return rate_per_ms_ * 1000; }

 private:
  std::mt19937_64 random_;
  std::discrete_distribution<int> homes_;
  std::normal_distribution<double> normal_;
  double rate_per_ms_ = 0;
  double now_ms_ = 0;
};

struct Published {
  double load = 0;
  uint32_t mem_free_mb = 0;
  int64_t at_ms = 0;
};

struct SimNode {
  NodeSpec spec;
  std::string name;
  std::vector<size_t> jobs;  // running here, by index into the job table
  uint32_t mem_used_mb = 0;
  LoadAverage load{5000};
  Published history[kHistory];
  int phase = 0;
  std::unique_ptr<Balancer> balancer;
  uint32_t mem_free_mb() const {
    return spec.mem_total_mb - std::min(spec.mem_total_mb, mem_used_mb);
  }
};

struct SimJob {
  JobSpec spec;
  double remaining_s = 0;
  double ready_ms = 0;  // runnable on its node from this time (arrival or landing)
  int64_t resident_since_ms = 0;
  double rate = 0;
  int migrations = 0;
  bool measured = false;
};

struct Transit {
  int64_t land_ms = 0;
  size_t job = 0;
  int from = 0;
  int to = 0;
  Decision decision;
};

struct Result {
  int n = 0;
  double utilisation = 0;
  Policy policy = Policy::kRandom;
  size_t measured = 0;
  size_t unfinished = 0;
  double mean_slowdown = 0;
  double p50_slowdown = 0;
  double p99_slowdown = 0;
  double mean_response_s = 0;
  double moves_per_job = 0;
  uint64_t memory_moves = 0;
  uint64_t refused = 0;
  double simulated_s = 0;
  double wall_s = 0;
};

class Simulation {
 public:
  Simulation(int n, double utilisation, Policy policy, const Params& params)
      : params_(params),
        policy_(policy),
        random_(params.seed * 7919 + static_cast<uint64_t>(n)),
        arrivals_(MakeCluster(n, params.seed), utilisation, params.uniform_homes,
                  params.seed * 104729 + static_cast<uint64_t>(utilisation * 1000) +
                      static_cast<uint64_t>(n)) {
    auto specs = MakeCluster(n, params.seed);
    nodes_.resize(specs.size());
    for (size_t i = 0; i < specs.size(); ++i) {
      SimNode& node = nodes_[i];
      node.spec = specs[i];
      node.name = fmt::format("n{}", i);
      node.phase = static_cast<int>(i % kStepsPerRound);
      node.load = LoadAverage(static_cast<double>(params.options.load_time_constant_ms));
      node.balancer =
          std::make_unique<Balancer>(node.name, params.options, params.seed * 1000003 + i);
    }
    result_.n = n;
    result_.utilisation = utilisation;
    result_.policy = policy;
  }

  Result Run() {
    auto start = std::chrono::steady_clock::now();
    double measure_from_ms = params_.warmup_s * 1000;
    double measure_to_ms = measure_from_ms + params_.measured_jobs / arrivals_.rate_per_s() * 1000;
    double limit_ms = measure_to_ms + params_.drain_limit_s * 1000;
    JobSpec next = arrivals_.Next();
    size_t measured_left = 0;
    bool measuring_done = false;
    for (int64_t step = 0;; ++step) {
      int64_t t0 = step * kStepMs, t1 = t0 + kStepMs;
      while (next.arrival_ms < static_cast<double>(t1)) {
        bool measured = next.arrival_ms >= measure_from_ms && next.arrival_ms < measure_to_ms;
        measured_left += measured;
        Start(next, measured, t0);
        next = arrivals_.Next();
      }
      if (next.arrival_ms >= measure_to_ms) measuring_done = true;
      Land(t1);
      measured_left -= Serve(t0, t1);
      if (policy_ == Policy::kHomeward || policy_ == Policy::kHomewardBest) {
        int phase = static_cast<int>(step % kStepsPerRound);
        for (size_t i = 0; i < nodes_.size(); ++i) {
          if (nodes_[i].phase == phase) Round(static_cast<int>(i), t1);
        }
      } else {
        int phase = static_cast<int>(step % kStepsPerRound);
        for (auto& node : nodes_) {
          if (node.phase == phase) Sample(node, t1);
        }
      }
      if ((measuring_done && measured_left == 0) || static_cast<double>(t1) >= limit_ms) {
        result_.simulated_s = static_cast<double>(t1) / 1000;
        break;
      }
    }
    Summarise();
    result_.wall_s =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    return result_;
  }

 private:
  void Start(const JobSpec& spec, bool measured, int64_t now_ms) {
    size_t id = jobs_.size();
    SimJob job;
    job.spec = spec;
    job.remaining_s = spec.work_s;
    job.ready_ms = spec.arrival_ms;
    job.resident_since_ms = static_cast<int64_t>(spec.arrival_ms);
    job.measured = measured;
    jobs_.push_back(job);
    int at = spec.home;
    if (policy_ == Policy::kHomewardBest) {
      auto& home = nodes_[static_cast<size_t>(at)];
      auto best = balance::BestNode(home.balancer->Adjusted(now_ms, Picture(spec.home, now_ms)),
                                    home.name, spec.memory_mb);
      if (best) at = IndexOf(*best);
      if (at != spec.home) {
        home.balancer->Placed(*best, 1.0, now_ms);
        nodes_[static_cast<size_t>(at)].balancer->Arrived(1.0, now_ms);
      }
    } else if (policy_ == Policy::kOracle) {
      at = Oracle(spec);
    }
    SimNode& node = nodes_[static_cast<size_t>(at)];
    node.jobs.push_back(id);
    node.mem_used_mb += spec.memory_mb;
  }

  int Oracle(const JobSpec& spec) {
    if (oracle_picture_.empty()) {
      for (const auto& node : nodes_) oracle_picture_.push_back(Describe(node, 0, 0));
    }
    for (size_t i = 0; i < nodes_.size(); ++i) {
      oracle_picture_[i].load = static_cast<double>(nodes_[i].jobs.size());
      oracle_picture_[i].mem_free_mb = nodes_[i].mem_free_mb();
    }
    auto best = balance::BestNode(oracle_picture_, nodes_[static_cast<size_t>(spec.home)].name,
                                  spec.memory_mb);
    return best ? IndexOf(*best) : spec.home;
  }

  static int IndexOf(const std::string& name) { return std::stoi(name.substr(1)); }

  static balance::Node Describe(const SimNode& node, double load, int64_t age_ms) {
    balance::Node view;
    view.name = node.name;
    view.cores = node.spec.cores;
    view.speed = node.spec.speed;
    view.load = load;
    view.mem_free_mb = node.mem_free_mb();
    view.mem_total_mb = node.spec.mem_total_mb;
    view.age_ms = age_ms;
    return view;
  }

  // What node `self` knows at `now_ms`: itself now, and a window of others as they
  // published a few seconds ago.
  std::vector<balance::Node> Picture(int self, int64_t now_ms) {
    const SimNode& me = nodes_[static_cast<size_t>(self)];
    std::vector<balance::Node> picture{Describe(me, me.load.smoothed(), 0)};
    // A node knows its own recent count (NodeMetrics).
    if (!params_.ewma_only) picture[0].runnable_now = me.load.recent();
    int others = static_cast<int>(nodes_.size()) - 1;
    int want = std::min(params_.window, others);
    window_.clear();
    while (static_cast<int>(window_.size()) < want) {
      int pick = std::uniform_int_distribution<int>(0, others - 1)(random_);
      if (pick >= self) ++pick;
      if (std::find(window_.begin(), window_.end(), pick) != window_.end()) continue;
      window_.push_back(pick);
    }
    int64_t second = now_ms / 1000;
    for (int other : window_) {
      int age_s = std::uniform_int_distribution<int>(1, params_.max_age_s)(random_);
      const SimNode& node = nodes_[static_cast<size_t>(other)];
      const Published& record = node.history[(second - age_s + kHistory) % kHistory];
      balance::Node view = Describe(node, record.load, now_ms - record.at_ms);
      view.mem_free_mb = record.mem_free_mb;
      picture.push_back(std::move(view));
    }
    return picture;
  }

  void Sample(SimNode& node, int64_t now_ms) {
    node.load.Sample(static_cast<double>(node.jobs.size()), 1000);
    // As NodeMetrics publishes: the average, or the count now when higher.
    double published = params_.ewma_only ? node.load.smoothed() : node.load.value();
    node.history[(now_ms / 1000) % kHistory] = {published, node.mem_free_mb(), now_ms};
  }

  void Round(int self, int64_t now_ms) {
    SimNode& node = nodes_[static_cast<size_t>(self)];
    Sample(node, now_ms);
    if (node.jobs.empty()) return;  // nothing to decide: the round would return nothing
    offered_.clear();
    for (size_t id : node.jobs) {
      const SimJob& job = jobs_[id];
      balance::Job offer;
      offer.id = id;
      offer.home = nodes_[static_cast<size_t>(job.spec.home)].name;
      offer.guest = job.spec.home != self;
      offer.demand = 1.0;
      offer.memory_mb = job.spec.memory_mb;
      offer.run_ms = now_ms - static_cast<int64_t>(job.spec.arrival_ms);
      offer.resident_ms = now_ms - job.resident_since_ms;
      offer.cpu_use = job.rate;
      offered_.push_back(offer);
    }
    for (const Decision& decision : node.balancer->Round(now_ms, Picture(self, now_ms), offered_)) {
      int to = IndexOf(decision.target);
      SimNode& target = nodes_[static_cast<size_t>(to)];
      SimJob& job = jobs_[decision.job];
      if (target.mem_free_mb() < job.spec.memory_mb) {
        node.balancer->Refused(decision, now_ms);
        ++result_.refused;
        continue;
      }
      std::erase(node.jobs, decision.job);
      node.mem_used_mb -= job.spec.memory_mb;
      target.mem_used_mb += job.spec.memory_mb;  // reserved while the job travels
      double cost_ms = params_.options.move_overhead_ms +
                       job.spec.memory_mb / params_.options.bandwidth_mb_per_s * 1000;
      transits_.push_back(
          {now_ms + static_cast<int64_t>(cost_ms), decision.job, self, to, decision});
      ++job.migrations;
      if (decision.reason == "memory") ++result_.memory_moves;
    }
  }

  void Land(int64_t t1) {
    for (size_t i = 0; i < transits_.size();) {
      Transit& transit = transits_[i];
      if (transit.land_ms >= t1) {
        ++i;
        continue;
      }
      SimJob& job = jobs_[transit.job];
      job.ready_ms = static_cast<double>(transit.land_ms);
      job.resident_since_ms = transit.land_ms;
      nodes_[static_cast<size_t>(transit.to)].jobs.push_back(transit.job);
      nodes_[static_cast<size_t>(transit.from)].balancer->Moved(transit.decision, 1.0,
                                                                transit.land_ms);
      nodes_[static_cast<size_t>(transit.to)].balancer->Arrived(1.0, transit.land_ms);
      transits_[i] = transits_.back();
      transits_.pop_back();
    }
  }

  // Processor sharing over [t0, t1). Returns how many measured jobs finished.
  size_t Serve(int64_t t0, int64_t t1) {
    size_t finished_measured = 0;
    for (auto& node : nodes_) {
      if (node.jobs.empty()) continue;
      double rate =
          node.spec.speed * std::min(1.0, node.spec.cores / static_cast<double>(node.jobs.size()));
      for (size_t k = 0; k < node.jobs.size();) {
        SimJob& job = jobs_[node.jobs[k]];
        job.rate = rate;
        double from = std::max(static_cast<double>(t0), job.ready_ms);
        double done_s = rate * (static_cast<double>(t1) - from) / 1000;
        if (job.remaining_s > done_s) {
          job.remaining_s -= done_s;
          ++k;
          continue;
        }
        double finish_ms = from + job.remaining_s / rate * 1000;
        if (job.measured) {
          ++finished_measured;
          double response_s = (finish_ms - job.spec.arrival_ms) / 1000;
          slowdowns_.push_back(response_s / job.spec.work_s);
          response_sum_s_ += response_s;
          migrations_ += static_cast<uint64_t>(job.migrations);
        }
        node.mem_used_mb -= job.spec.memory_mb;
        node.jobs[k] = node.jobs.back();
        node.jobs.pop_back();
      }
    }
    return finished_measured;
  }

  void Summarise() {
    size_t measured = 0;
    for (const auto& job : jobs_) measured += job.measured;
    result_.measured = measured;
    result_.unfinished = measured - slowdowns_.size();
    if (slowdowns_.empty()) return;
    double sum = 0;
    for (double s : slowdowns_) sum += s;
    double count = static_cast<double>(slowdowns_.size());
    result_.mean_slowdown = sum / count;
    result_.mean_response_s = response_sum_s_ / count;
    result_.moves_per_job = static_cast<double>(migrations_) / count;
    std::sort(slowdowns_.begin(), slowdowns_.end());
    result_.p50_slowdown = slowdowns_[slowdowns_.size() / 2];
    result_.p99_slowdown =
        slowdowns_[std::min(slowdowns_.size() - 1, slowdowns_.size() * 99 / 100)];
  }

  const Params& params_;
  Policy policy_;
  std::mt19937_64 random_;
  Arrivals arrivals_;
  std::vector<SimNode> nodes_;
  std::vector<SimJob> jobs_;
  std::vector<Transit> transits_;
  std::vector<balance::Node> oracle_picture_;
  std::vector<balance::Job> offered_;
  std::vector<int> window_;
  std::vector<double> slowdowns_;
  double response_sum_s_ = 0;
  uint64_t migrations_ = 0;
  Result result_;
};

void PrintTable(const std::vector<Result>& results) {
  fmt::print("{:>5} {:>5}  {:<17} {:>7} {:>9} {:>7} {:>7} {:>9} {:>10} {:>9} {:>9}\n", "nodes",
             "util", "policy", "jobs", "slowdown", "p50", "p99", "response", "moves/job",
             "vs random", "resp. vs");
  const Result* baseline = nullptr;
  for (const Result& r : results) {
    if (r.policy == Policy::kRandom) baseline = &r;
    double ratio = baseline ? r.mean_slowdown / baseline->mean_slowdown : 0;
    double response_ratio = baseline ? r.mean_response_s / baseline->mean_response_s : 0;
    fmt::print(
        "{:>5} {:>5.2f}  {:<17} {:>7} {:>9.2f} {:>7.2f} {:>7.1f} {:>8.1f}s {:>10.3f} {:>9.2f} "
        "{:>9.2f}",
        r.n, r.utilisation, PolicyName(r.policy), r.measured, r.mean_slowdown, r.p50_slowdown,
        r.p99_slowdown, r.mean_response_s, r.moves_per_job, ratio, response_ratio);
    if (r.unfinished) fmt::print("  ({} unfinished)", r.unfinished);
    if (r.memory_moves || r.refused) {
      fmt::print("  ({} for memory, {} refused)", r.memory_moves, r.refused);
    }
    fmt::print("\n");
  }
}

}  // namespace
}  // namespace homeward

int main(int argc, char** argv) {
  using namespace homeward;
  Params params;
  CLI::App app{"Simulate Homeward placement and load balancing on a virtual cluster"};
  app.add_option("--sizes", params.sizes, "cluster sizes")->delimiter(',');
  app.add_option("--utilisations", params.utilisations, "offered load / capacity")
      ->delimiter(',')
      ->check(CLI::Range(0.05, 1.5));
  app.add_option("--jobs", params.measured_jobs, "jobs measured per run");
  app.add_option("--warmup", params.warmup_s, "seconds of arrivals before measuring");
  app.add_option("--window", params.window, "other nodes in each node's picture");
  app.add_option("--max-age", params.max_age_s, "age of a window record: 1 to this, seconds");
  app.add_flag("--uniform-homes", params.uniform_homes, "homes drawn uniformly, not by capacity");
  app.add_flag("--ewma-only", params.ewma_only,
               "publish the EWMA alone, without max(EWMA, runnable now)");
  app.add_option("--threads", params.threads, "simulations run at once");
  app.add_option("--seed", params.seed, "random seed");
  app.add_option("--hysteresis", params.options.hysteresis, "Options::hysteresis");
  app.add_option("--cost-factor", params.options.cost_factor, "Options::cost_factor");
  app.add_option("--min-residency", params.options.min_residency_ms, "Options::min_residency_ms");
  app.add_option("--max-moves", params.options.max_moves_per_round, "Options::max_moves_per_round");
  app.add_option("--load-time-constant", params.options.load_time_constant_ms,
                 "the published load's EWMA, ms (NodeMetrics; Options::load_time_constant_ms)");
  CLI11_PARSE(app, argc, argv);
  params.options.rises_published = !params.ewma_only;

  fmt::print(
      "mean work {:.1f} s on a speed-1.0 core; window {} nodes, 1-{} s old; homes {}; seed {}\n",
      MeanWorkS(), params.window, params.max_age_s,
      params.uniform_homes ? "uniform" : "by capacity", params.seed);
  struct Task {
    int n;
    double utilisation;
    Policy policy;
  };
  std::vector<Task> tasks;
  for (int n : params.sizes) {
    for (double u : params.utilisations) {
      for (Policy policy : kPolicies) tasks.push_back({n, u, policy});
    }
  }
  // Largest first, so the pool does not end with one long run alone.
  std::vector<size_t> order(tasks.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::stable_sort(order.begin(), order.end(),
                   [&](size_t a, size_t b) { return tasks[a].n > tasks[b].n; });
  std::vector<Result> results(tasks.size());
  std::atomic<size_t> next{0};
  std::mutex print;
  auto worker = [&] {
    for (size_t k; (k = next++) < order.size();) {
      const Task& task = tasks[order[k]];
      Simulation sim(task.n, task.utilisation, task.policy, params);
      results[order[k]] = sim.Run();
      std::lock_guard lock(print);
      const Result& r = results[order[k]];
      std::fprintf(stderr, "  N=%d util=%.2f %s: %.0f s simulated in %.1f s\n", task.n,
                   task.utilisation, PolicyName(task.policy), r.simulated_s, r.wall_s);
    }
  };
  std::vector<std::thread> threads;
  for (int i = 0; i < std::max(1, params.threads); ++i) threads.emplace_back(worker);
  for (auto& thread : threads) thread.join();
  PrintTable(results);
  return 0;
}
