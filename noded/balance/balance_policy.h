// The placement and load-balancing policy: where a new job should start, and which of a
// node's jobs should move where. Pure logic, as membership.h is: the picture and the
// jobs come in as values and time as milliseconds, so the daemon (noded/balance/balancer.h) and
// the simulator (bench/balance_sim.cc) run the same code.
//
// A node's worth to a process is the CPU it would get there: its speed times
// min(1, cores / (load + 1)). A job moves when a target promises clearly more than it
// gets here (hysteresis), when what it should gain over its expected remaining run
// (taken to be as long as it has run so far) outweighs the cost of moving its memory,
// and when it has stayed long enough since its last move. Damping: moves this node made
// count in its picture of the source and the target until gossip has caught up, each
// round moves at most a few jobs, and the target is chosen at random among the good
// ones weighted by their promise, so that many nodes do not pile onto one idle node.
//
// Partner clusters: a job of this cluster goes to a partner's node only when it may
// (mosrun -G) and no node of this cluster would do (its home cluster is busy); a partner's
// guest moves within this cluster, or back to its own. Priorities: when this node has more
// runnable work than cores and some of it is of higher precedence than a partner's guest
// (the node's own processes, this cluster's jobs, a better partner's guests), the guest of
// lowest precedence is forced out, one a round, whatever its residency: to a node with
// room for it (this cluster's first), or home.
//
// Within a cluster the same precedence makes sub-clusters and nodes for short jobs: a
// node of a group ([node] group) ranks the cluster's jobs of other users below its
// group's, and a node for short jobs ([node] long_job_s) ranks guests that have run long
// below the rest. Jobs go first to nodes where they would be of the node's own.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <random>
#include <string>
#include <vector>

