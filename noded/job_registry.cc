// The node's job registry: home jobs here and away, and guests.
#include "job_registry.h"

#include <sys/stat.h>
#include <unistd.h>

#include <capnp/message.h>
#include <capnp/serialize.h>
#include <spdlog/spdlog.h>

#include "c_boundary.h"
#include "checkpoint.h"
#include "checkpoint_dir.h"
#include "control_permissions.h"
#include "error.h"
#include "install_paths.h"
#include "migration.h"
#include "peer_auth.h"
#include "uv_error.h"
#include "uv_work.h"

namespace homeward {

namespace {

constexpr auto kPeerConnectTimeout = std::chrono::seconds(5);
// How long a job moved on from one guest node may take to show up from the next.
constexpr int64_t kAttachTimeoutMs = 30000;

void SendExit(ControlStream& stream, int code, const std::string& why) {
  capnp::MallocMessageBuilder message;
  auto exit = message.initRoot<schema::ControlReply>().initJobExited();
  exit.setCode(code);
  exit.setMessage(why);
  stream.Send(message);
}

// Forwards one message unchanged from one side of a relay to the other.
template <typename Root>
void Forward(IncomingMessage& incoming, ControlStream& to) {
  capnp::MallocMessageBuilder message;
  message.setRoot(incoming.Root<Root>());
  to.Send(message);
}

void FillIdentity(const JobIdentity& id, schema::JobIdentity::Builder out) {
  out.setUid(id.uid);
  out.setGid(id.gid);
  auto groups = out.initGroups(static_cast<unsigned>(id.groups.size()));
  for (unsigned i = 0; i < id.groups.size(); ++i) groups.set(i, id.groups[i]);
  out.setUmask(id.umask);
  auto limits = out.initLimits(static_cast<unsigned>(id.limits.size()));
  for (unsigned i = 0; i < id.limits.size(); ++i) {
    limits[i].setResource(id.limits[i].resource);
    limits[i].setSoft(id.limits[i].soft);
    limits[i].setHard(id.limits[i].hard);
  }
  out.setHomePid(id.home_pid);
  out.setHomePpid(id.home_ppid);
}

JobIdentity ReadIdentity(schema::JobIdentity::Reader in) {
  JobIdentity id;
  id.uid = in.getUid();
  id.gid = in.getGid();
  for (auto group : in.getGroups()) id.groups.push_back(group);
  id.umask = static_cast<mode_t>(in.getUmask() & 07777);
  for (auto limit : in.getLimits()) {
    id.limits.push_back({limit.getResource(), limit.getSoft(), limit.getHard()});
  }
  id.home_pid = in.getHomePid();
  id.home_ppid = in.getHomePpid();
  return id;
}

// Answers a control request with how the move it asked for ended.
MoveDone ReplyWhenMoved(ReplySender reply) {
  auto pending = std::make_shared<ReplySender>(std::move(reply));
  return [pending](const MoveOutcome& outcome) {
    if (!outcome.error.empty()) {
      pending->SendError(Error(outcome.kind, outcome.error));
      return;
    }
    capnp::MallocMessageBuilder message;
    auto migrated = message.initRoot<schema::ControlReply>().initMigrated();
    migrated.setWhere(outcome.where);
    migrated.setFrozenMs(outcome.frozen_ms);
    migrated.setTotalMs(outcome.total_ms);
    migrated.setImageBytes(outcome.image_bytes);
    pending->Send(message);
  };
}

MoveOutcome OutcomeOf(const MoveOut& move) {
  MoveOutcome outcome;
  outcome.error = move.error;
  outcome.where = move.target_name;
  outcome.frozen_ms = static_cast<uint64_t>(move.frozen.count());
  outcome.total_ms = static_cast<uint64_t>(move.total.count());
  outcome.image_bytes = move.image_bytes;
  return outcome;
}

}  // namespace

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
      faults_(std::move(faults)) {
  if (preload_path_.empty()) {
    spdlog::warn("libmosix_preload.so not found beside mosnoded: jobs run without the shim");
  }
}

JobRegistry::~JobRegistry() {
  *alive_ = false;
  KillAll();
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
        job->Input(data.begin(), data.size());
        break;
      }
      case schema::ControlRequest::JOB_INPUT_END:
        job->InputEnd();
        break;
      case schema::ControlRequest::JOB_SIGNAL:
        job->Signal(message.getJobSignal());
        break;
      case schema::ControlRequest::MIGRATE_JOB:
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
  handlers.on_close = [weak_job] {
    if (auto job = weak_job->lock()) job->RelayLost();
  };
  return handlers;
}

std::shared_ptr<JobRegistry::Away> JobRegistry::AwayFrom(Job& job) {
  auto away = std::make_shared<Away>();
  away->home_pid = job.home_pid();
  away->uid = job.uid();
  away->command = job.command();
  away->locked = job.launch().locked;
  away->mosrun = job.relay();
  away->migrations = job.migrations();
  return away;
}

int JobRegistry::FreeSlot() const {
  for (int slot = 0; slot < kMaxJobs; ++slot) {
    if (!jobs_.count(slot)) return slot;
  }
  Fail(ErrorKind::kOverloaded, "this node already has {} jobs, the most it can", kMaxJobs);
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
  launch.init_path = init_path_;
  launch.preload_path = preload_path_;
  return launch;
}

