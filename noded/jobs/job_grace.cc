// Guests whose home is unreachable. Their file calls wait (homefs is a hard mount) and
// their output waits in the relay's buffers; past [recovery] home_grace_s the guest is
// frozen to this node's disk (its processes, and the homefs files they hold, are gone
// meanwhile) and continued here, on the relay it kept, when the home is back.
#include <sys/stat.h>

#include <spdlog/spdlog.h>

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
  job->set_migrating(true);  // holds its input
  job->relay().PauseReading(true);
  DumpOffLoop(
      job, migrate::AfterDump::kStop,
      [dir](pid_t init, const migrate::DumpOptions& options) {
        return migrate::Dump(init, dir, options);
      },
      [this, id, job, dir](const DumpOutcome& result) {
        auto it = guests_.find(id);
        if (!result.error.empty() || it == guests_.end() || it->second != job) {
          job->set_migrating(false);
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
        // Its unread input is not in its images: the record keeps it.
        try {
          frozen->launch.input = Job::ReclaimInput(job->input_place());
        } catch (const Error& e) {
          spdlog::error("guest {}: its unread input is lost: {}", job->home_pid(), e.what());
        }
        // What it wrote before the dump goes into the relay's buffer, and the frozen copy
        // is killed; the home hears nothing of it.
        job->AbandonAfterMove();
        job->set_migrating(false);
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
          migrate::RemoveImageDir(it->second->dir);
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
        if (!*alive) return;
        auto it = frozen_guests_.find(id);
        if (it == frozen_guests_.end() || it->second != frozen) return;  // dropped
        if (!frozen->relay.open()) result->error = "its relay to the home closed";
        auto weak_job = std::make_shared<std::weak_ptr<Job>>();
        std::shared_ptr<Job> job;
        if (result->error.empty()) {
          try {
            JobLaunch launch = frozen->launch;
            launch.reattach = false;  // it keeps its relay
            job =
                AdoptRestored(std::move(launch), frozen->relay, std::move(result->restored->init),
                              std::move(result->restored->ends), [this, id] { guests_.erase(id); });
          } catch (const Error& e) {
            result->error = e.what();
          }
        }
        if (!result->error.empty()) {
          // Tried again when the home is next back (or dropped when the relay closes).
          result->restored.reset();
          frozen->continuing = false;
          spdlog::error("guest {} stays frozen in {}: {}", frozen->launch.identity.home_pid,
                        frozen->dir, result->error);
          return;
        }
        *weak_job = job;
        job->set_migrations(frozen->migrations);
        frozen->relay.SetHandlers(RelayHandlersFor(weak_job));
        frozen->relay.PauseReading(false);
        migrate::RemoveImageDir(frozen->dir);
        frozen_guests_.erase(it);
        guests_[id] = job;
        spdlog::info("guest {} continues", job->home_pid());
        if (on_change_) on_change_();
        if (config_.recovery.frozen_go_home) SendHome(job);
      });
  if (status < 0) {
    frozen->continuing = false;
    spdlog::error("guest {}: cannot start continuing it: {}", frozen->launch.identity.home_pid,
                  uv_strerror(status));
  }
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
    migrate::RemoveImageDir(guest->dir);
    guest->relay.Close();
  }
}

}  // namespace homeward
