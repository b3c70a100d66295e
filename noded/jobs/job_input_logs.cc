// The input logs of the jobs of this home (input_log.h): opened with a job's checkpoint
// plan, appended to as mosrun's input passes, synced once per event-loop turn, removed when
// the exit of a job with no checkpoint reached its mosrun, and swept at start.
#include <spdlog/spdlog.h>

#include "c_boundary.h"
#include "input_log.h"
#include "job_registry.h"
#include "uv_error.h"

namespace homeward {

void JobRegistry::OpenInputLog(PlannedCheckpoints& planned, const std::string& dir, int64_t run,
                               bool fresh) {
  std::string log = InputLog::PathFor(config_.state_dir, planned.owner.uid, dir);
  try {
    planned.input_log = std::make_shared<InputLog>(InputLog::Open(log, run, fresh));
    InputLog::NoteDir(log, dir);
  } catch (const Error& e) {
    spdlog::warn("job {}: its input is not kept for restarts: {}", planned.home_pid, e.what());
  }
}

void JobRegistry::LogInput(pid_t home_pid, uint64_t offset, const void* data, size_t size) {
  for (auto& [slot, planned] : checkpoint_plans_) {
    if (planned.home_pid != home_pid || !planned.input_log) continue;
    try {
      planned.input_log->Append(offset, data, size);
    } catch (const Error& e) {
      // What follows starts the log anew (a gap): checkpoints before it are not replayed.
      spdlog::warn("job {}: its input log misses bytes from {}: {}", home_pid,
                   planned.input_log->end(), e.what());
    }
    // Synced at the end of this loop turn, with whatever else this turn logged: before
    // the loop reads more input, and once for many writes.
    if (planned.input_log->dirty() && !uv_is_active(input_sync_.base())) {
      int status = uv_check_start(input_sync_.get(), [](uv_check_t* check) {
        GuardedCall("syncing input logs",
                    [check] { static_cast<JobRegistry*>(check->data)->SyncInputLogs(); });
      });
      if (status < 0) spdlog::warn("cannot sync input logs: {}", uv_strerror(status));
    }
    return;
  }
}

void JobRegistry::SyncInputLogs() {
  uv_check_stop(input_sync_.get());
  for (auto& [slot, planned] : checkpoint_plans_) {
    if (!planned.input_log) continue;
    try {
      planned.input_log->Sync();
    } catch (const Error& e) {
      spdlog::warn("job {}: {}", planned.home_pid, e.what());
    }
  }
}

void JobRegistry::EndInputLog(pid_t home_pid) {
  for (auto& [slot, planned] : checkpoint_plans_) {
    if (planned.home_pid != home_pid || !planned.input_log) continue;
    // With a checkpoint, the log stays with it: `mosrun -R` may restart the job from it
    // again, ended or not, and is then given the same input.
    if (planned.restartable) continue;
    InputLog::Remove(planned.input_log->path());
    planned.input_log.reset();
  }
}

void JobRegistry::JobEnded(Job& job) {
  if (!job.launch().guest && job.exit_delivered()) EndInputLog(job.home_pid());
}

void JobRegistry::SweepInputLogs() {
  std::set<std::string> in_use;
  for (const auto& [slot, planned] : checkpoint_plans_) {
    if (planned.input_log) in_use.insert(planned.input_log->path());
  }
  for (const std::string& path : InputLog::SweepOrphans(config_.state_dir, in_use)) {
    spdlog::info(
        "removed the input log {}: no job is journaled with it and its checkpoint "
        "directory is gone",
        path);
  }
}

}  // namespace homeward
