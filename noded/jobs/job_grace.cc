// Guests whose home is unreachable. Their file calls wait (homefs is a hard mount) and
// their output waits in the relay's buffers; past [recovery] home_grace_s the guest is
// frozen to this node's disk (its processes, and the homefs files they hold, are gone
// meanwhile) and continued here, on the relay it kept, when the home is back.
#include <dirent.h>
#include <sys/stat.h>
#include <unistd.h>

#include <string_view>

#include <spdlog/spdlog.h>

#include "job_journal.h"
#include "job_registry.h"
#include "migration.h"
#include "uv_work.h"

namespace homeward {

void JobRegistry::HomeUnreachable(const std::string& home) {
  if (home == config_.name) return;
  if (!home_grace_.unreachable(home)) {
    spdlog::info("home {} is unreachable: its guests here wait up to {} s", home,
                 config_.recovery.home_grace.count());
  }
  home_grace_.Unreachable(home, static_cast<int64_t>(uv_now(loop_)));
}

void JobRegistry::HomeReachable(const std::string& home) {
  home_grace_.Reachable(home);
  for (auto& [id, frozen] : frozen_guests_) {
    if (frozen->launch.home == home && !frozen->continuing) ContinueGuest(id, frozen);
  }
}

void JobRegistry::FreezeOverdueGuests() {
  // A guest taken back frozen after a restart whose restore failed (its home's files not
  // mounted here yet, say) is tried again while its home is reachable.
  int64_t now = static_cast<int64_t>(uv_now(loop_));
  for (auto& [id, frozen] : frozen_guests_) {
    if (frozen->reattach && !frozen->continuing && frozen->retry_ms >= 0 &&
        now >= frozen->retry_ms && !home_grace_.unreachable(frozen->launch.home)) {
      ContinueGuest(id, frozen);
    }
  }
  for (const auto& home : home_grace_.Overdue(static_cast<int64_t>(uv_now(loop_)))) {
    std::vector<std::pair<uint64_t, std::shared_ptr<Job>>> guests;
    for (const auto& [id, job] : guests_) {
      if (job->launch().home == home && job->state() == JobState::RUNNING) {
        guests.emplace_back(id, job);
      }
    }
    if (!guests.empty()) {
      spdlog::warn("home {} unreachable for {} s: freezing its {} guest(s) here", home,
                   config_.recovery.home_grace.count(), guests.size());
    }
    for (auto& [id, job] : guests) {
      try {
        FreezeGuest(id, job);
      } catch (const Error& e) {
        spdlog::error("guest {}: cannot freeze it: {}; it waits on", job->home_pid(), e.what());
      }
    }
  }
}

void JobRegistry::FreezeGuest(uint64_t id, std::shared_ptr<Job> job) {
  std::string frozen_root = config_.state_dir + "/frozen";
  ::mkdir(frozen_root.c_str(), 0700);
  std::string dir = fmt::format("{}/guest-{}-{}", frozen_root, job->launch().home, job->home_pid());
  migrate::RemoveImageDir(dir);
  HW_SYSCALL(::mkdir(dir.c_str(), 0700), "create {}", dir);
  // Journaled: a restart during the dump continues it. Its input is held meanwhile.
  job->Depart(move::DumpKind::kFreeze, {}, /*journaled=*/true);
  job->relay().PauseReading(true);
  DumpOffLoop(
      job, migrate::AfterDump::kStop,
      [dir](pid_t init, const migrate::DumpOptions& options) {
        return migrate::Dump(init, dir, options);
      },
      [this, id, job, dir](const DumpOutcome& result) {
        auto it = guests_.find(id);
        if (!result.error.empty() || it == guests_.end() || it->second != job) {
          job->Stay(result.error);
          migrate::RemoveImageDir(dir);
          job->relay().PauseReading(false);
          spdlog::error("guest {}: freezing failed ({}); it waits on", job->home_pid(),
                        result.error.empty() ? "it ended meanwhile" : result.error);
          return;
        }
        auto frozen = std::make_shared<FrozenGuest>();
        frozen->dir = dir;
        frozen->launch = job->launch();
        frozen->pipes = job->pipe_roles();
        frozen->relay = job->relay();
        frozen->migrations = job->migrations();
        frozen->go_home = config_.recovery.frozen_go_home;
        // Journaled before the running copy goes, so that a restart of this daemon at any
        // moment finds either the running guest or the frozen one: its output its home
        // has not acknowledged and its unread input (not in its images) on disk first.
        try {
          frozen->output = job->PendingOutput(kFrozenOutputLimit);
          frozen->launch.input = Job::ReclaimInput(job->input_place());
          SaveFrozenOutput(dir, frozen->output);
          SaveFrozenInput(dir, frozen->launch.input);
          JournalFrozenGuest(*frozen, job->init_pid(), job->init_start(), job->keeper().pid(),
                             job->keeper().start_time());
        } catch (const Error& e) {
          migrate::ContinueJob(job->init_pid());
          job->Stay(e.what());
          migrate::RemoveImageDir(dir);
          job->relay().PauseReading(false);
          spdlog::error("guest {}: freezing failed ({}); it waits on", job->home_pid(), e.what());
          return;
        }
        // What it wrote before the dump went into the relay's buffer too, and the frozen
        // copy is killed; the home hears nothing of it. Its journal entry is the frozen
        // one now: the running copy's keeper goes, its entry stays.
        job->KeepAcrossRestarts(nullptr, nullptr);
        job->AbandonAfterMove();
        job->LeftFrozen();
        guests_.erase(it);
        StreamHandlers handlers;
        handlers.on_message = [](IncomingMessage&) {};  // not read while frozen
        handlers.on_close = [this, id] {
          // The home ended the job (its mosrun went) or the relay broke: nothing to
          // continue.
          auto it = frozen_guests_.find(id);
          if (it == frozen_guests_.end() || it->second->continuing) return;
          spdlog::warn("frozen guest {}: its relay to {} closed; dropping it",
                       it->second->launch.identity.home_pid, it->second->launch.home);
          DropFrozenGuest(*it->second);
          frozen_guests_.erase(it);
        };
        frozen->relay.SetHandlers(std::move(handlers));
        frozen->relay.PauseReading(true);
        frozen_guests_[id] = frozen;
        spdlog::info("guest {} of {} frozen to {} ({} bytes of images)",
                     frozen->launch.identity.home_pid, frozen->launch.home, dir,
                     result.dump.image_bytes);
        if (on_change_) on_change_();
        // The home may have come back while the dump ran.
        if (!home_grace_.unreachable(frozen->launch.home)) ContinueGuest(id, frozen);
      });
}

void JobRegistry::ContinueGuest(uint64_t id, std::shared_ptr<FrozenGuest> frozen) {
  frozen->continuing = true;
  auto result = std::make_shared<Restoring>();
  std::string dir = frozen->dir;
  auto pipes = frozen->pipes;
  std::string root = frozen->launch.root;
  std::string init_path = init_path_;
  FaultPoints faults = faults_;
  spdlog::info("home {} is back: continuing guest {}", frozen->launch.home,
               frozen->launch.identity.home_pid);
  int status = QueueWork(
      loop_,
      [result, dir, pipes, root, init_path, faults] {
        try {
          result->restored = RestoreHere(dir, pipes, root, init_path, faults, true);
        } catch (const std::exception& e) {
          result->error = e.what();
        }
      },
      [this, alive = alive_, id, frozen, result] {
        if (*alive) ContinuedGuest(id, frozen, *result);
      });
  frozen->retry_ms = -1;
  if (status < 0) {
    frozen->continuing = false;
    spdlog::error("guest {}: cannot start continuing it: {}", frozen->launch.identity.home_pid,
                  uv_strerror(status));
  }
}

void JobRegistry::ContinuedGuest(uint64_t id, const std::shared_ptr<FrozenGuest>& frozen,
                                 Restoring& result) {
  auto it = frozen_guests_.find(id);
  if (it == frozen_guests_.end() || it->second != frozen) return;  // dropped
  if (!frozen->reattach && !frozen->relay.open()) result.error = "its relay to the home closed";
  std::shared_ptr<Job> job;
  if (result.error.empty()) job = AdoptContinuedGuest(id, *frozen, result);
  if (!job) {
    // Tried again when the home is next back (or dropped when the relay closes).
    result.restored.reset();
    frozen->continuing = false;
    if (frozen->reattach) frozen->retry_ms = static_cast<int64_t>(uv_now(loop_)) + 2000;
    spdlog::error("guest {} stays frozen in {}: {}", frozen->launch.identity.home_pid, frozen->dir,
                  result.error);
    return;
  }
  job->set_migrations(frozen->migrations);
  // Its running entry (AdoptRestored) has replaced the frozen one: the images go.
  migrate::RemoveImageDir(frozen->dir);
  frozen_guests_.erase(it);
  guests_[id] = job;
  if (on_change_) on_change_();
  RunContinuedGuest(*frozen, job);
}

std::shared_ptr<Job> JobRegistry::AdoptContinuedGuest(uint64_t id, const FrozenGuest& frozen,
                                                      Restoring& result) {
  try {
    JobLaunch launch = frozen.launch;
    launch.reattach = false;  // it keeps its relay, or attaches again (RunContinuedGuest)
    // Its spools hold what its home may not have had, at the home's offsets, so that the
    // home's word (after a restart of either daemon) can ask for it.
    DaemonEnds& ends = result.restored->ends;
    ends.stdout_spool = SpoolOf("stdout", frozen.output.start[1], frozen.output.data[1]);
    ends.stderr_spool = SpoolOf("stderr", frozen.output.start[2], frozen.output.data[2]);
    auto job = AdoptRestored(std::move(launch), frozen.reattach ? ControlStream() : frozen.relay,
                             std::move(result.restored->init), std::move(ends),
                             [this, id] { guests_.erase(id); });
    job->KeepOutputFrom(frozen.output);
    return job;
  } catch (const Error& e) {
    result.error = e.what();
    return nullptr;
  }
}

void JobRegistry::RunContinuedGuest(const FrozenGuest& frozen, const std::shared_ptr<Job>& job) {
  if (frozen.reattach) {
    // Frozen by a daemon before this one: its relay died with it. The job waits (its
    // output unread) for its home to take it back and say what it has had.
    spdlog::info("guest {} continues; asking its home {} to take it back", job->home_pid(),
                 job->launch().home);
    job->Detach();
    if (frozen.go_home) {
      job->OnReattached([this, weak = std::weak_ptr<Job>(job)] {
        if (auto job = weak.lock(); job && job->state() == JobState::RUNNING) SendHome(job);
      });
    }
    ReattachGuest(job, static_cast<int64_t>(uv_now(loop_)) + move::kAttachTimeoutMs);
    return;
  }
  ControlStream relay = frozen.relay;
  relay.SetHandlers(RelayHandlersFor(std::make_shared<std::weak_ptr<Job>>(job)));
  relay.PauseReading(false);
  spdlog::info("guest {} continues", job->home_pid());
  if (frozen.go_home) SendHome(job);
}

void JobRegistry::SendHome(std::shared_ptr<Job> job) {
  // [recovery] frozen_guests = "home": continued here only to be moved home at once (a
  // frozen image cannot be streamed as it is: a move dumps a running job). A move that
  // fails leaves it running here, as any failed move does.
  std::string home = job->launch().home;
  pid_t home_pid = job->home_pid();
  spdlog::info("guest {}: sending it home to {} ([recovery] frozen_guests = \"home\")",
               home_pid, home);
  MigrateGuest(job, home, [home, home_pid](const MoveOutcome& outcome) {
    if (outcome.error.empty()) {
      spdlog::info("guest {}: sent home to {}", home_pid, home);
    } else {
      spdlog::warn("guest {}: cannot send it home to {}: {}; it goes on here", home_pid, home,
                   outcome.error);
    }
  });
}

void JobRegistry::DropFrozenGuests() {
  auto frozen = std::move(frozen_guests_);
  frozen_guests_.clear();
  for (auto& [id, guest] : frozen) {
    DropFrozenGuest(*guest);
    guest->relay.Close();
  }
}

void JobRegistry::DropFrozenGuest(const FrozenGuest& frozen) {
  JournalEntry entry;
  entry.launch = frozen.launch;
  JobJournal(config_.state_dir + "/jobs").Remove(entry.Name());
  migrate::RemoveImageDir(frozen.dir);
}

void JobRegistry::JournalFrozenGuest(const FrozenGuest& frozen, pid_t init_pid, uint64_t init_start,
                                     pid_t keeper_pid, uint64_t keeper_start) {
  JournalEntry entry;
  entry.launch = frozen.launch;
  entry.launch.env.clear();  // in its images
  entry.launch.input = {};   // in its image directory (SaveFrozenInput)
  entry.frozen_dir = frozen.dir;
  entry.pipes = frozen.pipes;
  entry.frozen_go_home = frozen.go_home;
  entry.migrations = frozen.migrations;
  // The stopped copy and its keeper, killed right after this is written: a daemon
  // killed in between leaves them to the next one to end.
  entry.init_pid = init_pid;
  entry.init_start = init_start;
  entry.keeper_pid = keeper_pid;
  entry.keeper_start = keeper_start;
  JobJournal(config_.state_dir + "/jobs").Write(entry);
}

void JobRegistry::RecoverFrozenGuest(JournalEntry& entry) {
  // The copy it was frozen from, should the daemon before have died before killing it.
  KillIfSame(entry.init_pid, entry.init_start);
  KillIfSame(entry.keeper_pid, entry.keeper_start);
  auto frozen = std::make_shared<FrozenGuest>();
  frozen->dir = entry.frozen_dir;
  frozen->launch = entry.launch;
  frozen->launch.init_path = init_path_;
  frozen->launch.preload_path = preload_path_;
  frozen->pipes = entry.pipes;
  frozen->migrations = entry.migrations;
  frozen->go_home = entry.frozen_go_home;
  frozen->reattach = true;
  try {
    frozen->launch.input = LoadFrozenInput(entry.frozen_dir);
    frozen->output = LoadFrozenOutput(entry.frozen_dir);
  } catch (const Error& e) {
    spdlog::warn("frozen guest {} of {} is not taken back ({}); dropping it",
                 entry.launch.identity.home_pid, entry.launch.home, e.what());
    DropFrozenGuest(*frozen);
    return;
  }
  uint64_t id = next_guest_++;
  frozen_guests_[id] = frozen;
  spdlog::info(
      "guest {} of {} taken back after a restart: frozen to {}; continued when its "
      "home is reachable",
      entry.launch.identity.home_pid, entry.launch.home, entry.frozen_dir);
}

void JobRegistry::RemoveStaleFrozenGuests() {
  // A daemon killed while it froze a guest leaves a directory no entry names (the guest
  // ran on, its entry the running one); so does one killed after continuing it.
  std::string root = config_.state_dir + "/frozen";
  DIR* dir = ::opendir(root.c_str());
  if (!dir) return;
  std::vector<std::string> stale;
  while (dirent* entry = ::readdir(dir)) {
    std::string path = root + "/" + entry->d_name;
    if (std::string_view(entry->d_name).substr(0, 6) != "guest-") continue;
    bool named = false;
    for (const auto& [id, frozen] : frozen_guests_) named = named || frozen->dir == path;
    if (!named) stale.push_back(path);
  }
  ::closedir(dir);
  for (const auto& path : stale) {
    spdlog::info("removed {}, left by a daemon before", path);
    migrate::RemoveImageDir(path);
  }
}

Fd SpoolOf(const char* stream, uint64_t start, const std::string& data) {
  Fd spool = MakeSpool(stream);
  size_t done = 0;
  while (done < data.size()) {
    ssize_t n = HW_SYSCALL(::pwrite(spool.get(), data.data() + done, data.size() - done,
                                    static_cast<off_t>(start + done)),
                           "fill the job's {} spool", stream);
    done += static_cast<size_t>(n);
  }
  HW_SYSCALL(::ftruncate(spool.get(), static_cast<off_t>(start + data.size())),
             "fill the job's {} spool", stream);
  // The job's output is spliced in at the spool's file position: after what it holds.
  HW_SYSCALL(::lseek(spool.get(), static_cast<off_t>(start + data.size()), SEEK_SET),
             "fill the job's {} spool", stream);
  return spool;
}

}  // namespace homeward