std::shared_ptr<Job> JobRegistry::RunHere(JobLaunch launch, ReplySender& reply,
                                          std::function<void()> finished) {
  auto weak_job = std::make_shared<std::weak_ptr<Job>>();
  StreamHandlers handlers = RelayHandlersFor(weak_job);
  ControlStream relay = reply.OpenStream(std::move(handlers));
  auto job =
      std::make_shared<Job>(loop_, std::move(launch), relay, [finished](Job&) { finished(); });
  *weak_job = job;
  try {
    job->Start();
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
  std::string where = Place(launch, spec.getWhere(), spec.getPlaceBest());
  if (!where.empty() && where != config_.name) {
    StartAway(slot, std::move(launch), where, std::move(reply));
    return;
  }
  auto job = RunHere(std::move(launch), reply, [this, slot] { jobs_.erase(slot); });
  if (job) jobs_[slot].here = job;
}

void JobRegistry::StartAway(int slot, JobLaunch launch, const std::string& where,
                            ReplySender reply) {
  PeerAddress address = resolve_(where);
  auto request = GuestRequest(launch, where);

  auto away = std::make_shared<Away>();
  away->where = where;
  away->home_pid = launch.identity.home_pid;
  away->uid = launch.identity.uid;
  for (const auto& arg : launch.argv) away->command += (away->command.empty() ? "" : " ") + arg;
  away->locked = launch.locked;

  auto handlers = MosrunHandlersForAway(slot, away);
  away->mosrun = reply.OpenStream(std::move(handlers));
  away->mosrun.PauseReading(true);  // until the job's node has the job
  jobs_[slot].away = away;

  // The peer handshake blocks; it runs on libuv's thread pool, never on the loop.
  struct Connection {
    Fd fd;
    std::string error;
  };
  auto result = std::make_shared<Connection>();
  auto key = config_.cluster_key;
  int status = QueueWork(
      loop_,
      [result, address, key] {
        try {
          result->fd = PeerConnect(address.host, address.port, key, "jobs", kPeerConnectTimeout);
        } catch (const std::exception& e) {
          result->error = e.what();
        }
      },
      [this, alive = alive_, slot, away, result, request] {
        if (!*alive) return;
        if (!result->error.empty()) {
          EndAway(slot, fmt::format("cannot reach node {}: {}", away->where, result->error));
          return;
        }
        ConnectedAway(slot, away, std::move(result->fd), request);
      });
  if (status < 0) {
    EndAway(slot, fmt::format("cannot reach node {}: {}", where, uv_strerror(status)));
  }
}

void JobRegistry::ConnectedAway(int slot, std::shared_ptr<Away> away, Fd fd,
                                std::shared_ptr<capnp::MallocMessageBuilder> request) {
  auto it = jobs_.find(slot);
  if (it == jobs_.end() || it->second.away != away) return;  // mosrun left meanwhile
  JoinAway(slot, away, std::move(fd), request.get());
  spdlog::info("job {} started on {}: {}", away->home_pid, away->where, away->command);
}

std::shared_ptr<capnp::MallocMessageBuilder> JobRegistry::GuestRequest(
    const JobLaunch& launch, const std::string& where) const {
  auto request = std::make_shared<capnp::MallocMessageBuilder>();
  auto root = request->initRoot<schema::ControlRequest>();
  root.setVersion(schema::CONTROL_VERSION);
  auto guest = root.initStartGuest();
  auto job = guest.initJob();
  auto argv = job.initArgv(static_cast<unsigned>(launch.argv.size()));
  for (unsigned i = 0; i < launch.argv.size(); ++i) argv.set(i, launch.argv[i]);
  auto env = job.initEnv(static_cast<unsigned>(launch.env.size()));
  for (unsigned i = 0; i < launch.env.size(); ++i) env.set(i, launch.env[i]);
  job.setCwd(launch.cwd);
  job.setWhere(where);
  job.setKeepHome(launch.keep_home);
  job.setLocked(launch.locked);
  job.setMinFreeMb(launch.min_free_mb);
  guest.setStartedUnixMs(static_cast<uint64_t>(launch.started_unix_ms));
  if (launch.guest) {
    guest.setHome(launch.home);
    guest.setHomeHost(launch.home_host);
    guest.setHomePort(launch.home_port);
    guest.setReattach(where != launch.home);
  } else {
    guest.setHome(config_.name);
    guest.setHomeHost(config_.address);
    guest.setHomePort(config_.peer_port);
  }
  FillIdentity(launch.identity, guest.initIdentity());
  guest.setPidBase(launch.pid_base);
  return request;
}

StreamHandlers JobRegistry::MosrunHandlersForAway(int slot, std::shared_ptr<Away> away) {
  StreamHandlers handlers;
  handlers.on_message = [away](IncomingMessage& incoming) {
    auto message = incoming.Root<schema::ControlRequest>();
    switch (message.which()) {
      case schema::ControlRequest::JOB_INPUT:
      case schema::ControlRequest::JOB_INPUT_END:
      case schema::ControlRequest::JOB_SIGNAL:
        Forward<schema::ControlRequest>(incoming, away->peer);
        // Hold mosrun's input back while the job's node is slower to take it.
        if (away->peer.queued_bytes() > ControlStream::kHighWater) away->mosrun.PauseReading(true);
        break;
      default:
        Fail(ErrorKind::kInvalidInput, "a job's relay carries input and signals only");
    }
  };
  handlers.on_close = [this, slot, away] {
    if (away->exited) return;
    spdlog::info("job {}: its mosrun is gone; ending it on {}", away->home_pid, away->where);
    EndAway(slot, "");
  };
  return handlers;
}

StreamHandlers JobRegistry::PeerHandlersForAway(int slot, std::shared_ptr<Away> away) {
  uint32_t generation = ++away->generation;
  StreamHandlers handlers;
  handlers.on_message = [this, slot, away](IncomingMessage& incoming) {
    auto reply = incoming.Root<schema::ControlReply>();
    if (reply.isError() && away->pending_move) {
      // The job's node could not move it on: it runs on there.
      auto pending = std::move(away->pending_move);
      away->pending_move = nullptr;
      pending(MoveOutcome::Failure(fmt::format("job {} stays on {}: {}", away->home_pid,
                                               away->where, reply.getError().getMessage().cStr())));
      return;
    }
    if (reply.isError()) {
      EndAway(slot, fmt::format("node {} cannot run the job: {}", away->where,
                                reply.getError().getMessage().cStr()));
      return;
    }
    if (reply.isMigrated()) {
      // This relay closes next; the job's new node attaches on a connection of its own,
      // which may come after that close: the close is no longer the job's end.
      ++away->generation;
      auto migrated = reply.getMigrated();
      MoveOutcome outcome;
      outcome.where = migrated.getWhere();
      outcome.frozen_ms = migrated.getFrozenMs();
      outcome.total_ms = migrated.getTotalMs();
      outcome.image_bytes = migrated.getImageBytes();
      if (!away->arrived && outcome.where != config_.name) {
        away->attach_due_ms = static_cast<int64_t>(uv_now(loop_)) + kAttachTimeoutMs;
      }
      away->announced = outcome;
      MoveEventSeen(*away);
      return;
    }
    Forward<schema::ControlReply>(incoming, away->mosrun);
    if (reply.isJobExited()) {
      away->exited = true;
      away->mosrun.Close();
      away->peer.Close();
      jobs_.erase(slot);
      return;
    }
    // Hold the job's output back while mosrun is slower than the job.
    if (away->mosrun.queued_bytes() > ControlStream::kHighWater) away->peer.PauseReading(true);
  };
  handlers.on_close = [this, slot, away, generation] {
    // A relay replaced by the job's new node (or by its return home) closes quietly.
    if (!away->exited && away->generation == generation) {
      auto it = jobs_.find(slot);
      if (it != jobs_.end() && it->second.away == away) {
        EndAway(slot, fmt::format("lost contact with node {}, where the job ran", away->where));
      }
    }
    if (away->pending_move && away->arrived) {
      // The job has arrived but its old node closed without a word: moved all the same.
      away->announced = MoveOutcome();
      away->announced->where = away->where;
      MoveEventSeen(*away);
    } else if (away->pending_move && away->generation == generation) {
      auto pending = std::move(away->pending_move);
      away->pending_move = nullptr;
      pending(MoveOutcome::Failure(
          fmt::format("lost contact with node {} during the move", away->where),
          ErrorKind::kDisconnected));
    }
  };
  return handlers;
}

void JobRegistry::JoinAway(int slot, std::shared_ptr<Away> away, Fd fd,
                           capnp::MallocMessageBuilder* first) {
  Caller peer;
  peer.peer = true;
  away->peer = control_.AdoptStream(std::move(fd), peer, PeerHandlersForAway(slot, away));
  // The job's node must have the job before any of mosrun's input reaches it.
  if (first) away->peer.Send(*first);
  away->mosrun.OnDrain([away] { away->peer.PauseReading(false); });
  away->peer.OnDrain([away] { away->mosrun.PauseReading(false); });
  away->mosrun.PauseReading(false);
}

void JobRegistry::AttachGuest(schema::AttachGuest::Reader attach, ReplySender reply) {
  for (auto& [slot, entry] : jobs_) {
    if (!entry.away || entry.away->home_pid != attach.getHomePid()) continue;
    auto away = entry.away;
    away->where = attach.getNode();
    away->attach_due_ms = 0;
    ++away->migrations;
    away->arrived = true;
    MoveEventSeen(*away);
    away->peer = reply.OpenStream(PeerHandlersForAway(slot, away));
    away->mosrun.OnDrain([away] { away->peer.PauseReading(false); });
    away->peer.OnDrain([away] { away->mosrun.PauseReading(false); });
    away->mosrun.PauseReading(false);
    spdlog::info("job {} now runs on {}", away->home_pid, away->where);
    return;
  }
  Fail(ErrorKind::kNotFound, "no job of this home with pid {} is away", attach.getHomePid());
}

void JobRegistry::MoveEventSeen(Away& away) {
  if (!away.announced || !away.arrived) return;
  MoveOutcome outcome = *away.announced;
  away.announced.reset();
  away.arrived = false;
  if (away.pending_move) {
    auto pending = std::move(away.pending_move);
    away.pending_move = nullptr;
    pending(outcome);
  }
}

void JobRegistry::EndOverdueAttaches() {
  auto now = static_cast<int64_t>(uv_now(loop_));
  std::vector<std::pair<int, std::string>> overdue;
  for (auto& [slot, entry] : jobs_) {
    if (entry.away && entry.away->attach_due_ms && now > entry.away->attach_due_ms) {
      overdue.emplace_back(slot, entry.away->where);
    }
  }
  for (auto& [slot, where] : overdue) {
    auto away = jobs_[slot].away;
    std::string why = fmt::format("the job left node {} and no node took it over", where);
    if (away->pending_move) {
      auto pending = std::move(away->pending_move);
      away->pending_move = nullptr;
      pending(MoveOutcome::Failure(why, ErrorKind::kDisconnected));
    }
    EndAway(slot, why);
  }
}

void JobRegistry::EndAway(int slot, const std::string& why) {
  auto it = jobs_.find(slot);
  if (it == jobs_.end() || !it->second.away) return;
  auto away = it->second.away;
  jobs_.erase(it);
  if (away->frozen) migrate::RemoveImageDir(away->frozen->dir);
  if (away->exited) return;
  away->exited = true;
  if (!why.empty()) {
    spdlog::warn("job {}: {}", away->home_pid, why);
    SendExit(away->mosrun, 255, why);
  }
  away->mosrun.Close();
  away->peer.Close();  // the job's node kills a guest whose home relay is gone
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
  launch.started_unix_ms = static_cast<int64_t>(spec.getStartedUnixMs());
  launch.home_host = spec.getHomeHost();
  launch.home_port = spec.getHomePort();
  if (launch.home == config_.name) {
    launch.root = "/";  // a job of ours coming home
    return launch;
  }
  if (blocked_) {
    Fail(ErrorKind::kOverloaded, "node {} accepts no guests (mosctl block)", config_.name);
  }
  launch.reattach = spec.getReattach();
  launch.root = config_.mosix_root + "/home/" + launch.home;
  struct stat root_stat, parent_stat;
  if (::stat(launch.root.c_str(), &root_stat) != 0 ||
      ::stat((config_.mosix_root + "/home").c_str(), &parent_stat) != 0 ||
      root_stat.st_dev == parent_stat.st_dev) {
    Fail(ErrorKind::kFailed, "node {} does not see node {}'s files yet ({} is not mounted)",
         config_.name, launch.home, launch.root);
  }
  launch.guest = true;
  return launch;
}

void JobRegistry::StartGuest(schema::GuestSpec::Reader spec, ReplySender reply) {
  JobLaunch launch = GuestLaunch(spec);
  if (!launch.guest) Fail(ErrorKind::kInvalidInput, "a job of this home is not a guest here");
  uint64_t id = next_guest_++;
  auto job = RunHere(std::move(launch), reply, [this, id] { guests_.erase(id); });
  if (job) {
    guests_[id] = job;
    if (on_arrival_) on_arrival_();
  }
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
  // The counts gossip publishes are refreshed each second rather than threaded through
  // every place a job starts, moves or ends; overdue attaches are found on the same tick.
  CheckUv(uv_timer_init(loop_, counts_timer_.get()), "job counts timer");
  counts_timer_.get()->data = this;
  CheckUv(uv_timer_start(
              counts_timer_.get(),
              [](uv_timer_t* timer) {
                GuardedCall("job counts", [timer] {
                  auto* self = static_cast<JobRegistry*>(timer->data);
                  self->EndOverdueAttaches();
                  if (self->on_change_) self->on_change_();
                });
              },
              0, 1000),
          "job counts timer");
}

void JobRegistry::MigrateJob(schema::MigrateRequest::Reader request, ReplySender reply) {
  using Verb = schema::MigrateRequest::Which;
  pid_t home_pid = request.getHomePid();
  Verb verb = request.which();
  auto it = jobs_.begin();
  for (; it != jobs_.end(); ++it) {
    pid_t pid = it->second.here ? it->second.here->home_pid() : it->second.away->home_pid;
    if (pid == home_pid) break;
  }
  if (it == jobs_.end()) {
    Fail(ErrorKind::kNotFound, "no job of this home has pid {} (mosps lists them)", home_pid);
  }
  uid_t owner = it->second.here ? it->second.here->uid() : it->second.away->uid;
  CheckJobOwner(reply.caller(), owner, home_pid, "move, freeze or checkpoint it");
  int slot = it->first;
  if (verb == Verb::CHECKPOINT || verb == Verb::FREEZE || verb == Verb::CONTINUE) {
    const char* what = verb == Verb::FREEZE     ? "freeze"
                       : verb == Verb::CONTINUE ? "continue"
                                                : "checkpoint";
    if (it->second.away && it->second.away->frozen && verb == Verb::CONTINUE) {
      Continue(slot, it->second.away, std::move(reply));
      return;
    }
    if (!it->second.here) {
      Fail(ErrorKind::kInvalidInput,
           "job {} is {}; {} works on a job running at home (mosmigrate "
           "{} home first)",
           home_pid, it->second.away->frozen ? "frozen" : "away on " + it->second.away->where, what,
           home_pid);
    }
    if (verb == Verb::CONTINUE) Fail(ErrorKind::kInvalidInput, "job {} is not frozen", home_pid);
    if (JobState state = it->second.here->state(); state != JobState::RUNNING) {
      Fail(ErrorKind::kOverloaded, "job {} is {}; try again", home_pid, JobStateName(state));
    }
    if (verb == Verb::FREEZE) {
      Freeze(slot, it->second.here, std::move(reply));
    } else {
      Caller caller = reply.caller();
      Checkpoint(it->second.here, request.getCheckpoint(), caller, std::move(reply));
    }
    return;
  }
  if (verb != Verb::MOVE_TO && verb != Verb::HOME) {
    Fail(ErrorKind::kInvalidInput, "job {}: a move request this daemon does not know", home_pid);
  }
  std::string target = verb == Verb::HOME ? config_.name : std::string(request.getMoveTo());
  if (it->second.away && it->second.away->frozen) {
    Fail(ErrorKind::kInvalidInput, "job {} is frozen: mosmigrate {} continue first", home_pid,
         home_pid);
  }
  if (it->second.away) {
    MoveAway(it->second.away, target, ReplyWhenMoved(std::move(reply)));
    return;
  }
  MoveFromHome(slot, it->second.here, target, ReplyWhenMoved(std::move(reply)));
}

void JobRegistry::MoveAway(std::shared_ptr<Away> away, const std::string& target, MoveDone done) {
  pid_t home_pid = away->home_pid;
  if (target == away->where) {
    Fail(ErrorKind::kInvalidInput, "job {} already runs on {}", home_pid, target);
  }
  if (away->pending_move) Fail(ErrorKind::kOverloaded, "job {} is already moving", home_pid);
  if (target != config_.name) resolve_(target);  // a clear error for an unknown node
  if (!away->peer.open()) Fail(ErrorKind::kOverloaded, "job {} is still starting", home_pid);
  capnp::MallocMessageBuilder message;
  auto root = message.initRoot<schema::ControlRequest>();
  root.setVersion(schema::CONTROL_VERSION);
  auto migrate = root.initMigrateJob();
  migrate.setHomePid(home_pid);
  migrate.setMoveTo(target);
  away->peer.Send(message);
  away->pending_move = std::move(done);
}

void JobRegistry::MoveFromHome(int slot, std::shared_ptr<Job> job, const std::string& target,
                               MoveDone done) {
  pid_t home_pid = job->home_pid();
  if (target == config_.name) {
    Fail(ErrorKind::kInvalidInput, "job {} is already at home on {}", home_pid, config_.name);
  }
  if (std::string pinned = job->PinnedReason(); !pinned.empty()) {
    Fail(ErrorKind::kInvalidInput, "job {} cannot leave home: it {}", home_pid,
         pinned.rfind("kept", 0) == 0 ? "is " + pinned : pinned);
  }
  if (JobState state = job->state(); state != JobState::RUNNING) {
    Fail(ErrorKind::kOverloaded, "job {} is {}; try again", home_pid, JobStateName(state));
  }
  auto move = PrepareMove(job, target);
  job->set_migrating(true);
  job->relay().PauseReading(true);  // input waits for the job's new place

  int status = QueueWork(
      loop_, [move] { RunMoveOut(*move); },
      [this, alive = alive_, slot, job, move, done = std::move(done)] {
        if (*alive) FinishMove(slot, job, *move, done);
      });
  if (status < 0) {
    job->set_migrating(false);
    job->relay().PauseReading(false);
    Fail(ErrorKind::kFailed, "cannot start the move: {}", uv_strerror(status));
  }
}

std::shared_ptr<MoveOut> JobRegistry::PrepareMove(const std::shared_ptr<Job>& job,
                                                  const std::string& target) {
  PeerAddress address = resolve_(target);
  // A blocked node, or one without room, refuses the stream anyway; saying so before
  // the dump is clearer and costs the job nothing.
  for (const balance::Node& node : picture_()) {
    if (node.name != target) continue;
    if (!node.accepts_guests && target != job->launch().home) {
      Fail(ErrorKind::kOverloaded, "node {} accepts no guests (mosctl block)", target);
    }
    uint32_t needed = job->usage().memory_mb();
    if (node.mem_free_mb < needed) {
      Fail(ErrorKind::kOverloaded, "node {} has {} MB of free memory; the job uses {} MB", target,
           node.mem_free_mb, needed);
    }
  }
  pid_t home_pid = job->home_pid();
  auto move = std::make_shared<MoveOut>();
  move->init_pid = job->init_pid();
  move->pipe_inodes = job->pipe_inodes();
  move->image_dir =
      fmt::format("{}/images/out-{}-{}", config_.state_dir, home_pid, job->init_pid());
  ::mkdir((config_.state_dir + "/images").c_str(), 0700);
  move->target_name = target;
  move->target_host = address.host;
  move->target_port = address.port;
  move->key = config_.cluster_key;
  move->guest_request = GuestRequest(job->launch(), target);
  move->metadata.home_node = job->launch().home;
  move->metadata.home_pid = home_pid;
  move->faults = faults_;
  move->metadata.external_pipes = job->pipe_roles();
  return move;
}

void JobRegistry::MigrateGuest(std::shared_ptr<Job> job, const std::string& target, MoveDone done) {
  std::shared_ptr<MoveOut> move;
  try {
    if (JobState state = job->state(); state != JobState::RUNNING) {
      Fail(ErrorKind::kOverloaded, "the job is {}", JobStateName(state));
    }
    move = PrepareMove(job, target);
  } catch (const Error& e) {
    if (done) {
      done(MoveOutcome::Failure(e.what(), e.kind()));
      return;
    }
    capnp::MallocMessageBuilder message;
    auto error = message.initRoot<schema::ControlReply>().initError();
    error.setKind(std::string(ErrorKindName(e.kind())));
    error.setMessage(e.what());
    job->relay().Send(message);
    return;
  }
  job->set_migrating(true);
  int status = QueueWork(
      loop_, [move] { RunMoveOut(*move); },
      [this, alive = alive_, job, move, done] {
        if (*alive) FinishGuestMove(job, *move, done);
      });
  if (status < 0) {
    job->set_migrating(false);
    if (done) {
      done(MoveOutcome::Failure(fmt::format("cannot start the move: {}", uv_strerror(status))));
    }
  }
}

void JobRegistry::FinishGuestMove(std::shared_ptr<Job> job, MoveOut& move, const MoveDone& done) {
  job->set_migrating(false);
  capnp::MallocMessageBuilder message;
  if (!move.error.empty()) {
    spdlog::warn("guest {}: move to {} failed: {}", job->home_pid(), move.target_name, move.error);
    if (done) {
      done(OutcomeOf(move));  // this node's own decision: the home need not hear of it
      return;
    }
    auto error = message.initRoot<schema::ControlReply>().initError();
    error.setKind("failed");
    error.setMessage(move.error);
    job->relay().Send(message);
    return;
  }
  // The job runs on at the target, which has told its home; what it left in our pipes
  // goes home first, then word of the move, then this relay closes.
  ControlStream relay = job->relay();
  job->AbandonAfterMove();
  for (auto it = guests_.begin(); it != guests_.end(); ++it) {
    if (it->second == job) {
      guests_.erase(it);
      break;
    }
  }
  auto migrated = message.initRoot<schema::ControlReply>().initMigrated();
  migrated.setWhere(move.target_name);
  migrated.setFrozenMs(static_cast<uint64_t>(move.frozen.count()));
  migrated.setTotalMs(static_cast<uint64_t>(move.total.count()));
  migrated.setImageBytes(move.image_bytes);
  relay.Send(message);
  relay.Close();
  spdlog::info("guest {} moved on to {} (frozen {} ms)", job->home_pid(), move.target_name,
               move.frozen.count());
  if (done) done(OutcomeOf(move));
}

void JobRegistry::Checkpoint(std::shared_ptr<Job> job, const std::string& path,
                             const Caller& caller, ReplySender reply) {
  if (path.empty() || path[0] != '/') {
    Fail(ErrorKind::kInvalidInput, "checkpoint needs an absolute path for the images, not '{}'",
         path);
  }
  // The directory is the caller's to name, so it is made with the caller's rights (uid,
  // gid and groups as the kernel reports them), never root's.
  JobIdentity id = JobIdentity::OfProcess(caller.pid, caller.uid, caller.gid);
  FsIdentity who{id.uid, id.gid, id.groups};
  std::string work_root = config_.state_dir + "/criu-work";
  auto pending = std::make_shared<ReplySender>(std::move(reply));
  DumpOffLoop(
      job, migrate::AfterDump::kRun,
      [path, who, work_root, home_pid = job->home_pid()](pid_t init,
                                                          migrate::DumpOptions options) {
        CheckpointDir dir = CheckpointDir::Create(path, who);
        // criu's log and scratch files stay in root's own state directory: a log the user
        // could write would let the error message quote a file the user may not read.
        // One of its own per checkpoint: two checkpoints of a job may overlap.
        ::mkdir(work_root.c_str(), 0700);
        std::string work = fmt::format("{}/checkpoint-{}-XXXXXX", work_root, home_pid);
        HW_SYSCALL(::mkdtemp(work.data()) ? 0 : -1, "create {}", work);
        options.work_dir = work;
        migrate::DumpResult result;
        try {
          result = migrate::Dump(init, dir.fd_path(), options);
        } catch (...) {
          migrate::RemoveImageDir(work);
          throw;
        }
        migrate::RemoveImageDir(work);
        dir.HandOver();
        return result;
      },
      [this, pending](const DumpOutcome& result) {
        if (!result.error.empty()) {
          pending->SendError(
              Error(result.kind, fmt::format("checkpoint failed: {}", result.error)));
          return;
        }
        capnp::MallocMessageBuilder message;
        auto done = message.initRoot<schema::ControlReply>().initMigrated();
        done.setWhere(config_.name);
        done.setFrozenMs(static_cast<uint64_t>(result.dump.frozen_time.count() / 1000));
        done.setImageBytes(result.dump.image_bytes);
        pending->Send(message);
      });
}

void JobRegistry::DumpOffLoop(const std::shared_ptr<Job>& job, migrate::AfterDump after,
                              DumpStep dump, std::function<void(const DumpOutcome&)> done) {
  auto result = std::make_shared<DumpOutcome>();
  migrate::DumpOptions options;
  options.after = after;
  options.external_pipes = job->pipe_inodes();
  options.faults = faults_;
  pid_t init = job->init_pid();
  int status = QueueWork(
      loop_,
      [result, init, options, dump = std::move(dump)] {
        try {
          result->dump = dump(init, options);
        } catch (const Error& e) {
          result->error = e.what();
          result->kind = e.kind();
        } catch (const std::exception& e) {
          result->error = e.what();
        }
        // A job left stopped by a failed step runs on where it was.
        if (!result->error.empty() && options.after == migrate::AfterDump::kStop) {
          migrate::ContinueJob(init);
        }
      },
      [alive = alive_, result, done] {
        if (*alive) done(*result);
      });
  if (status < 0) Fail(ErrorKind::kFailed, "cannot start the checkpoint: {}", uv_strerror(status));
}

void JobRegistry::Freeze(int slot, std::shared_ptr<Job> job, ReplySender reply) {
  std::string frozen = config_.state_dir + "/frozen";
  ::mkdir(frozen.c_str(), 0700);
  std::string dir = fmt::format("{}/job-{}", frozen, job->home_pid());
  migrate::RemoveImageDir(dir);
  HW_SYSCALL(::mkdir(dir.c_str(), 0700), "create {}", dir);
  job->set_migrating(true);
  job->relay().PauseReading(true);
  auto pending = std::make_shared<ReplySender>(std::move(reply));
  try {
    DumpOffLoop(job, migrate::AfterDump::kStop,
                [dir](pid_t init, const migrate::DumpOptions& options) {
                  return migrate::Dump(init, dir, options);
                },
                [this, slot, job, dir, pending](const DumpOutcome& outcome) {
                  const DumpOutcome* result = &outcome;
                  job->set_migrating(false);
                  auto it = jobs_.find(slot);
                  if (!result->error.empty() || it == jobs_.end() || it->second.here != job) {
                    migrate::RemoveImageDir(dir);
                    job->relay().PauseReading(false);
                    pending->SendError(
                        Error(ErrorKind::kFailed, fmt::format("job {} runs on: freezing failed: {}",
                                                              job->home_pid(), result->error)));
                    return;
                  }
                  auto away = AwayFrom(*job);
                  away->frozen = Away::Frozen{dir, job->launch(), job->pipe_roles()};
                  job->AbandonAfterMove();
                  it->second.here.reset();
                  it->second.away = away;
                  // mosrun's input waits (paused) until the job continues; its end ends the job.
                  away->mosrun.SetHandlers(MosrunHandlersForAway(slot, away));
                  away->mosrun.PauseReading(true);
                  spdlog::info("job {} frozen to {}", away->home_pid, dir);
                  capnp::MallocMessageBuilder message;
                  auto done = message.initRoot<schema::ControlReply>().initMigrated();
                  done.setWhere("frozen");
                  done.setFrozenMs(0);
                  done.setImageBytes(result->dump.image_bytes);
                  pending->Send(message);
                });
  } catch (const Error&) {
    job->set_migrating(false);
    job->relay().PauseReading(false);
    throw;
  }
}

void JobRegistry::Continue(int slot, std::shared_ptr<Away> away, ReplySender reply) {
  struct Result {
    std::optional<RestoredHere> restored;
    std::string error;
  };
  auto result = std::make_shared<Result>();
  auto pending = std::make_shared<ReplySender>(std::move(reply));
  std::string dir = away->frozen->dir;
  auto pipes = away->frozen->pipes;
  std::string init_path = init_path_;
  FaultPoints faults = faults_;
  int status = QueueWork(
      loop_,
      [result, dir, pipes, init_path, faults] {
        try {
          result->restored = RestoreHere(dir, pipes, "/", init_path, faults);
        } catch (const std::exception& e) {
          result->error = e.what();
        }
      },
      [this, alive = alive_, slot, away, result, pending] {
        if (!*alive) return;
        auto it = jobs_.find(slot);
        if (!result->error.empty() || it == jobs_.end() || it->second.away != away) {
          if (result->restored) ::kill(result->restored->init_pid, SIGKILL);
          pending->SendError(Error(ErrorKind::kFailed, fmt::format("job {} stays frozen: {}",
                                                                   away->home_pid, result->error)));
          return;
        }
        auto weak_job = std::make_shared<std::weak_ptr<Job>>();
        auto job = std::make_shared<Job>(loop_, away->frozen->launch, away->mosrun,
                                         [this, slot](Job&) { jobs_.erase(slot); });
        *weak_job = job;
        try {
          job->Adopt(result->restored->init_pid, std::move(result->restored->ends));
        } catch (const Error& e) {
          ::kill(result->restored->init_pid, SIGKILL);
          pending->SendError(Error(ErrorKind::kFailed, fmt::format("job {} stays frozen: {}",
                                                                   away->home_pid, e.what())));
          return;
        }
        job->set_migrations(away->migrations);
        migrate::RemoveImageDir(away->frozen->dir);
        away->frozen.reset();
        away->mosrun.SetHandlers(RelayHandlersFor(weak_job));
        away->mosrun.PauseReading(false);
        it->second.here = job;
        it->second.away.reset();
        spdlog::info("job {} continues", job->home_pid());
        capnp::MallocMessageBuilder message;
        message.initRoot<schema::ControlReply>().initMigrated().setWhere(config_.name);
        pending->Send(message);
      });
  if (status < 0) Fail(ErrorKind::kFailed, "cannot start continuing: {}", uv_strerror(status));
}

void JobRegistry::FinishMove(int slot, std::shared_ptr<Job> job, MoveOut& move,
                             const MoveDone& done) {
  job->set_migrating(false);
  auto it = jobs_.find(slot);
  bool still_ours = it != jobs_.end() && it->second.here == job;
  if (!move.error.empty()) {
    spdlog::warn("job {}: move to {} failed: {}", job->home_pid(), move.target_name, move.error);
    job->relay().PauseReading(false);
    MoveOutcome outcome = OutcomeOf(move);
    outcome.error =
        fmt::format("job {} stays on {}: {}", job->home_pid(), config_.name, move.error);
    done(outcome);
    return;
  }
  if (!still_ours) {  // ended meanwhile (its mosrun went away)
    done(MoveOutcome::Failure("the job ended during the move"));
    return;
  }
  auto away = AwayFrom(*job);
  away->where = move.target_name;
  away->migrations = job->migrations() + 1;
  job->AbandonAfterMove();
  it->second.here.reset();
  it->second.away = away;
  away->mosrun.SetHandlers(MosrunHandlersForAway(slot, away));
  JoinAway(slot, away, std::move(move.connection), nullptr);
  spdlog::info("job {} moved to {} (frozen {} ms, {} in all, {} bytes of images)", away->home_pid,
               away->where, move.frozen.count(), move.total.count(), move.image_bytes);
  done(OutcomeOf(move));
}

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
                            std::chrono::seconds(5));
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
    if (!entry.away || entry.away->home_pid != home_pid) continue;
    auto away = entry.away;
    auto weak_job = std::make_shared<std::weak_ptr<Job>>();
    int job_slot = slot;
    auto job = std::make_shared<Job>(loop_, std::move(restored.launch), away->mosrun,
                                     [this, job_slot](Job&) { jobs_.erase(job_slot); });
    *weak_job = job;
    try {
      job->Adopt(restored.init_pid, std::move(restored.ends));
    } catch (const Error& e) {
      spdlog::error("cannot take back job {}: {}", home_pid, e.what());
      ::kill(restored.init_pid, SIGKILL);
      return;
    }
    ++away->generation;  // the old relay's end is not the job's end
    job->set_migrations(away->migrations + 1);
    away->where = config_.name;
    away->arrived = true;
    MoveEventSeen(*away);
    away->mosrun.SetHandlers(RelayHandlersFor(weak_job));
    away->mosrun.PauseReading(false);
    entry.here = job;
    entry.away.reset();
    spdlog::info("job {} is back home", home_pid);
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
    if (!relay.open()) {  // no relay to its home: a guest nobody can reach
      spdlog::error("restored job (init {}) has no relay to its home; killing it", one.init_pid);
      ::kill(one.init_pid, SIGKILL);
      continue;
    }
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

