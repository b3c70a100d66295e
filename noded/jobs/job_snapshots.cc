// Snapshots of a job running at home: a checkpoint it runs on from, a freeze to disk,
// and continuing a frozen job.
#include "job_registry.h"

#include <sys/stat.h>

#include <spdlog/spdlog.h>

#include "checkpoint.h"
#include "checkpoint_dir.h"
#include "job_journal.h"
#include "job_replies.h"
#include "migration.h"
#include "uv_work.h"

namespace homeward {

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
      [path, who, work_root, home_pid = job->home_pid()](pid_t init, migrate::DumpOptions options) {
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
        ReplyDumped(*pending, config_.name, result.dump);
      });
}

ActingUser JobRegistry::CriuUserOf(const Job& job) const {
  const JobIdentity& user = job.launch().identity;
  return ActingUser{CriuActingDir(config_.state_dir), {user.uid, user.gid, user.groups}};
}

void JobRegistry::DumpOffLoop(const std::shared_ptr<Job>& job, migrate::AfterDump after,
                              DumpStep dump, std::function<void(const DumpOutcome&)> done) {
  auto result = std::make_shared<DumpOutcome>();
  migrate::DumpOptions options;
  options.after = after;
  options.external_pipes = job->pipe_inodes();
  options.faults = faults_;
  options.as_user = CriuUserOf(*job);
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

void JobRegistry::Freeze(int slot, std::shared_ptr<Job> job, MoveDone done, bool waits_for_room) {
  std::string frozen = config_.state_dir + "/frozen";
  ::mkdir(frozen.c_str(), 0700);
  std::string dir = fmt::format("{}/job-{}", frozen, job->home_pid());
  migrate::RemoveImageDir(dir);
  HW_SYSCALL(::mkdir(dir.c_str(), 0700), "create {}", dir);
  job->Depart(move::DumpKind::kFreeze);
  job->relay().PauseReading(true);
  try {
    DumpOffLoop(
        job, migrate::AfterDump::kStop,
        [dir](pid_t init, const migrate::DumpOptions& options) {
          return migrate::Dump(init, dir, options);
        },
        [this, slot, job, dir, done = std::move(done), waits_for_room](const DumpOutcome& outcome) {
          const DumpOutcome* result = &outcome;
          auto it = jobs_.find(slot);
          if (!result->error.empty() || it == jobs_.end() || it->second.here != job) {
            job->Stay(result->error);
            migrate::RemoveImageDir(dir);
            job->relay().PauseReading(false);
            done(MoveOutcome::Failure(
                fmt::format("job {} runs on: freezing failed: {}", job->home_pid(), result->error)));
            return;
          }
          auto away = AwayFrom(*job, move::Protocol::Frozen(job->home_pid(), job->migrations()));
          away->frozen = Away::Frozen{dir, job->launch(), job->pipe_roles(), waits_for_room};
          if (waits_for_room) MarkWaitsForRoom(dir);
          // What mosrun had of the output when the job stopped: its output goes on from
          // there when it continues.
          away->origin[1] = job->output_total(1);
          away->origin[2] = job->output_total(2);
          // The frozen job's unread input is not in its images: the record keeps it, and
          // the image directory too, for a daemon restarted meanwhile.
          try {
            away->frozen->launch.input = Job::ReclaimInput(job->input_place());
            SaveFrozenInput(dir, away->frozen->launch.input);
          } catch (const Error& e) {
            spdlog::error("job {}: its unread input is lost: {}", job->home_pid(), e.what());
          }
          job->AbandonAfterMove();
          job->LeftFrozen();
          it->second.here.reset();
          it->second.away = away;
          // mosrun's input waits (paused) until the job continues; its end ends the job.
          away->mosrun.SetHandlers(MosrunHandlersForAway(slot, away));
          away->mosrun.PauseReading(true);
          WatchMosrun(slot, away);
          spdlog::info("job {} frozen to {}", away->home_pid(), dir);
          JournalAways();  // over the entry of the job here, at once
          MoveOutcome frozen_to;
          frozen_to.where = "frozen";
          frozen_to.image_bytes = result->dump.image_bytes;
          done(frozen_to);
        });
  } catch (const Error& e) {
    job->Stay(e.what());
    job->relay().PauseReading(false);
    throw;
  }
}

void JobRegistry::Continue(int slot, std::shared_ptr<Away> away, MoveDone done) {
  auto result = std::make_shared<Restoring>();
  std::string dir = away->frozen->dir;
  auto pipes = away->frozen->pipes;
  std::string init_path = init_path_;
  FaultPoints faults = faults_;
  away->protocol.Continue();  // throws when it is not frozen, or already continuing
  int status = QueueWork(
      loop_,
      [result, dir, pipes, init_path, faults] {
        try {
          result->restored = RestoreHere(dir, pipes, "/", init_path, faults);
        } catch (const std::exception& e) {
          result->error = e.what();
        }
      },
      [this, alive = alive_, slot, away, result, done = std::move(done)] {
        if (*alive) Continued(slot, away, *result, done);
      });
  if (status < 0) {
    away->protocol.ContinueDone(false);
    Fail(ErrorKind::kFailed, "cannot start continuing: {}", uv_strerror(status));
  }
}

void JobRegistry::Continued(int slot, const std::shared_ptr<Away>& away, Restoring& result,
                            const MoveDone& done) {
  auto it = jobs_.find(slot);
  if (result.error.empty() && (it == jobs_.end() || it->second.away != away)) {
    result.error = "its mosrun is gone";
  }
  auto weak_job = std::make_shared<std::weak_ptr<Job>>();
  std::shared_ptr<Job> job;
  if (result.error.empty()) {
    try {
      job = AdoptRestored(away->frozen->launch, away->mosrun, std::move(result.restored->init),
                          std::move(result.restored->ends), [this, slot] { jobs_.erase(slot); },
                          slot);
    } catch (const Error& e) {
      result.error = e.what();
    }
  }
  if (!result.error.empty()) {
    result.restored.reset();  // a restored copy not taken over is killed and reaped
    away->protocol.ContinueDone(false);
    done(MoveOutcome::Failure(fmt::format("job {} stays frozen: {}", away->home_pid(), result.error)));
    return;
  }
  *weak_job = job;
  away->protocol.ContinueDone(true);
  job->set_migrations(away->protocol.record().migrations);
  job->set_output_base(away->origin[1] + away->forwarded[1], away->origin[2] + away->forwarded[2]);
  away->journaled.clear();  // the entry of the job here has replaced the frozen one
  away->journaled_inputs.reset();
  migrate::RemoveImageDir(away->frozen->dir);
  away->frozen.reset();
  away->mosrun_watch.reset();  // its stream is read again: its hangup is seen there
  away->mosrun.SetHandlers(RelayHandlersFor(weak_job));
  away->mosrun.PauseReading(false);
  it->second.here = job;
  it->second.away.reset();
  spdlog::info("job {} continues", job->home_pid());
  MoveOutcome outcome;
  outcome.where = config_.name;
  done(outcome);
}

}  // namespace homeward
