// Restarting a job from the newest good checkpoint in its directory: by its user
// (mosrun -R), or by its home when the node it ran on is lost. See "Checkpoints and
// recovery" in docs/ARCHITECTURE.md.
#include <sys/stat.h>

#include <algorithm>
#include <cstring>
#include <ctime>
#include <optional>

#include <capnp/message.h>
#include <spdlog/spdlog.h>

#include "checkpoint_store.h"
#include "input_log.h"
#include "job_registry.h"
#include "job_replies.h"
#include "migration.h"
#include "terminal_stream.h"
#include "uv_error.h"
#include "uv_work.h"

namespace homeward {

namespace {

// A checkpoint found, checked, copied and restored at home, or why not.
struct RestoredFromDir {
  CheckpointManifest manifest;
  std::optional<RestoredHere> restored;
  std::string error;
  ErrorKind kind = ErrorKind::kFailed;
  std::string not_replayed;  // why the input after the checkpoint is not given again
};

// The input the job had after checkpoint `manifest`, from its log under `state_dir`, as
// the restored job's carried input (manifest.launch.input); else says why not.
void ReplayInput(RestoredFromDir& out, const std::string& state_dir, const std::string& dir) {
  CheckpointManifest& manifest = out.manifest;
  if (!manifest.input_offset) {
    out.not_replayed = "the checkpoint does not say where the job stood in its input";
    return;
  }
  std::string path = InputLog::PathFor(state_dir, manifest.launch.identity.uid, dir);
  std::string why;
  auto bytes =
      InputLog::Replay(path, manifest.launch.started_unix_ms, *manifest.input_offset, &why);
  if (!bytes) {
    out.not_replayed = why;
    return;
  }
  manifest.launch.input = InputCarry{*manifest.input_offset, std::move(*bytes), false};
}

// Blocks: for libuv's thread pool. `copy` is a fresh root-only directory; removed after.
void RestoreFromDir(RestoredFromDir& out, const std::string& dir, const FsIdentity& who,
                    bool any_user, const std::vector<uint8_t>& key, const std::string& copy,
                    const std::string& init_path, const FaultPoints& faults,
                    const std::string& state_dir) {
  try {
    out.manifest = CopyNewestCheckpoint(dir, who, any_user, key, copy);
    ReplayInput(out, state_dir, dir);
    out.restored = RestoreHere(copy, out.manifest.pipes, "/", init_path, faults);
  } catch (const Error& e) {
    out.error = e.what();
    out.kind = e.kind();
  } catch (const std::exception& e) {
    out.error = e.what();
  }
  migrate::RemoveImageDir(copy);
}

// What a restart says of the input it gives again (the daemon's log says why it gives none).
std::string Replayed(const RestoredFromDir& out) {
  if (!out.not_replayed.empty()) {
    spdlog::info("restart from checkpoint {}: the input after it is not given again: {}",
                 out.manifest.number, out.not_replayed);
    return "";
  }
  size_t bytes = out.manifest.launch.input.data.size();
  return bytes ? fmt::format(", with the {} bytes of input it was given after it", bytes) : "";
}

std::string UtcTime(int64_t unix_ms) {
  time_t seconds = static_cast<time_t>(unix_ms / 1000);
  tm utc{};
  gmtime_r(&seconds, &utc);
  char text[64];
  strftime(text, sizeof text, "%Y-%m-%d %H:%M:%S UTC", &utc);
  return text;
}

}  // namespace

std::string JobRegistry::RestartCopyDir(pid_t pid) const {
  std::string work_root = config_.state_dir + "/restart";
  ::mkdir(work_root.c_str(), 0700);
  std::string copy = fmt::format("{}/job-{}-XXXXXX", work_root, pid);
  return ::mkdtemp(copy.data()) ? copy : "";
}

void JobRegistry::TellRestarted(const Job& job, ControlStream& relay, const std::string& from) {
  spdlog::info("job {} restarted from {}", job.home_pid(), from);
  capnp::MallocMessageBuilder message;
  auto started = message.initRoot<schema::ControlReply>().initJobStarted();
  started.setHomePid(job.home_pid());
  started.setWhere(config_.name);
  started.setRestartedFrom(from);
  // The init the checkpoint restored relays a terminal when mosrun said so at the start.
  std::string terminal_entry = std::string(terminal::kEnvName) + "=";
  for (const auto& entry : job.launch().env) {
    if (entry.rfind(terminal_entry, 0) == 0) {
      started.setTerminal(entry.substr(terminal_entry.size()));
    }
  }
  relay.Send(message);
  if (on_change_) on_change_();
}

std::shared_ptr<Job> JobRegistry::TakeOverRestarted(int slot, const std::shared_ptr<Away>& away,
                                                    const CheckpointPlan& plan,
                                                    const CheckpointManifest& manifest,
                                                    RestoredHere restored) {
  JobLaunch launch = RestartedLaunch(manifest);
  launch.identity.home_pid = away->home_pid();
  launch.checkpoint = plan;
  // A new run: a copy of the old one that comes back is refused (fencing).
  launch.generation = std::max(launch.generation, away->protocol.record().generation) + 1;
  // Journaled as a job of this home, over the entry of the job away: a restart of this
  // daemon takes the restarted job back, and its end removes the entry.
  std::shared_ptr<Job> job =
      AdoptRestored(std::move(launch), away->mosrun, std::move(restored.init),
                    std::move(restored.ends), [this, slot] { jobs_.erase(slot); }, slot);
  auto weak_job = std::make_shared<std::weak_ptr<Job>>(job);
  // Its output goes on where mosrun stands in it.
  job->set_output_base(away->origin[1] + away->forwarded[1],
                       away->origin[2] + away->forwarded[2]);
  away->mosrun.SetHandlers(RelayHandlersFor(weak_job));
  away->mosrun.PauseReading(false);
  jobs_[slot].here = job;
  jobs_[slot].away.reset();
  auto planned = checkpoint_plans_.find(slot);
  if (planned != checkpoint_plans_.end() && planned->second.home_pid == job->home_pid()) {
    planned->second.busy = false;
    if (plan.every_ms > 0) {
      planned->second.next_ms = static_cast<int64_t>(uv_now(loop_)) + plan.every_ms;
    }
  }
  return job;
}

void JobRegistry::PlaceRestarted(int slot, const std::shared_ptr<Job>& job,
                                 const std::string& where, bool best) {
  pid_t home_pid = job->home_pid();
  try {
    std::string target = Place(job->launch(), where, best);
    if (target.empty() || target == config_.name) return;
    MoveFromHome(slot, job, target, [home_pid, target](const MoveOutcome& outcome) {
      if (outcome.error.empty()) {
        spdlog::info("job {}: restarted, now runs on {}", home_pid, target);
      } else {
        spdlog::warn("job {}: restarted at home; it stays there: {}", home_pid, outcome.error);
      }
    });
  } catch (const Error& e) {
    spdlog::warn("job {}: restarted at home; it stays there: {}", home_pid, e.what());
  }
}

JobLaunch JobRegistry::RestartedLaunch(const CheckpointManifest& manifest) const {
  JobLaunch launch = manifest.launch;
  launch.home = config_.name;
  launch.root.assign(1, '/');
  launch.guest = false;
  launch.reattach = false;
  launch.init_path = init_path_;
  launch.preload_path = preload_path_;
  // launch.input: what the job was given after its checkpoint (ReplayInput), if anything.
  return launch;
}

bool JobRegistry::RestartLost(int slot, const std::shared_ptr<Away>& away, const std::string& why) {
  auto planned = checkpoint_plans_.find(slot);
  if (planned == checkpoint_plans_.end() || planned->second.home_pid != away->home_pid() ||
      !away->mosrun.open()) {
    return false;
  }
  if (planned->second.waiter) {
    planned->second.waiter->SendError(
        Error(ErrorKind::kDisconnected, fmt::format("checkpoint failed: {}", why)));
    planned->second.waiter.reset();
  }
  planned->second.busy = true;  // no periodic one meanwhile
  planned->second.busy_until_ms = 0;
  CheckpointPlan plan = planned->second.plan;
  FsIdentity who = planned->second.owner;
  pid_t home_pid = away->home_pid();
  spdlog::warn("job {}: {}; restarting it at home from its newest checkpoint in {}", home_pid, why,
               plan.dir);
  away->peer.Close();  // the job's node, if it is still there, kills its copy
  std::string copy = RestartCopyDir(home_pid);
  auto outcome = std::make_shared<RestoredFromDir>();
  std::string init_path = init_path_;
  FaultPoints faults = faults_;
  auto key = CheckpointKey(config_.cluster_key);
  auto give_up = [this, slot, away, why](const std::string& reason) {
    auto it = jobs_.find(slot);
    if (it != jobs_.end() && it->second.away == away) jobs_.erase(it);
    ForgetAway(*away);
    std::string message =
        fmt::format("{}; it could not be restarted from a checkpoint: {}", why, reason);
    spdlog::warn("job {}: {}", away->home_pid(), message);
    SendExit(away->mosrun, 255, message);
    away->mosrun.Close();
  };
  if (copy.empty()) {
    give_up(fmt::format("cannot create a directory in {}/restart: {}", config_.state_dir,
                        strerror(errno)));
    return true;
  }
  int status = QueueWork(
      loop_,
      [outcome, dir = plan.dir, who, key, copy, init_path, faults, state_dir = config_.state_dir] {
        RestoreFromDir(*outcome, dir, who, false, key, copy, init_path, faults, state_dir);
      },
      [this, alive = alive_, slot, away, outcome, plan, why, give_up] {
        if (!*alive) return;
        auto it = jobs_.find(slot);
        if (it == jobs_.end() || it->second.away != away || !away->mosrun.open()) {
          outcome->restored.reset();  // its mosrun left meanwhile: killed and reaped
          if (it != jobs_.end() && it->second.away == away) jobs_.erase(it);
          ForgetAway(*away);
          return;
        }
        if (!outcome->error.empty()) {
          give_up(outcome->error);
          return;
        }
        std::shared_ptr<Job> job;
        try {
          job = TakeOverRestarted(slot, away, plan, outcome->manifest,
                                  std::move(*outcome->restored));
        } catch (const Error& e) {
          outcome->restored.reset();
          give_up(e.what());
          return;
        }
        TellRestarted(*job, job->relay(),
                      fmt::format("checkpoint {} of {}, taken {}, at home ({}){}",
                                  outcome->manifest.number, plan.dir,
                                  UtcTime(outcome->manifest.taken_unix_ms), why,
                                  Replayed(*outcome)));
      });
  if (status < 0) {
    migrate::RemoveImageDir(copy);
    give_up(uv_strerror(status));
  }
  return true;
}

void JobRegistry::RestartJob(schema::RestartSpec::Reader spec, ReplySender reply) {
  const Caller& caller = reply.caller();  // a local user: control_permissions.h
  if (init_path_.empty()) {
    Fail(ErrorKind::kFailed, "mosjob-init is missing beside mosnoded; the installation is broken");
  }
  std::string dir = spec.getDir();
  if (dir.empty() || dir[0] != '/') {
    Fail(ErrorKind::kInvalidInput, "the checkpoint directory must be an absolute path, not '{}'",
         dir);
  }
  JobIdentity caller_id = JobIdentity::OfProcess(caller.pid, caller.uid, caller.gid);
  FsIdentity who{caller_id.uid, caller_id.gid, caller_id.groups};
  bool any_user = caller.uid == 0;
  auto key = CheckpointKey(config_.cluster_key);
  std::string copy = RestartCopyDir(caller.pid);
  HW_SYSCALL(copy.empty() ? -1 : 0, "create a directory in {}/restart", config_.state_dir);
  auto outcome = std::make_shared<RestoredFromDir>();
  // The connection is the job's relay from now on; what mosrun sends (its input) waits,
  // unread, until the job is there to take it.
  auto weak_job = std::make_shared<std::weak_ptr<Job>>();
  ControlStream relay = reply.OpenStream(RelayHandlersFor(weak_job));
  relay.PauseReading(true);
  std::string init_path = init_path_;
  FaultPoints faults = faults_;
  int status = QueueWork(
      loop_,
      [outcome, dir, who, any_user, key, copy, init_path, faults, state_dir = config_.state_dir] {
        RestoreFromDir(*outcome, dir, who, any_user, key, copy, init_path, faults, state_dir);
      },
      [this, alive = alive_, outcome, relay, weak_job, dir, caller_id,
       where = std::string(spec.getWhere()), best = spec.getPlaceBest(),
       spec_every = spec.getCheckpointEveryMs(), spec_keep = spec.getCheckpointKeep()]() mutable {
        if (!*alive) return;
        if (!relay.open()) return;  // mosrun left: the restored job is killed and reaped
        if (!outcome->error.empty()) {
          SendExit(relay, 255, fmt::format("cannot restart from {}: {}", dir, outcome->error));
          relay.Close();
          return;
        }
        JobLaunch launch = RestartedLaunch(outcome->manifest);
        launch.generation += 1;  // a new run of the job
        // The new mosrun is the job's deputy now: mosps lists the job by its pid. The
        // job's own processes keep the ids they had (see ARCHITECTURE.md).
        launch.identity.home_pid = caller_id.home_pid;
        launch.identity.home_ppid = caller_id.home_ppid;
        launch.checkpoint.dir = dir;
        if (spec_every) launch.checkpoint.every_ms = static_cast<int64_t>(spec_every);
        if (spec_keep) launch.checkpoint.keep = spec_keep;
        std::shared_ptr<Job> job;
        int slot = -1;
        CheckpointPlan plan = launch.checkpoint;
        try {
          // Its shim keeps the pid base it had: the slot of that base when it is free.
          slot = static_cast<int>((launch.pid_base >> 22) - 1);
          if (slot < 0 || slot >= kMaxJobs || jobs_.count(slot)) slot = FreeSlot();
          job = AdoptRestored(std::move(launch), relay, std::move(outcome->restored->init),
                              std::move(outcome->restored->ends),
                              [this, slot] { jobs_.erase(slot); }, slot);
        } catch (const Error& e) {
          outcome->restored.reset();
          SendExit(relay, 255, fmt::format("cannot take over the restarted job: {}", e.what()));
          relay.Close();
          return;
        }
        *weak_job = job;
        relay.PauseReading(false);
        jobs_[slot].here = job;
        PlanCheckpoints(slot, job->launch().identity, plan, job->launch().started_unix_ms);
        TellRestarted(*job, relay,
                      fmt::format("checkpoint {} of {}, taken {}{}", outcome->manifest.number,
                                  dir, UtcTime(outcome->manifest.taken_unix_ms),
                                  Replayed(*outcome)));
        if (!where.empty() || best) PlaceRestarted(slot, job, where, best);
      });
  if (status < 0) {
    migrate::RemoveImageDir(copy);
    Fail(ErrorKind::kFailed, "cannot start the restart: {}", uv_strerror(status));
  }
}

}  // namespace homeward