namespace homeward::balance {

// A node as the gossip picture shows it.
struct Node {
  std::string name;
  int cores = 1;
  double speed = 1.0;        // relative CPU speed of one core
  double load = 0;           // runnable processes as published: smoothed, or now if higher
  double runnable_now = -1;  // this node only: its recent count (-1: unknown), with
                             // `load` then its plain average (NodeMetrics)
  uint32_t mem_free_mb = 0;  // memory a new job could use
  uint32_t mem_total_mb = 0;
  bool accepts_guests = true;  // false once blocked (mosctl block), or, of a partner's
                               // node, when its cluster does not accept this one's jobs
  int64_t age_ms = 0;          // how old this information is
  std::string cluster;         // a partner cluster's node; empty: one of this cluster
  std::string group;           // its sub-cluster ([node] group); empty: none
  int64_t long_job_after_ms = 0;  // a node for short jobs: guests that ran this long rank low
};

// A job of this node that may move automatically: a home job running here or a guest.
// (Jobs started with mosrun -L, pinned jobs and jobs already moving are not offered.)
struct Job {
  uint64_t id = 0;
  std::string home;                // the job's home node
  bool guest = false;              // runs here for another home
  double demand = 1.0;             // runnable processes of the job, smoothed: its load
  uint32_t memory_mb = 0;          // resident memory: what a move carries
  uint32_t min_free_mb = 0;        // mosrun -m: only nodes with this much free memory
  int64_t run_ms = 0;              // time since the job started
  int64_t resident_ms = 0;         // time since it started here or arrived
  double home_io_bytes_per_s = 0;  // guests: file and terminal traffic to the home
  double cpu_use = 0;              // cores the job used recently
  std::string home_cluster;        // the home's cluster when a partner's; empty: this one
  bool partners = false;           // mosrun -G: may go to partner clusters' nodes
  std::vector<std::string> groups;  // the Unix groups of the job's user
  // Precedence here (JobPrecedence): 0 for the node's own work; lower runs first.
  int priority = 0;
  bool locked = false;  // mosrun -L: moved only when forced out (priority above 0)
};

// What ranks a job below a node's own work there, besides a partner's priority.
struct PrecedenceRules {
  std::string group;              // [node] group: the node's sub-cluster; empty: none
  int others = 50;                // [node] others_priority: the cluster's guests not of it
  int64_t long_job_after_ms = 0;  // [node] long_job_s, in ms; 0: not a node for short jobs
  int long_job = 200;             // [node] long_job_priority
};

// A job's precedence on a node with `rules` (lower runs first): 0 for the node's own work
// (its home jobs; guests of this cluster whose user is in the node's group, or of a node
// without one), else the highest that applies of `partner_priority` (above 0 for a
// partner's guest), `rules.others` for a guest whose user is not in the node's group, and
// `rules.long_job` for a guest that has run long_job_after_ms.
int JobPrecedence(const PrecedenceRules& rules, bool guest, int partner_priority,
                  const std::vector<std::string>& groups, int64_t run_ms);

struct Options {
  double hysteresis = 0.45;              // a target must promise (1 + this) x the CPU here
  double bandwidth_mb_per_s = 200;       // to estimate how long moving memory takes
  double move_overhead_ms = 300;         // freeze, restore and reconnect, besides memory
  double cost_factor = 2.0;              // expected gain must exceed cost x this
  int64_t min_residency_ms = 4000;       // a job stays at least this long where it landed
  int64_t load_time_constant_ms = 5000;  // how fast published load follows a move
  double home_io_bytes_per_s = 1 << 20;  // a guest moving this much to and from home ...
  double home_io_max_cpu = 0.5;          // ... while using less CPU than this goes home
  uint32_t usher_free_mb = 256;          // memory ushering starts below this much free
  int max_moves_per_round = 1;           // load moves started per round
  bool rises_published = true;           // published load shows a rise (NodeMetrics) ...
  int64_t rise_shows_ms = 2000;          // ... this long after it: two samples
  int64_t refused_avoid_ms = 10000;      // a target that refused is left alone this long
  double min_demand = 0.3;               // jobs with less demand are not moved for load
};

struct Decision {
  uint64_t job = 0;
  std::string target;
  std::string reason;      // "load", "memory", "home I/O"
  uint32_t memory_mb = 0;  // the job's, freed here and taken there once it has moved
  double demand = 0;       // the job's load, for Moved
  double load_here = 0;    // the loads the decision was made on, as adjusted
  double load_there = 0;
};

// The CPU a process would get on `node` with `added` more runnable processes there, in
// reference cores.
double ExpectedShare(const Node& node, double added);

// Where a new job should start (mosrun -b, -m): the node in `nodes` with the most
// expected CPU among those with `min_free_mb` free, accepting guests unless it is
// `self`. Ties go to `self`, then to the first listed. A sub-cluster's jobs start on its
// own nodes first: a node of a group the user (`user_groups`) is not in is taken only
// when none of the others has a whole core for the job. Nothing when no node qualifies.
std::optional<std::string> BestNode(const std::vector<Node>& nodes, const std::string& self,
                                    uint32_t min_free_mb,
                                    const std::vector<std::string>& user_groups = {});

class Balancer {
 public:
  Balancer(std::string self, Options options, uint64_t random_seed);

  // One round: `nodes` is the picture (this node included), `jobs` the jobs here that
  // may move automatically. Returns the moves to start now; each is reported back with
  // Moved or Refused.
  std::vector<Decision> Round(int64_t now_ms, const std::vector<Node>& nodes,
                              const std::vector<Job>& jobs);
  // A decided move took place: its load counts at the target, not here, until the
  // published loads show it.
  void Moved(const Decision& decision, double demand, int64_t now_ms);
  // A decided move did not happen (the target refused or is gone): the target is left
  // alone for a while.
  void Refused(const Decision& decision, int64_t now_ms);
  // A job arrived here from elsewhere: it counts in this node's load at once.
  void Arrived(double demand, int64_t now_ms);
  // This node started a new job on `node` (mosrun -b): it counts there at once.
  void Placed(const std::string& node, double demand, int64_t now_ms);
  // `nodes` with this node's recent moves, arrivals and placements counted where the
  // published figures do not show them yet: what BestNode should be given.
  std::vector<Node> Adjusted(int64_t now_ms, const std::vector<Node>& nodes);

  const Options& options() const { return options_; }

 private:
  struct Adjustment {  // load moved by this node, not yet visible in published loads
    std::string node;
    double load = 0;
    int64_t memory_mb = 0;  // memory freed (+) or taken (-) there
    int64_t at_ms = 0;
  };

  std::string self_;
  Options options_;
  std::mt19937_64 random_;
  std::vector<Adjustment> adjustments_;
  std::map<std::string, int64_t> avoid_until_ms_;
};

}  // namespace homeward::balance
