// Arrivals: jobs CRIU restored on a peer server thread (guests, and jobs of this home
// coming back), handed to the loop and taken over there.
#include "job_registry.h"

#include <capnp/serialize.h>
#include <signal.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <chrono>
#include <thread>

#include "job_replies.h"
#include "migration.h"
#include "partner_services.h"
#include "peer_auth.h"

namespace homeward {

namespace {

constexpr auto kHomeConnectTimeout = std::chrono::seconds(5);

}  // namespace

std::string JobRegistry::CheckPartnersJob(JobLaunch& launch, const std::string& from_cluster) {
  if (!config_.OwnCluster(launch.home_cluster)) {
    // The partner's own job: its home is where gossip says, not where the sender says.
    auto known = nodes_ ? nodes_->Find(launch.home) : std::nullopt;
    std::string why = KnownHome(from_cluster, {launch.home, launch.home_cluster}, known);
    if (why.empty()) {
      launch.home_host = known->address;
      launch.home_port = known->peer_port;
    }
    return why;
  }
  // This home's job, coming back: only from a node of that partner that the home knows it
  // runs on now (or is moving to).
  for (const std::string& node : whereabouts_.NodesOf(launch.identity.home_pid)) {
    auto known = nodes_ ? nodes_->Find(node) : std::nullopt;
    if (known && known->cluster == from_cluster) return {};
  }
  return fmt::format("no job {} of this home runs in cluster '{}'", launch.identity.home_pid,
                     from_cluster);
}

void JobRegistry::AcceptMove(std::unique_ptr<SecureStream> fd, const std::string& from_cluster) {
  MoveInContext context{config_.state_dir, init_path_, config_.name, faults_,
                        home_lock_claims_};
  JobLaunch launch;
  auto make_launch = [this, &from_cluster](schema::GuestSpec::Reader spec) {
    JobLaunch launch = GuestLaunch(spec);
    std::string why = PartnerMayMoveIn(config_, from_cluster, {launch.home, launch.home_cluster});
    if (why.empty() && !config_.OwnCluster(from_cluster)) {
      why = CheckPartnersJob(launch, from_cluster);
    }
    if (!why.empty()) {
      Fail(ErrorKind::kPermissionDenied, "node {} takes no job of {}'s from {}: {}", config_.name,
           launch.home,
           config_.OwnCluster(from_cluster) ? std::string("this cluster")
                                            : fmt::format("cluster '{}'", from_cluster),
           why);
    }
    if (launch.guest) CheckHomeSeen(config_.name, config_.mosix_root, launch);
    return launch;
  };
  auto restored = RunMoveIn(std::move(fd), context, make_launch, &launch);
  if (!restored) return;
  if (launch.reattach) {
    // Moved on from another guest node: the job's relay goes straight to its home.
    try {
      Fd home = PeerConnect(launch.home_host, launch.home_port, HomeCredentials(launch), "jobs",
                            kHomeConnectTimeout);
      capnp::MallocMessageBuilder message;
      auto request = message.initRoot<schema::ControlRequest>();
      request.setVersion(schema::CONTROL_VERSION);
      auto attach = request.initAttachGuest();
      attach.setHomePid(launch.identity.home_pid);
      attach.setNode(config_.name);
      attach.setGeneration(launch.generation);
      if (restored->figures) FillMigrated(*restored->figures, attach.initMoved());
      capnp::writeMessageToFd(home.get(), message);
      restored->connection = std::move(home);
    } catch (const std::exception& e) {
      // Returning drops `restored`, whose ChildProcess kills and reaps the job's init.
      spdlog::error("job {} was restored here but its home {} cannot be reached: {}; killing it",
                    launch.identity.home_pid, launch.home, e.what());
      return;
    }
  }
  if (faults_.Hit(Fault::kAdoptHold)) {
    spdlog::warn("fault point adopt-hold: job {} runs here, taken over in {} s",
                 launch.identity.home_pid, kAdoptHoldSeconds);
    std::this_thread::sleep_for(std::chrono::seconds(kAdoptHoldSeconds));
  }
  {
    std::lock_guard lock(restored_mutex_);
    restored_.push_back(Restored{std::move(restored->connection), std::move(restored->init),
                                 std::move(restored->ends), std::move(launch),
                                 std::move(restored->figures)});
  }
  uv_async_send(restored_wakeup_.get());
}

std::shared_ptr<Job> JobRegistry::AdoptRestored(JobLaunch launch, ControlStream relay,
                                                ChildProcess init, DaemonEnds ends,
                                                std::function<void()> finished, int slot,
                                                bool hold_output) {
  auto job = std::make_shared<Job>(loop_, std::move(launch), std::move(relay),
                                   [this, finished = std::move(finished)](Job& job) {
                                     JobEnded(job);
                                     finished();
                                   });
  // A throw from here on leaves the init with `init` or the job, either of which kills
  // and reaps it.
  faults_.Check(Fault::kAdoptRestored);
  WatchCheckpointAsks(job);
  // A guest survives a restart of this daemon as one started here does (job_recovery.cc).
  if (job->launch().guest || slot >= 0) KeepJob(*job, slot);
  job->HoldOutput(hold_output);  // before Adopt reads the pipes
  job->Adopt(std::move(init), std::move(ends));
  // Taken over (and journaled, for a guest): the restore's intent is done.
  RemoveRestoreIntent(config_.state_dir + "/jobs", job->pipe_inodes()[1]);
  return job;
}

void JobRegistry::ComeHome(Restored& restored) {
  pid_t home_pid = restored.launch.identity.home_pid;
  for (auto& [slot, entry] : jobs_) {
    if (!entry.away || entry.away->home_pid() != home_pid) continue;
    auto away = entry.away;
    if (!away->protocol.ExpectsArrival()) break;
    if (restored.launch.generation != away->protocol.record().generation) {
      // A copy of an older run of the job, restarted here from a checkpoint since.
      spdlog::warn("job {}: a copy of run {} came home, but the job is at run {}; killing it",
                   home_pid, restored.launch.generation, away->protocol.record().generation);
      return;
    }
    if (restored.launch.identity.uid != away->uid) {
      // The job's node cannot make it another user's on the way.
      spdlog::warn("job {} of uid {} came home as uid {}; killing it", home_pid, away->uid,
                   restored.launch.identity.uid);
      return;
    }
    auto weak_job = std::make_shared<std::weak_ptr<Job>>();
    int job_slot = slot;
    std::shared_ptr<Job> job;
    // The old node still owes mosrun what the job left in its pipes there unless it said
    // it is done (kAnnounced) or is gone (kRelayLost).
    move::State before = away->protocol.record().state;
    bool owed = before == move::State::kRunning || before == move::State::kAsked;
    try {
      job = AdoptRestored(std::move(restored.launch), away->mosrun, std::move(restored.init),
                          std::move(restored.ends), [this, job_slot] { jobs_.erase(job_slot); },
                          job_slot, owed);
    } catch (const Error& e) {
      Apply(job_slot, away,
            away->protocol.Lost(fmt::format("cannot take back job {}: {}", home_pid, e.what())));
      return;
    }
    *weak_job = job;
    // The away record leaves the table but lives on in its old relay's handlers, where
    // the old node's word (or its close) answers a waiting move.
    uint32_t old_relay = away->protocol.record().relay;
    auto step = away->protocol.Arrived(config_.name, restored.figures.value_or(MoveOutcome()));
    if (away->protocol.OldOutputOwed()) {
      // The old node has not yet sent what the job left in its pipes there: the job's
      // output here waits for it, so that mosrun gets the job's output in order. The old
      // relay, paused while mosrun is behind, reads on when mosrun has drained.
      away->leaving = away->peer;
      away->leaving_relay = old_relay;
      job->AlsoWhenRelayDrains([away] { away->leaving.PauseReading(false); });
      job->set_output_base_pending();
      away->release_output = [weak = std::weak_ptr<Job>(job), away] {
        if (auto job = weak.lock()) {
          // Everything from the old node is in: the job's output here follows it.
          job->AlsoWhenRelayDrains(nullptr);
          job->set_output_base(away->origin[1] + away->forwarded[1],
                               away->origin[2] + away->forwarded[2]);
          job->HoldOutput(false);
        }
      };
    } else {
      job->set_output_base(away->origin[1] + away->forwarded[1],
                           away->origin[2] + away->forwarded[2]);
    }
    job->set_migrations(away->protocol.record().migrations);
    away->mosrun.SetHandlers(RelayHandlersFor(weak_job));
    away->mosrun.PauseReading(false);
    entry.here = job;
    away->journaled.clear();  // the entry of the job here has replaced the one away
    away->journaled_inputs.reset();
    entry.away.reset();
    spdlog::info("job {} is back home", home_pid);
    if (job->output_base_pending() && faults_.Hit(Fault::kKillAfterHomecoming)) {
      DieAtFaultPoint(Fault::kKillAfterHomecoming,
                      fmt::format("while job {}'s old node still sends its output", home_pid));
    }
    Apply(job_slot, away, std::move(*step));
    return;
  }
  // The restored init goes with `restored`, killed and reaped.
  spdlog::error("job {} came home but its mosrun is gone; killing it", home_pid);
}

void JobRegistry::ArriveAsGuest(Restored& restored) {
  uint64_t id = next_guest_++;
  auto weak_job = std::make_shared<std::weak_ptr<Job>>();
  Caller peer;
  peer.peer = true;
  ControlStream relay =
      control_.AdoptStream(std::move(restored.connection), peer, RelayHandlersFor(weak_job));
  pid_t init_pid = restored.init.pid();
  if (!relay.open()) {  // no relay to its home: a guest nobody can reach
    // Returning drops `restored`, whose ChildProcess kills and reaps the job's init.
    spdlog::error("restored job (init {}) has no relay to its home; killing it", init_pid);
    return;
  }
  try {
    auto job = AdoptRestored(std::move(restored.launch), relay, std::move(restored.init),
                             std::move(restored.ends), [this, id] { guests_.erase(id); });
    *weak_job = job;
    guests_[id] = job;
  } catch (const Error& e) {
    spdlog::error("cannot take over restored job (init {}): {}", init_pid, e.what());
    // Said before the relay closes: a relay that just closes is a daemon that may come
    // back, which its home waits for ("Daemon restarts").
    SendExit(relay, 255, fmt::format("node {} cannot take the job over: {}", config_.name,
                                     e.what()));
    relay.Close();
  }
}

void JobRegistry::TakeRestored() {
  std::vector<Restored> restored;
  {
    std::lock_guard lock(restored_mutex_);
    restored.swap(restored_);
  }
  for (auto& one : restored) {
    if (on_arrival_) on_arrival_();
    if (one.launch.home == config_.name) {
      ComeHome(one);
    } else {
      ArriveAsGuest(one);
    }
  }
}

}  // namespace homeward
