// The job table: the node's home jobs (here or away) and guests, starting them,
// listing them and ending them all at shutdown.
#include "job_registry.h"

#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>
#include <optional>

#include <spdlog/spdlog.h>

#include "c_boundary.h"
#include "install_paths.h"
#include "job_replies.h"
#include "migration.h"
#include "uv_error.h"
#include "uv_work.h"

namespace homeward {

JobRegistry::JobRegistry(uv_loop_t* loop, const NodeConfig& config, ControlServer& control,
                         PeerResolver resolve, PictureSource picture, FaultPoints faults)
    : loop_(loop),
      config_(config),
      control_(control),
      resolve_(std::move(resolve)),
      picture_(std::move(picture)),
      init_path_(FindBesideExecutable({"mosjob-init", "../libexec/homeward/mosjob-init"})),
      preload_path_(FindBesideExecutable({"../preload/libmosix_preload.so", "libmosix_preload.so",
                                          "../lib/homeward/libmosix_preload.so"})),
      precedence_{config.group, config.others_priority,
                  std::chrono::duration_cast<std::chrono::milliseconds>(config.long_job_after).count(),
                  config.long_job_priority},
      faults_(std::move(faults)) {
  if (preload_path_.empty()) {
    spdlog::warn("libmosix_preload.so not found beside mosnoded: jobs run without the shim");
  }
}

JobRegistry::~JobRegistry() {
  *alive_ = false;
  KillAll();
}

void JobRegistry::DieAtSignal(Fault fault, const Job& job,
                              schema::NumberedSignal::Reader signal) const {
  if (!faults_.Hit(fault)) return;
  DieAtFaultPoint(fault, fmt::format("at signal {} (number {}) of job {}", signal.getSignal(),
                                     signal.getNumber(), job.home_pid()));
}

// The relay of a job running here: mosrun's (or its home's) input and signals go to it,
// and for a guest, its home's requests to move it on.
StreamHandlers JobRegistry::RelayHandlersFor(std::shared_ptr<std::weak_ptr<Job>> weak_job) {
  StreamHandlers handlers;
  handlers.on_message = [this, weak_job](IncomingMessage& incoming) {
    auto job = weak_job->lock();
    if (!job) return;  // the job has ended; late input has nowhere to go
    auto message = incoming.Root<schema::ControlRequest>();
    switch (message.which()) {
      case schema::ControlRequest::JOB_INPUT: {
        auto data = message.getJobInput();
        job->Input(Job::kNextInput, data.begin(), data.size());
        break;
      }
      case schema::ControlRequest::JOB_INPUT_AT: {
        auto chunk = message.getJobInputAt();
        auto data = chunk.getData();
        if (!job->launch().guest) {
          LogInput(job->home_pid(), chunk.getOffset(), data.begin(), data.size());
        }
        job->Input(chunk.getOffset(), data.begin(), data.size());
        break;
      }
      case schema::ControlRequest::JOB_INPUT_END:
        job->InputEnd(Job::kNextInput);
        break;
      case schema::ControlRequest::JOB_INPUT_END_AT:
        job->InputEnd(message.getJobInputEndAt());
        break;
      case schema::ControlRequest::JOB_SIGNAL:
        job->Signal(message.getJobSignal());
        break;
      case schema::ControlRequest::JOB_SIGNAL_NUMBERED: {
        auto numbered = message.getJobSignalNumbered();
        DieAtSignal(Fault::kKillBeforeSignal, *job, numbered);
        if (job->SignalNumbered(numbered.getSignal(), numbered.getNumber())) {
          DieAtSignal(Fault::kKillAfterSignal, *job, numbered);
          capnp::MallocMessageBuilder answer;
          answer.initRoot<schema::ControlReply>().setJobSignalDelivered(numbered.getNumber());
          job->relay().Send(answer);
        }
        break;
      }
      case schema::ControlRequest::RESUME_JOB: {
        if (!job->launch().guest) {
          Fail(ErrorKind::kInvalidInput, "only a guest's home tells it what output it has");
        }
        auto had = message.getResumeJob();
        job->OutputHad(had.getStdoutOffset(), had.getStderrOffset());
        break;
      }
      case schema::ControlRequest::MIGRATE_JOB:
        if (job->launch().guest && message.getMigrateJob().isCheckpointAway()) {
          CheckpointGuest(job, message.getMigrateJob().getCheckpointAway());
          break;
        }
        if (!job->launch().guest || !message.getMigrateJob().isMoveTo()) {
          Fail(ErrorKind::kInvalidInput,
               "only a guest's home moves it, to a node, through its relay");
        }
        MigrateGuest(job, message.getMigrateJob().getMoveTo());
        break;
      default:
        Fail(ErrorKind::kInvalidInput, "a job's relay carries input and signals only");
    }
  };
  handlers.on_close = [this, weak_job] {
    if (auto job = weak_job->lock()) RelayClosed(job);
  };
  return handlers;
}

int JobRegistry::FreeSlot() const {
  for (int slot = 0; slot < kMaxJobs; ++slot) {
    if (!jobs_.count(slot)) return slot;
  }
  Fail(ErrorKind::kOverloaded, "this node already has {} jobs, the most it can", kMaxJobs);
}

std::vector<std::string> JobRegistry::NodesOf(pid_t home_pid) const {
  for (const auto& [slot, job] : jobs_) {
    if (!job.away || job.away->protocol.record().home_pid != home_pid) continue;
    const move::Record& record = job.away->protocol.record();
    std::vector<std::string> nodes;
    switch (record.state) {
      case move::State::kStarting:   // its node was asked to start it
      case move::State::kRunning:
      case move::State::kAsked:      // runs there until its move is done
      case move::State::kArrived:    // `where` is the new node already
      case move::State::kRelayLost:  // runs there still, while its daemon restarts
        nodes.push_back(record.where);
        break;
      case move::State::kAnnounced:  // left `where` for a node that has not attached yet
        nodes.push_back(record.where);
        if (!record.moved_to.empty() && record.moved_to != record.where) {
          nodes.push_back(record.moved_to);
        }
        break;
      case move::State::kFrozen:  // on this node's disk, or being restored here
      case move::State::kContinuing:
      case move::State::kEnded:
        break;
    }
    return nodes;
  }
  return {};
}

uint32_t JobRegistry::jobs_away() const {
  uint32_t count = 0;
  for (const auto& [slot, job] : jobs_) count += job.away ? 1 : 0;
  return count;
}

JobLaunch JobRegistry::LaunchFrom(schema::JobSpec::Reader spec) const {
  if (init_path_.empty()) {
    Fail(ErrorKind::kFailed, "mosjob-init is missing beside mosnoded; the installation is broken");
  }
  if (spec.getArgv().size() == 0) Fail(ErrorKind::kInvalidInput, "no program to run");
  JobLaunch launch;
  for (auto arg : spec.getArgv()) launch.argv.emplace_back(arg.cStr());
  for (auto entry : spec.getEnv()) launch.env.emplace_back(entry.cStr());
  launch.cwd = spec.getCwd();
  if (launch.cwd.empty() || launch.cwd[0] != '/') {
    Fail(ErrorKind::kInvalidInput, "the working directory must be an absolute path, not '{}'",
         launch.cwd);
  }
  launch.keep_home = spec.getKeepHome();
  launch.locked = spec.getLocked();
  launch.min_free_mb = spec.getMinFreeMb();
  launch.partners = spec.getPartners();
  launch.checkpoint = PlanFrom(spec);
  launch.init_path = init_path_;
  launch.preload_path = preload_path_;
  return launch;
}

std::shared_ptr<Job> JobRegistry::RunHere(JobLaunch launch, ReplySender& reply,
                                          std::function<void()> finished,
                                          std::function<void(Job&)> prepare) {
  auto weak_job = std::make_shared<std::weak_ptr<Job>>();
  StreamHandlers handlers = RelayHandlersFor(weak_job);
  ControlStream relay = reply.OpenStream(std::move(handlers));
  auto job = std::make_shared<Job>(loop_, std::move(launch), relay, [this, finished](Job& job) {
    JobEnded(job);
    finished();
  });
  *weak_job = job;
  WatchCheckpointAsks(job);
  try {
    if (prepare) prepare(*job);
    job->Start();
    if (faults_.Hit(Fault::kSignalAtStart)) {
      spdlog::info("fault point signal-at-start: job {} sent SIGTERM as its init runs",
                   job->home_pid());
      job->Signal(SIGTERM);
    }
  } catch (const Error& e) {
    SendExit(relay, 126, e.what());
    relay.Close();
    return nullptr;
  }
  capnp::MallocMessageBuilder message;
  auto started = message.initRoot<schema::ControlReply>().initJobStarted();
  started.setHomePid(job->home_pid());
  started.setWhere(config_.name);
  relay.Send(message);
  return job;
}

void JobRegistry::StartJob(schema::JobSpec::Reader spec, ReplySender reply) {
  const Caller& caller = reply.caller();  // a local user: control_permissions.h
  JobLaunch launch = LaunchFrom(spec);
  launch.home = config_.name;
  launch.identity = JobIdentity::OfProcess(caller.pid, caller.uid, caller.gid);
  launch.started_unix_ms = WallClockMs();
  int slot = FreeSlot();
  launch.pid_base = PidBase(slot);
  PlanCheckpoints(slot, launch.identity, launch.checkpoint, launch.started_unix_ms,
                  /*fresh_log=*/true);
  std::string where = Place(launch, spec.getWhere(), spec.getPlaceBest());
  if (!where.empty() && where != config_.name) {
    StartAway(slot, std::move(launch), where, std::move(reply));
    return;
  }
  auto job = RunHere(std::move(launch), reply, [this, slot] { jobs_.erase(slot); },
                     [this, slot](Job& job) { KeepJob(job, slot); });
  if (job) jobs_[slot].here = job;
}

JobLaunch JobRegistry::GuestLaunch(schema::GuestSpec::Reader spec) const {
  JobLaunch launch = LaunchFrom(spec.getJob());
  launch.home = spec.getHome();
  if (launch.home.empty() || launch.home.find('/') != std::string::npos || launch.home == "." ||
      launch.home == "..") {
    Fail(ErrorKind::kInvalidInput, "'{}' is not a node name", launch.home);
  }
  launch.identity = ReadIdentity(spec.getIdentity());
  launch.pid_base = spec.getPidBase();
  launch.generation = spec.getGeneration();
  launch.started_unix_ms = static_cast<int64_t>(spec.getStartedUnixMs());
  launch.home_host = spec.getHomeHost();
  launch.home_port = spec.getHomePort();
  // Older senders name no cluster: their own, which is this one.
  std::string home_cluster = spec.getHomeCluster();
  if (!home_cluster.empty() && !ValidNodeName(home_cluster)) {
    Fail(ErrorKind::kInvalidInput, "'{}' is not a cluster name", home_cluster);
  }
  if (!config_.OwnCluster(home_cluster)) launch.home_cluster = home_cluster;
  if (launch.home == config_.name && launch.home_cluster.empty()) {
    launch.root.assign(1, '/');  // a job of ours coming home (not = "/": GCC 12 -Wrestrict)
    return launch;
  }
  if (blocked_) {
    Fail(ErrorKind::kOverloaded, "node {} accepts no guests (mosctl block)", config_.name);
  }
  launch.reattach = spec.getReattach();
  launch.root = config_.mosix_root + "/home/" + launch.home;
  launch.guest = true;
  launch.home_credentials = HomeCredentials(launch);  // its loopback connections go home
  launch.daemon_ports = {config_.peer_port, config_.gossip_port};
  return launch;
}

void CheckHomeSeen(const std::string& node, const std::string& mosix_root,
                   const JobLaunch& launch) {
  // Looking the home up in homefs reaches it: its first use here connects, which takes up
  // to homefs's connect timeout for a listed home that does not answer.
  struct stat root_stat, mosix_stat;
  if (::stat(launch.root.c_str(), &root_stat) != 0) {
    Fail(ErrorKind::kFailed, "node {} does not see node {}'s files ({}: {})", node, launch.home,
         launch.root, std::strerror(errno));
  }
  if (::stat(mosix_root.c_str(), &mosix_stat) != 0 || root_stat.st_dev == mosix_stat.st_dev) {
    Fail(ErrorKind::kFailed, "node {} does not see node {}'s files yet ({} is not mounted)",
         node, launch.home, launch.root);
  }
}

void JobRegistry::StartGuest(schema::GuestSpec::Reader spec, ReplySender reply) {
  auto launch = std::make_shared<JobLaunch>(GuestLaunch(spec));
  if (!launch->guest) Fail(ErrorKind::kInvalidInput, "a job of this home is not a guest here");
  // The check may wait on the network, so it runs off the loop; the start comes back to it.
  auto failure = std::make_shared<std::optional<Error>>();
  auto pending = std::make_shared<ReplySender>(std::move(reply));
  pending->HoldLaterMessages(true);  // the job's input follows the request at once
  int status = QueueWork(
      loop_,
      [node = config_.name, mosix_root = config_.mosix_root, launch, failure] {
        try {
          CheckHomeSeen(node, mosix_root, *launch);
        } catch (const Error& e) {
          failure->emplace(e);
        }
      },
      [this, alive = alive_, launch, failure, pending] {
        if (!*alive) return;
        if (*failure) {
          pending->SendError(**failure);
          return;
        }
        uint64_t id = next_guest_++;
        auto job = RunHere(std::move(*launch), *pending, [this, id] { guests_.erase(id); },
                           [this](Job& job) { KeepJob(job, -1); });
        if (job) {
          guests_[id] = job;
          if (on_arrival_) on_arrival_();
        }
        pending->HoldLaterMessages(false);
      });
  if (status < 0) Fail(ErrorKind::kFailed, "cannot start the guest: {}", uv_strerror(status));
}

void JobRegistry::Start() {
  CheckUv(uv_async_init(loop_, restored_wakeup_.get(),
                        [](uv_async_t* async) {
                          GuardedCall("taking over restored jobs", [async] {
                            static_cast<JobRegistry*>(async->data)->TakeRestored();
                          });
                        }),
          "job registry wake-up");
  restored_wakeup_.get()->data = this;
  CheckUv(uv_check_init(loop_, input_sync_.get()), "input log sync");
  input_sync_.get()->data = this;
  // The counts gossip publishes are refreshed each second rather than threaded through
  // every place a job starts, moves or ends; overdue attaches are found on the same tick.
  CheckUv(uv_timer_init(loop_, counts_timer_.get()), "job counts timer");
  counts_timer_.get()->data = this;
  CheckUv(uv_timer_start(counts_timer_.get(), OnCountsTimer, 0, 1000), "job counts timer");
  Recover();
  whereabouts_.Start(loop_, [this](pid_t home_pid) { return NodesOf(home_pid); });
  StartCheckpointTimer();
}

void JobRegistry::OnCountsTimer(uv_timer_t* timer) {
  GuardedCall("job counts", [timer] {
    auto* self = static_cast<JobRegistry*>(timer->data);
    self->EndOverdueAttaches();
    self->JournalAways();
    self->FreezeOverdueGuests();
    self->KeepRoom();
    if (self->on_change_) self->on_change_();
  });
}

void JobRegistry::JournalSoon() {
  // The tick runs at once and then each second again, as before.
  int status = uv_timer_start(counts_timer_.get(), OnCountsTimer, 0, 1000);
  if (status < 0) spdlog::warn("cannot journal the jobs away at once: {}", uv_strerror(status));
}

void JobRegistry::ListJobs(ReplySender reply) const {
  capnp::MallocMessageBuilder message;
  DescribeJobs(message.initRoot<schema::ControlReply>().initJobs());
  reply.Send(message);
}

void JobRegistry::DescribeJobs(schema::JobList::Builder reply_jobs) const {
  reply_jobs.setCluster(config_.cluster);
  auto list = reply_jobs.initJobs(static_cast<unsigned>(jobs_.size() + guests_.size()));
  unsigned i = 0;
  std::set<pid_t> lock_holders = Job::LockHolders();  // once for the whole list
  auto describe = [&](const Job& job, schema::JobInfo::Builder info) {
    info.setHomePid(job.home_pid());
    info.setHome(job.launch().home);
    info.setWhere(config_.name);
    info.setState(job.state());
    info.setCmd(job.command());
    info.setCpuMs(job.cpu_ms());
    info.setUid(job.uid());
    info.setGuest(job.launch().guest);
    info.setMigrations(job.migrations());
    info.setPinned(job.PinnedReason(job.Pids(), lock_holders));
    info.setLocked(job.launch().locked);
    info.setPartners(job.launch().partners);
    info.setHomeCluster(ClusterOfHome(job.launch()));
    info.setWhereCluster(config_.cluster);
  };
  for (const auto& [slot, job] : jobs_) {
    auto info = list[i++];
    if (job.here) {
      describe(*job.here, info);
    } else {
      const move::Record& record = job.away->protocol.record();
      info.setHomePid(record.home_pid);
      info.setHome(config_.name);
      info.setWhere(record.where);
      info.setMigrations(record.migrations);
      info.setState(job.away->frozen                         ? JobState::FROZEN
                    : record.state == move::State::kStarting ? JobState::STARTING
                                                             : JobState::RUNNING);
      if (job.away->frozen) info.setWhere(config_.name);
      info.setCmd(job.away->command);
      info.setUid(job.away->uid);
      info.setLocked(job.away->locked);
      info.setPartners(job.away->partners);
      info.setHomeCluster(config_.cluster);
      info.setWhereCluster(ClusterOfNode(job.away->frozen ? config_.name : record.where));
    }
  }
  for (const auto& [id, job] : guests_) describe(*job, list[i++]);
}

std::vector<pid_t> JobRegistry::HomeJobInits() const {
  std::vector<pid_t> inits;
  for (const auto& [slot, job] : jobs_) {
    if (job.here && job.here->init_pid() > 0) inits.push_back(job.here->init_pid());
  }
  return inits;
}

void JobRegistry::KillAll() {
  auto jobs = std::move(jobs_);
  jobs_.clear();
  for (auto& [slot, job] : jobs) {
    if (job.here) job.here->Kill();
    if (job.away) {
      if (job.away->frozen) migrate::RemoveImageDir(job.away->frozen->dir);
      ForgetAway(*job.away);
      job.away->protocol.MosrunGone();  // the daemon's end: nobody hears of it
      job.away->peer.Close();
      job.away->mosrun.Close();
    }
  }
  DropFrozenGuests();
  whereabouts_.Stop();
  restored_wakeup_.Close();
  counts_timer_.Close();
  auto guests = std::move(guests_);
  guests_.clear();
  for (auto& [id, job] : guests) job->Kill();
}

}  // namespace homeward
