// A job's checkpoint directory (mosrun -C): checkpoints on demand (mosmigrate PID
// checkpoint), every -A minutes, or when the job asks (mosrun -S). Restarting a job from
// the newest good one is in job_restarts.cc. See "Checkpoints and recovery" in
// docs/ARCHITECTURE.md.
#include <fcntl.h>
#include <sys/ioctl.h>
#include <sys/stat.h>

#include <algorithm>
#include <csignal>
#include <cstring>
#include <ctime>
#include <fstream>
#include <iterator>
#include <optional>
#include <set>

#include <spdlog/spdlog.h>

#include "c_boundary.h"
#include "checkpoint_store.h"
#include "job_registry.h"
#include "job_replies.h"
#include "migration.h"
#include "uv_error.h"
#include "uv_work.h"

namespace homeward {

namespace {

constexpr uint64_t kCheckpointTickMs = 200;

// The job's processes stopped now (^Z, SIGSTOP): a checkpoint must not continue them.
std::set<pid_t> StoppedPids(pid_t init) {
  std::set<pid_t> stopped;
  for (pid_t pid : migrate::JobPids(init)) {
    std::ifstream stat(fmt::format("/proc/{}/stat", pid));
    std::string text((std::istreambuf_iterator<char>(stat)), std::istreambuf_iterator<char>());
    size_t close = text.rfind(')');
    if (close != std::string::npos && close + 2 < text.size() && text[close + 2] == 'T') {
      stopped.insert(pid);
    }
  }
  return stopped;
}

// Continues a job its checkpoint's dump left stopped, all but what was stopped before.
// The init drops a SIGCONT from outside its namespace that is not numbered (job_init.cc),
// so it does not continue the program in its turn.
void ContinueAfterCheckpoint(pid_t init, const std::set<pid_t>& stopped) {
  for (pid_t pid : migrate::JobPids(init)) {
    if (!stopped.count(pid)) ::kill(pid, SIGCONT);
  }
}

}  // namespace

CheckpointPlan JobRegistry::PlanFrom(schema::JobSpec::Reader spec) {
  CheckpointPlan plan;
  plan.dir = spec.getCheckpointDir();
  plan.every_ms = static_cast<int64_t>(spec.getCheckpointEveryMs());
  plan.keep = spec.getCheckpointKeep();
  plan.signal = spec.getCheckpointSignal();
  if (plan.dir.empty()) {
    if (plan.every_ms || plan.keep || plan.signal) {
      Fail(ErrorKind::kInvalidInput, "-A, -N and -S need a checkpoint directory (mosrun -C DIR)");
    }
    return plan;
  }
  if (plan.dir[0] != '/') {
    Fail(ErrorKind::kInvalidInput, "the checkpoint directory must be an absolute path, not '{}'",
         plan.dir);
  }
  if (plan.every_ms != 0 && plan.every_ms < 1000) {
    Fail(ErrorKind::kInvalidInput, "checkpoints at most once a second, not every {} ms",
         plan.every_ms);
  }
  if (plan.signal < 0 || plan.signal >= 65 || plan.signal == SIGKILL || plan.signal == SIGSTOP) {
    Fail(ErrorKind::kInvalidInput, "{} is not a signal a job can ask for a checkpoint with",
         plan.signal);
  }
  return plan;
}

void JobRegistry::PlanCheckpoints(int slot, const JobIdentity& owner, const CheckpointPlan& plan,
                                  int64_t run, bool fresh_log) {
  if (plan.dir.empty()) {
    checkpoint_plans_.erase(slot);
    return;
  }
  PlannedCheckpoints& planned = checkpoint_plans_[slot];
  planned = {};
  planned.home_pid = owner.home_pid;
  planned.owner = {owner.uid, owner.gid, owner.groups};
  planned.plan = plan;
  planned.restartable = !fresh_log;  // restarted or taken back: checkpoints of it may exist
  if (plan.every_ms > 0) planned.next_ms = static_cast<int64_t>(uv_now(loop_)) + plan.every_ms;
  OpenInputLog(planned, plan.dir, run, fresh_log);
}

namespace {

// Where a job stopped for a dump stands in its input: the offset just past what the
// daemon wrote into its stdin pipe (nothing more is written while it is held), less what
// the pipe still holds.
std::optional<uint64_t> InputOffsetOf(const Job::InputPlace& place) {
  if (place.reader < 0) return place.written;
  int pending = 0;
  if (::ioctl(place.reader, FIONREAD, &pending) != 0 || pending < 0 ||
      static_cast<uint64_t>(pending) > place.written) {
    return std::nullopt;
  }
  return place.written - static_cast<uint64_t>(pending);
}


// A guest's word to its home on the checkpoint it was asked for: where it is (or why
// there is none) and the input offset it holds.
void AnswerCheckpointed(Job& job, const std::string& path, const std::string& error,
                        std::optional<uint64_t> input_offset = std::nullopt) {
  capnp::MallocMessageBuilder message;
  auto report = message.initRoot<schema::ControlReply>().initCheckpointed();
  report.setPath(path);
  report.setError(error);
  report.setInputPlaced(input_offset.has_value());
  report.setInputOffset(input_offset.value_or(0));
  job.relay().Send(message);
}

// What a checkpoint of `job` under `plan` seals beside its images (the input offset is
// measured at the dump).
CheckpointManifest ManifestOf(const Job& job, const CheckpointPlan& plan) {
  CheckpointManifest manifest;
  manifest.launch = job.launch();
  manifest.launch.checkpoint = plan;
  manifest.launch.input = {};
  manifest.pipes = job.pipe_roles();
  return manifest;
}

// A scratch directory for criu's log and work files, in root's own state directory.
std::string MakeCriuWorkDir(const std::string& work_root, pid_t home_pid) {
  ::mkdir(work_root.c_str(), 0700);
  std::string work = fmt::format("{}/checkpoint-{}-XXXXXX", work_root, home_pid);
  HW_SYSCALL(::mkdtemp(work.data()) ? 0 : -1, "create {}", work);
  return work;
}

// Where the job stands in its input, with its stdin's reader kept open in `reader` for
// the dump off the loop (the job's own may close meanwhile).
Job::InputPlace KeepInputPlace(Job& job, Fd& reader) {
  Job::InputPlace input = job.input_place();
  if (input.reader >= 0) {
    reader = Fd::Adopt(HW_SYSCALL(::fcntl(input.reader, F_DUPFD_CLOEXEC, 3),
                                  "keep the job's stdin for the checkpoint"));
    input.reader = reader.get();
  }
  return input;
}

}  // namespace

void JobRegistry::StartCheckpointTimer() {
  CheckUv(uv_timer_init(loop_, checkpoint_timer_.get()), "checkpoint timer");
  checkpoint_timer_.get()->data = this;
  CheckUv(uv_timer_start(
              checkpoint_timer_.get(),
              [](uv_timer_t* timer) {
                GuardedCall("periodic checkpoints",
                            [timer] { static_cast<JobRegistry*>(timer->data)->CheckpointTick(); });
              },
              kCheckpointTickMs, kCheckpointTickMs),
          "checkpoint timer");
}

void JobRegistry::CheckpointTick() {
  int64_t now = static_cast<int64_t>(uv_now(loop_));
  for (auto it = checkpoint_plans_.begin(); it != checkpoint_plans_.end();) {
    auto entry = jobs_.find(it->first);
    pid_t home_pid = entry == jobs_.end() ? 0
                     : entry->second.here ? entry->second.here->home_pid()
                     : entry->second.away ? entry->second.away->home_pid()
                                          : 0;
    // A mosmigrate waiting for the node of a job away hears once the job is gone, or its
    // node never answered; a job back home has left that node's answer behind.
    bool away = entry != jobs_.end() && entry->second.away && !entry->second.away->frozen;
    PlannedCheckpoints& planned = it->second;
    bool overdue = planned.busy_until_ms && now > planned.busy_until_ms;
    if (planned.busy_until_ms && (home_pid != planned.home_pid || overdue || !away)) {
      if (planned.waiter) {
        planned.waiter->SendError(
            Error(ErrorKind::kDisconnected, "checkpoint failed: the job's node did not answer"));
        planned.waiter.reset();
      }
      planned.busy = false;
      planned.busy_until_ms = 0;
    }
    if (home_pid != planned.home_pid) {
      it = checkpoint_plans_.erase(it);  // the job has ended
      continue;
    }
    bool due = planned.asked || (planned.plan.every_ms > 0 && now >= planned.next_ms);
    // A job running at home is dumped here, one away by its node; a job frozen or moving
    // waits for its next turn.
    int slot = it->first;
    ++it;
    if (!due || planned.busy) continue;
    try {
      if (entry->second.here && entry->second.here->state() == JobState::RUNNING) {
        planned.next_ms = now + planned.plan.every_ms;
        planned.asked = false;
        CheckpointToPlan(slot, entry->second.here, nullptr);
      } else if (entry->second.away && !entry->second.away->frozen &&
                 entry->second.away->protocol.record().state == move::State::kRunning) {
        planned.next_ms = now + planned.plan.every_ms;
        planned.asked = false;
        AskCheckpointAway(slot, entry->second.away, nullptr);
      }
    } catch (const Error& e) {
      spdlog::warn("job {}: no checkpoint: {}", home_pid, e.what());
    }
  }
}

// A job's own ask is taken by the next tick, not here: it may come while the job is
// still being started (its first output is read then) or while a move is under way, and a
// job frozen or moving is checkpointed once it runs again.
void JobRegistry::CheckpointAsked(pid_t home_pid) {
  for (auto& [slot, planned] : checkpoint_plans_) {
    if (planned.home_pid == home_pid) planned.asked = true;
  }
}

void JobRegistry::WatchCheckpointAsks(const std::shared_ptr<Job>& job) {
  job->OnCheckpointRequest([this, weak = std::weak_ptr<Job>(job)] {
    if (auto asking = weak.lock()) CheckpointRequested(asking);
  });
}

void JobRegistry::CheckpointRequested(const std::shared_ptr<Job>& job) {
  if (job->launch().guest) {
    // The job's home keeps its checkpoint plan: it asks this node for the checkpoint.
    capnp::MallocMessageBuilder message;
    message.initRoot<schema::ControlReply>().setCheckpointAsked();
    job->relay().Send(message);
    return;
  }
  CheckpointAsked(job->home_pid());
}

JobRegistry::PlannedCheckpoints& JobRegistry::FreePlan(int slot, pid_t home_pid,
                                                       const std::string& without) {
  auto it = checkpoint_plans_.find(slot);
  if (it == checkpoint_plans_.end() || it->second.home_pid != home_pid) {
    Fail(ErrorKind::kInvalidInput, "job {} has no checkpoint directory (mosrun -C DIR); {}",
         home_pid, without);
  }
  if (it->second.busy) {
    Fail(ErrorKind::kOverloaded, "job {} is being checkpointed; try again", home_pid);
  }
  return it->second;
}

void JobRegistry::CheckpointToPlan(int slot, std::shared_ptr<Job> job,
                                   std::shared_ptr<ReplySender> reply) {
  auto it = checkpoint_plans_.find(slot);
  FreePlan(slot, job->home_pid(),
           fmt::format("name one: mosmigrate {} checkpoint DIR", job->home_pid()));
  const CheckpointPlan& plan = it->second.plan;
  CheckpointManifest manifest = ManifestOf(*job, plan);
  FsIdentity who = it->second.owner;
  auto key = CheckpointKey(config_.cluster_key);
  std::string work_root = config_.state_dir + "/criu-work";
  auto written = std::make_shared<WrittenCheckpoint>();
  pid_t home_pid = job->home_pid();
  it->second.busy = true;
  // Shown as migrating meanwhile: a move or freeze waits until the dump is done. Its input
  // is held from here on, so what was written into its stdin stays as it is now.
  job->Depart(move::DumpKind::kCheckpoint);
  auto reader = std::make_shared<Fd>();
  auto measured = std::make_shared<std::optional<uint64_t>>();
  try {
    Job::InputPlace input = KeepInputPlace(*job, *reader);
    // Dumped and left stopped, so that where it stands in its input is measured exactly,
    // then continued (as a failed move continues it).
    DumpOffLoop(
        job, migrate::AfterDump::kStop,
        [plan, who, key, manifest, work_root, home_pid, written, input, reader, measured](
            pid_t init, migrate::DumpOptions options) {
          *written = WriteCheckpoint(
              plan.dir, who, plan.keep, key, manifest,
              [&](const std::string& image_dir, CheckpointManifest& sealed) {
                std::string work = MakeCriuWorkDir(work_root, home_pid);
                options.work_dir = work;
                try {
                  std::set<pid_t> stopped = StoppedPids(init);
                  auto result = migrate::Dump(init, image_dir, options);
                  migrate::RemoveImageDir(work);
                  sealed.input_offset = *measured = InputOffsetOf(input);
                  ContinueAfterCheckpoint(init, stopped);
                  return result;
                } catch (...) {
                  migrate::RemoveImageDir(work);
                  throw;
                }
              });
          return written->dump;
        },
        [this, slot, job, home_pid, written, reply, measured](const DumpOutcome& result) {
          job->Stay();
          CheckpointWritten(slot, home_pid, *written, *measured, reply.get(), result);
        });
  } catch (...) {
    it->second.busy = false;
    job->Stay();
    throw;
  }
}

void JobRegistry::CheckpointWritten(int slot, pid_t home_pid, const WrittenCheckpoint& written,
                                    std::optional<uint64_t> measured, ReplySender* reply,
                                    const DumpOutcome& result) {
  auto planned = checkpoint_plans_.find(slot);
  if (planned != checkpoint_plans_.end() && planned->second.home_pid == home_pid) {
    planned->second.busy = false;
    if (result.error.empty()) planned->second.restartable = true;
    // The newest checkpoint is current: the input before its place is not needed.
    if (result.error.empty() && measured && planned->second.input_log) {
      try {
        planned->second.input_log->Trim(*measured);
      } catch (const Error& e) {
        spdlog::warn("job {}: its input log is not trimmed: {}", home_pid, e.what());
      }
    }
  }
  if (!result.error.empty()) {
    spdlog::warn("job {}: checkpoint failed: {}", home_pid, result.error);
    if (reply) {
      reply->SendError(Error(result.kind, fmt::format("checkpoint failed: {}", result.error)));
    }
    return;
  }
  spdlog::info("job {}: checkpoint {} written to {} ({} bytes, {})", home_pid, written.number,
               written.path, result.dump.image_bytes,
               measured ? fmt::format("at input byte {}", *measured)
                        : std::string("its input place unknown"));
  if (reply) ReplyDumped(*reply, written.path, result.dump);
}

void JobRegistry::AskCheckpointAway(int slot, const std::shared_ptr<Away>& away,
                                    std::shared_ptr<ReplySender> reply) {
  auto it = checkpoint_plans_.find(slot);
  FreePlan(slot, away->home_pid(),
           fmt::format("it runs on {}: mosmigrate {} home first to checkpoint it into another "
                       "directory",
                       away->where(), away->home_pid()));
  if (away->protocol.record().state != move::State::kRunning) {
    Fail(ErrorKind::kOverloaded, "job {} is moving; try again", away->home_pid());
  }
  const CheckpointPlan& plan = it->second.plan;
  capnp::MallocMessageBuilder message;
  auto root = message.initRoot<schema::ControlRequest>();
  root.setVersion(schema::CONTROL_VERSION);
  auto migrate = root.initMigrateJob();
  migrate.setHomePid(away->home_pid());
  auto ask = migrate.initCheckpointAway();
  ask.setDir(plan.dir);
  ask.setKeep(plan.keep);
  ask.setEveryMs(static_cast<uint64_t>(plan.every_ms));
  ask.setSignal(plan.signal);
  away->peer.Send(message);
  it->second.busy = true;
  it->second.busy_until_ms = static_cast<int64_t>(uv_now(loop_)) + 10 * 60 * 1000;
  it->second.waiter = std::move(reply);
}

void JobRegistry::CheckpointedAway(int slot, const std::shared_ptr<Away>& away,
                                   schema::Checkpointed::Reader report) {
  std::string path = report.getPath();
  std::string error = report.getError();
  if (error.empty()) {
    spdlog::info("job {}: checkpoint {} written by node {}", away->home_pid(), path, away->where());
  } else {
    spdlog::warn("job {}: checkpoint on node {} failed: {}", away->home_pid(), away->where(),
                 error);
  }
  auto it = checkpoint_plans_.find(slot);
  if (it == checkpoint_plans_.end() || it->second.home_pid != away->home_pid()) return;
  it->second.busy = false;
  it->second.busy_until_ms = 0;
  if (error.empty()) it->second.restartable = true;
  if (error.empty() && report.getInputPlaced() && it->second.input_log) {
    try {
      it->second.input_log->Trim(report.getInputOffset());
    } catch (const Error& e) {
      spdlog::warn("job {}: its input log is not trimmed: {}", away->home_pid(), e.what());
    }
  }
  auto waiter = std::move(it->second.waiter);
  if (!waiter) return;
  if (!error.empty()) {
    waiter->SendError(Error(ErrorKind::kFailed, fmt::format("checkpoint failed: {}", error)));
    return;
  }
  MoveOutcome outcome;
  outcome.where = path;
  capnp::MallocMessageBuilder message;
  BuildMigrated(message, outcome);
  waiter->Send(message);
}

void JobRegistry::CheckpointGuest(std::shared_ptr<Job> job,
                                  schema::CheckpointAway::Reader request) {
  CheckpointPlan plan;
  plan.dir = request.getDir();
  plan.keep = request.getKeep();
  plan.every_ms = static_cast<int64_t>(request.getEveryMs());
  plan.signal = request.getSignal();
  if (plan.dir.empty() || plan.dir[0] != '/' || plan.dir.find("/../") != std::string::npos) {
    AnswerCheckpointed(*job, "", fmt::format("'{}' is not a checkpoint directory", plan.dir));
    return;
  }
  if (JobState state = job->state(); state != JobState::RUNNING) {
    AnswerCheckpointed(*job, "", fmt::format("the job is {}", JobStateName(state)));
    return;
  }
  CheckpointManifest manifest = ManifestOf(*job, plan);
  const JobIdentity& id = manifest.launch.identity;
  FsIdentity who{id.uid, id.gid, id.groups};
  // The directory is a path of the home's tree, which this node sees through homefs.
  std::string local_dir = job->launch().root + plan.dir;
  auto key = CheckpointKey(config_.cluster_key);
  std::string work_root = config_.state_dir + "/criu-work";
  pid_t home_pid = job->home_pid();
  auto written = std::make_shared<WrittenCheckpoint>();
  job->Depart(move::DumpKind::kCheckpoint);
  // As at home: dumped and left stopped, its place in its input measured, then continued.
  auto reader = std::make_shared<Fd>();
  auto measured = std::make_shared<std::optional<uint64_t>>();
  try {
    Job::InputPlace input = KeepInputPlace(*job, *reader);
    DumpOffLoop(
        job, migrate::AfterDump::kStop,
        [local_dir, who, keep = plan.keep, key, manifest, work_root, home_pid, written, input,
         reader, measured](pid_t init, migrate::DumpOptions options) mutable {
          // The dump goes to root's own state directory first, criu's log beside it.
          std::string work = MakeCriuWorkDir(work_root, home_pid);
          std::string images = fmt::format("{}/images-{}-XXXXXX", work_root, home_pid);
          auto clean = [&] {
            for (const auto& dir : {images, work}) {
              try {
                migrate::RemoveImageDir(dir);
              } catch (const Error& e) {
                spdlog::warn("{}", e.what());
              }
            }
          };
          migrate::DumpResult result;
          try {
            HW_SYSCALL(::mkdtemp(images.data()) ? 0 : -1, "create {}", images);
            options.work_dir = work;
            std::set<pid_t> stopped = StoppedPids(init);
            result = migrate::Dump(init, images, options);
            manifest.input_offset = *measured = InputOffsetOf(input);
            ContinueAfterCheckpoint(init, stopped);
            *written = PublishCheckpoint(local_dir, who, keep, key, manifest, images);
          } catch (...) {
            clean();
            throw;
          }
          clean();
          return result;
        },
        [job, dir = plan.dir, written, measured](const DumpOutcome& result) {
          job->Stay();
          if (!result.error.empty()) {
            spdlog::warn("guest {}: checkpoint failed: {}", job->home_pid(), result.error);
            AnswerCheckpointed(*job, "", result.error);
            return;
          }
          std::string path = fmt::format("{}/ckpt-{}", dir, written->number);
          spdlog::info("guest {}: checkpoint written to {} at its home", job->home_pid(), path);
          AnswerCheckpointed(*job, path, "", *measured);
        });
  } catch (const Error& e) {
    job->Stay();
    AnswerCheckpointed(*job, "", e.what());
  }
}

}  // namespace homeward
