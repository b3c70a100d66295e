// The job registry's placement and administration side: where a new job starts (mosrun
// -b, -m), what the balancer may move and how it moves it, and mosctl's block, expel,
// bring, leave and join.
#include <capnp/message.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <chrono>

#include "error.h"
#include "job_registry.h"

namespace homeward {

namespace {

// Guests are offered to the balancer with ids above every home job's slot.
constexpr uint64_t kGuestIdBase = uint64_t{1} << 32;

}  // namespace

// One mosctl action: the moves it started, answered with one report once all have ended.
class AdminRun {
 public:
  // `finish` may complete the report (and `blocked` and `left` with it) before it is sent.
  AdminRun(ReplySender reply, bool blocked, bool left,
           std::function<void(schema::AdminReport::Builder)> finish = {})
      : reply_(std::move(reply)), blocked_(blocked), left_(left), finish_(std::move(finish)) {}

  // Counts a move that has started; Ended reports it.
  void Started() { ++pending_; }
  void Ended(pid_t home_pid, const std::string& home, const std::string& from,
             const std::string& to, const std::string& error) {
    moves_.push_back({home_pid, home, from, to, error});
    --pending_;
    MaybeFinish();
  }
  // Every move the action needs has started.
  void AllStarted() {
    all_started_ = true;
    MaybeFinish();
  }

 private:
  struct Entry {
    pid_t home_pid;
    std::string home, from, to, error;
  };
  void MaybeFinish() {
    if (!all_started_ || pending_ > 0 || finished_) return;
    finished_ = true;
    capnp::MallocMessageBuilder message;
    auto report = message.initRoot<schema::ControlReply>().initAdminReport();
    report.setBlocked(blocked_);
    report.setLeft(left_);
    auto moves = report.initMoves(static_cast<unsigned>(moves_.size()));
    for (unsigned i = 0; i < moves_.size(); ++i) {
      moves[i].setHomePid(moves_[i].home_pid);
      moves[i].setHome(moves_[i].home);
      moves[i].setFrom(moves_[i].from);
      moves[i].setTo(moves_[i].to);
      moves[i].setError(moves_[i].error);
    }
    if (finish_) finish_(report);
    reply_.Send(message);
  }

