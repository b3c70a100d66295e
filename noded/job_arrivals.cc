// Arrivals: jobs CRIU restored on a peer server thread (guests, and jobs of this home
// coming back), handed to the loop and taken over there.
#include "job_registry.h"

#include <capnp/serialize.h>
#include <spdlog/spdlog.h>

#include "job_replies.h"
#include "migration.h"
#include "peer_auth.h"

namespace homeward {

namespace {

constexpr auto kHomeConnectTimeout = std::chrono::seconds(5);

}  // namespace

void JobRegistry::AcceptMove(Fd fd) {
  MoveInContext context{config_.state_dir, init_path_, config_.name, faults_};
  JobLaunch launch;
  auto restored = RunMoveIn(
      std::move(fd), context, [this](auto spec) { return GuestLaunch(spec); }, &launch);
  if (!restored) return;
  if (launch.reattach) {
    // Moved on from another guest node: the job's relay goes straight to its home.
    try {
      Fd home = PeerConnect(launch.home_host, launch.home_port, config_.cluster_key, "jobs",
                            kHomeConnectTimeout);
      capnp::MallocMessageBuilder message;
      auto request = message.initRoot<schema::ControlRequest>();
      request.setVersion(schema::CONTROL_VERSION);
      auto attach = request.initAttachGuest();
      attach.setHomePid(launch.identity.home_pid);
      attach.setNode(config_.name);
      capnp::writeMessageToFd(home.get(), message);
      restored->connection = std::move(home);
    } catch (const std::exception& e) {
      spdlog::error("job {} was restored here but its home {} cannot be reached: {}; killing it",
                    launch.identity.home_pid, launch.home, e.what());
      ::kill(restored->init_pid, SIGKILL);
      return;
    }
  }
  {
    std::lock_guard lock(restored_mutex_);
    restored_.push_back(Restored{std::move(restored->connection), restored->init_pid,
                                 std::move(restored->ends), std::move(launch)});
  }
  uv_async_send(restored_wakeup_.get());
}

void JobRegistry::ComeHome(Restored& restored) {
  pid_t home_pid = restored.launch.identity.home_pid;
  for (auto& [slot, entry] : jobs_) {
    if (!entry.away || entry.away->home_pid() != home_pid) continue;
    auto away = entry.away;
    if (!away->protocol.ExpectsArrival()) break;
    auto weak_job = std::make_shared<std::weak_ptr<Job>>();
    int job_slot = slot;
    auto job = std::make_shared<Job>(loop_, std::move(restored.launch), away->mosrun,
                                     [this, job_slot](Job&) { jobs_.erase(job_slot); });
    *weak_job = job;
    try {
      job->Adopt(restored.init_pid, std::move(restored.ends));
    } catch (const Error& e) {
      ::kill(restored.init_pid, SIGKILL);
      Apply(job_slot, away, away->protocol.Lost(fmt::format("cannot take back job {}: {}",
                                                            home_pid, e.what())));
      return;
    }
    // The away record leaves the table but lives on in its old relay's handlers, where
    // the old node's word (or its close) answers a waiting move.
    auto step = away->protocol.Arrived(config_.name);
    job->set_migrations(away->protocol.record().migrations);
    away->mosrun.SetHandlers(RelayHandlersFor(weak_job));
    away->mosrun.PauseReading(false);
    entry.here = job;
    entry.away.reset();
    spdlog::info("job {} is back home", home_pid);
    Apply(job_slot, away, std::move(*step));
    return;
  }
  spdlog::error("job {} came home but its mosrun is gone; killing it", home_pid);
  ::kill(restored.init_pid, SIGKILL);
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
      continue;
    }
    uint64_t id = next_guest_++;
    auto weak_job = std::make_shared<std::weak_ptr<Job>>();
    Caller peer;
    peer.peer = true;
    ControlStream relay =
        control_.AdoptStream(std::move(one.connection), peer, RelayHandlersFor(weak_job));
    auto job = std::make_shared<Job>(loop_, std::move(one.launch), relay,
                                     [this, id](Job&) { guests_.erase(id); });
    *weak_job = job;
    try {
      job->Adopt(one.init_pid, std::move(one.ends));
      guests_[id] = job;
    } catch (const Error& e) {
      spdlog::error("cannot take over restored job (init {}): {}", one.init_pid, e.what());
      ::kill(one.init_pid, SIGKILL);
      relay.Close();
    }
  }
}

}  // namespace homeward