void JobRegistry::ListJobs(ReplySender reply) const {
  capnp::MallocMessageBuilder message;
  auto list = message.initRoot<schema::ControlReply>().initJobs().initJobs(
      static_cast<unsigned>(jobs_.size() + guests_.size()));
  unsigned i = 0;
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
    info.setPinned(job.PinnedReason());
    info.setLocked(job.launch().locked);
  };
  for (const auto& [slot, job] : jobs_) {
    auto info = list[i++];
    if (job.here) {
      describe(*job.here, info);
    } else {
      info.setHomePid(job.away->home_pid);
      info.setHome(config_.name);
      info.setWhere(job.away->where);
      info.setMigrations(job.away->migrations);
      info.setState(job.away->frozen        ? JobState::FROZEN
                    : job.away->peer.open() ? JobState::RUNNING
                                            : JobState::STARTING);
      if (job.away->frozen) info.setWhere(config_.name);
      info.setCmd(job.away->command);
      info.setUid(job.away->uid);
      info.setLocked(job.away->locked);
    }
  }
  for (const auto& [id, job] : guests_) describe(*job, list[i++]);
  reply.Send(message);
}

void JobRegistry::KillAll() {
  auto jobs = std::move(jobs_);
  jobs_.clear();
  for (auto& [slot, job] : jobs) {
    if (job.here) job.here->Kill();
    if (job.away) {
      if (job.away->frozen) migrate::RemoveImageDir(job.away->frozen->dir);
      job.away->exited = true;
      job.away->peer.Close();
      job.away->mosrun.Close();
    }
  }
  restored_wakeup_.Close();
  counts_timer_.Close();
  auto guests = std::move(guests_);
  guests_.clear();
  for (auto& [id, job] : guests) job->Kill();
}

}  // namespace homeward