  ReplySender reply_;
  bool blocked_;
  bool left_;
  std::function<void(schema::AdminReport::Builder)> finish_;
  int pending_ = 0;
  bool all_started_ = false;
  bool finished_ = false;
  std::vector<Entry> moves_;
};

std::string JobRegistry::Place(const JobLaunch& launch, const std::string& where, bool best) const {
  bool elsewhere = !where.empty() && where != config_.name;
  if (best && elsewhere) {
    Fail(ErrorKind::kInvalidInput, "a job placed on the best node (-b) names no node");
  }
  if (launch.keep_home && (best || elsewhere)) {
    Fail(ErrorKind::kInvalidInput, "a job kept at home (-h) starts at home");
  }
  if (left_ && elsewhere) {
    Fail(ErrorKind::kInvalidInput,
         "node {} has left the cluster (mosctl leave): its jobs start and stay here until "
         "mosctl join",
         config_.name);
  }
  if (left_) return {};  // -b: here
  uint32_t need = launch.min_free_mb;
  if (!best && need == 0) return where;
  std::vector<balance::Node> nodes = picture_();
  if (!best) {
    const std::string& wanted = elsewhere ? where : config_.name;
    auto it = std::find_if(nodes.begin(), nodes.end(), [&](auto& n) { return n.name == wanted; });
    if (it != nodes.end() && it->mem_free_mb >= need) return where;
    if (elsewhere || launch.keep_home) {
      Fail(ErrorKind::kOverloaded, "node {} has {} MB of free memory; the job needs {} MB (-m)",
           wanted, it != nodes.end() ? it->mem_free_mb : 0, need);
    }
  }
  std::optional<std::string> chosen =
      balance::BestNode(nodes, config_.name, need, user_groups_.Of(launch.identity.uid));
  if (!chosen) {
    auto most = std::max_element(nodes.begin(), nodes.end(),
                                 [](auto& a, auto& b) { return a.mem_free_mb < b.mem_free_mb; });
    if (most == nodes.end()) Fail(ErrorKind::kNotFound, "no live node to run the job on");
    Fail(ErrorKind::kOverloaded,
         "no node has {} MB of free memory for the job (-m): the most is {} MB, on {}", need,
         most->mem_free_mb, most->name);
  }
  if (*chosen != config_.name) {
    spdlog::info("placing a new job on {}", *chosen);
    if (on_placed_) on_placed_(*chosen);
  }
  return *chosen == config_.name ? std::string() : *chosen;
}

std::vector<balance::Job> JobRegistry::MovableJobs(int64_t now_ms) {
  std::vector<balance::Job> movable;
  int64_t unix_now = WallClockMs();
  // Read once a round, for every job at home: one read of /proc/locks, not one per job.
  std::set<pid_t> lock_holders;
  if (!jobs_.empty()) lock_holders = Job::LockHolders();
  auto offer = [&](uint64_t id, Job& job) {
    std::vector<pid_t> pids = job.Pids();  // read once: sampling and pinning both need them
    job.SampleUsage(now_ms, pids);
    const JobLaunch& launch = job.launch();
    bool partner_guest = launch.guest && !launch.home_cluster.empty();
    int64_t run_ms = launch.started_unix_ms > 0
                         ? std::max<int64_t>(unix_now - launch.started_unix_ms, 0)
                         : now_ms - job.arrived_ms();
    const std::vector<std::string>& groups = user_groups_.Of(job.uid());
    int partner_priority = 0;
    if (partner_guest) {
      const PartnerConfig* partner = config_.Partner(launch.home_cluster);
      partner_priority = partner ? partner->priority : 65535;
    }
    int priority = balance::JobPrecedence(precedence_, launch.guest, partner_priority, groups, run_ms);
    // A guest started with mosrun -L still leaves when forced out (priority above 0).
    if ((launch.locked && priority == 0) || launch.keep_home || job.state() != JobState::RUNNING) {
      return;
    }
    if (!job.PinnedReason(pids, lock_holders).empty()) return;
    const UsageMeter& usage = job.usage();
    balance::Job offered;
    offered.id = id;
    offered.home = launch.home;
    offered.guest = launch.guest;
    offered.demand = usage.demand();
    offered.memory_mb = usage.memory_mb();
    offered.min_free_mb = launch.min_free_mb;
    offered.run_ms = run_ms;
    offered.resident_ms = now_ms - job.arrived_ms();
    offered.home_io_bytes_per_s = launch.guest ? usage.io_bytes_per_s() : 0;
    offered.cpu_use = usage.cpu_use();
    offered.home_cluster = launch.home_cluster;
    offered.partners = launch.partners;
    offered.locked = launch.locked;
    offered.groups = groups;
    offered.priority = priority;
    movable.push_back(offered);
  };
  // A node that left the cluster keeps its jobs (its guests were sent away).
  for (auto& [slot, entry] : jobs_) {
    if (entry.here && !left_ && !vacating_) offer(static_cast<uint64_t>(slot), *entry.here);
  }
  for (auto& [id, job] : guests_) offer(kGuestIdBase + id, *job);
  return movable;
}

void JobRegistry::MoveAutomatically(uint64_t id, const std::string& target, MoveDone done) {
  if (id >= kGuestIdBase) {
    auto it = guests_.find(id - kGuestIdBase);
    if (it == guests_.end()) {
      done(MoveOutcome::Failure("the guest has ended"));
      return;
    }
    spdlog::info("balancer: moving guest {} (home {}) to {}", it->second->home_pid(),
                 it->second->launch().home, target);
    MigrateGuest(it->second, target, std::move(done));
    return;
  }
  auto it = jobs_.find(static_cast<int>(id));
  if (it == jobs_.end() || !it->second.here) {
    done(MoveOutcome::Failure("the job has ended or left"));
    return;
  }
  spdlog::info("balancer: moving job {} to {}", it->second.here->home_pid(), target);
  try {
    MoveFromHome(it->first, it->second.here, target, done);
  } catch (const Error& e) {
    done(MoveOutcome::Failure(e.what(), e.kind()));
  }
}

void JobRegistry::Admin(schema::AdminRequest::Reader request, ReplySender reply) {
  // Local root only: checked by the permission table (control_permissions.h).
  auto action = request.getAction();
  using Action = schema::AdminRequest::Action;
  if (action == Action::LEAVE) {
    left_ = true;
    spdlog::info("node {} leaves the cluster: its guests go, its jobs come home", config_.name);
  }
  if (action == Action::JOIN) {
    left_ = false;
    spdlog::info("node {} takes part in the cluster again", config_.name);
  }
  if (action == Action::BLOCK || action == Action::EXPEL || action == Action::LEAVE) {
    blocked_ = true;
  }
  if (action == Action::UNBLOCK || action == Action::JOIN) blocked_ = false;
  if (on_change_) on_change_();  // gossip tells the cluster at once
  auto run = std::make_shared<AdminRun>(std::move(reply), blocked_, left_);
  if (action == Action::EXPEL || action == Action::LEAVE) ExpelGuests(run);
  if (action == Action::BRING || action == Action::LEAVE) BringJobsHome(run);
  run->AllStarted();
}

void JobRegistry::Vacate(ReplySender reply, VacateFinish finish, VacateRules stays) {
  bool was_blocked = blocked_;
  blocked_ = true;
  vacating_ = true;
  if (on_change_) on_change_();
  auto run = std::make_shared<AdminRun>(
      std::move(reply), true, left_,
      [this, was_blocked, stays, finish = std::move(finish)](schema::AdminReport::Builder report) {
        vacating_ = false;
        bool clear =
            std::all_of(guests_.begin(), guests_.end(),
                        [&](const auto& guest) {
                          return Keeps(stays.guest_stays, ClusterOfHome(guest.second->launch()));
                        }) &&
            std::all_of(jobs_.begin(), jobs_.end(), [&](const auto& entry) {
              const auto& away = entry.second.away;
              return !away || away->frozen ||  // frozen at home: continued after the restart
                     Keeps(stays.away_stays, ClusterOfNode(away->where()));
            });
        if (!clear) {
          blocked_ = was_blocked;
          if (on_change_) on_change_();
        }
        report.setBlocked(blocked_);
        finish(clear, report);
      });
  ExpelGuests(run, stays.guest_stays);
  BringJobsHome(run, stays.away_stays);
  run->AllStarted();
}

std::string JobRegistry::ClusterOfHome(const JobLaunch& launch) const {
  return launch.home_cluster.empty() ? config_.cluster : launch.home_cluster;
}

std::string JobRegistry::ClusterOfNode(const std::string& node) const {
  auto known = nodes_ ? nodes_->Find(node) : std::nullopt;
  return known && !known->cluster.empty() ? known->cluster : config_.cluster;
}

bool JobRegistry::OutputOwed() const {
  return std::any_of(jobs_.begin(), jobs_.end(), [](const auto& entry) {
    return entry.second.here && entry.second.here->output_base_pending();
  });
}

void JobRegistry::ExpelGuests(const std::shared_ptr<AdminRun>& run, const ClusterStays& stays) {
  // Every guest goes home; one whose home cannot take it goes to the best other node.
  std::vector<std::shared_ptr<Job>> guests;
  for (auto& [id, job] : guests_) {
    if (!Keeps(stays, ClusterOfHome(job->launch()))) guests.push_back(job);
  }
  for (auto& job : guests) {
    std::string home = job->launch().home;
    pid_t home_pid = job->home_pid();
    run->Started();
    MigrateGuest(job, home, [this, run, job, home, home_pid](const MoveOutcome& outcome) {
      if (outcome.error.empty()) {
        run->Ended(home_pid, home, config_.name, outcome.where, "");
        return;
      }
      std::vector<balance::Node> others;
      for (auto& node : picture_()) {
        if (node.name != config_.name && node.name != home) others.push_back(node);
      }
      auto elsewhere = balance::BestNode(others, config_.name, job->launch().min_free_mb);
      if (!elsewhere) {
        run->Ended(home_pid, home, config_.name, home,
                   fmt::format("{}; and no other node can take it", outcome.error));
        return;
      }
      MigrateGuest(job, *elsewhere, [run, home, home_pid, this](const MoveOutcome& second) {
        run->Ended(home_pid, home, config_.name, second.where, second.error);
      });
    });
  }
}

void JobRegistry::BringJobsHome(const std::shared_ptr<AdminRun>& run, const ClusterStays& stays) {
  for (auto& [slot, entry] : jobs_) {
    if (!entry.away || entry.away->frozen) continue;
    if (Keeps(stays, ClusterOfNode(entry.away->where()))) continue;
    auto away = entry.away;
    std::string from = away->where();
    pid_t home_pid = away->home_pid();
    run->Started();
    auto done = [this, run, from, home_pid, slot](const MoveOutcome& outcome) {
      // Home to stay: KeepRoom freezes it if it finds no room.
      if (outcome.error.empty() && left_) brought_home_.insert(slot);
      run->Ended(home_pid, config_.name, from, config_.name, outcome.error);
    };
    try {
      MoveAway(away, config_.name, done);
    } catch (const Error& e) {
      done(MoveOutcome::Failure(e.what(), e.kind()));
    }
  }
}

}  // namespace homeward
