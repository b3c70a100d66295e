// Moves: mosmigrate's requests, the moves this node makes of jobs running here (home
// jobs and guests), and the move protocol's steps carried out for jobs away.
#include "job_registry.h"

#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <spdlog/spdlog.h>

#include "c_boundary.h"
#include "checkpoint.h"
#include "control_permissions.h"
#include "job_replies.h"
#include "migration.h"
#include "partner_services.h"
#include "uv_handle.h"
#include "uv_work.h"

namespace homeward {

namespace {

// A guest's last word to its home once it moved on: all it left here is sent.
void SayMovedOn(ControlStream relay, const std::string& target) {
  capnp::MallocMessageBuilder message;
  message.initRoot<schema::ControlReply>().setMovedOn(target);
  relay.Send(message);
  relay.Close();
}

// The fault point movedon-hold: the word is said kMovedOnHoldSeconds later (to a relay
// that may have closed by then: it is then not said at all).
struct HeldWord {
  UvHandle<uv_timer_t> timer;
  ControlStream relay;
  std::string target;
};

void HoldMovedOn(uv_loop_t* loop, ControlStream relay, const std::string& target) {
  auto* held = new HeldWord{UvHandle<uv_timer_t>(), std::move(relay), target};
  uv_timer_init(loop, held->timer.get());
  held->timer.get()->data = held;
  uv_unref(held->timer.base());  // a daemon stopping meanwhile does not wait for it
  uv_timer_start(
      held->timer.get(),
      [](uv_timer_t* timer) {
        std::unique_ptr<HeldWord> held(static_cast<HeldWord*>(timer->data));
        GuardedCall("movedon-hold", [&held] { SayMovedOn(held->relay, held->target); });
      },
      static_cast<uint64_t>(kMovedOnHoldSeconds) * 1000, 0);
}

}  // namespace

void JobRegistry::MigrateJob(schema::MigrateRequest::Reader request, ReplySender reply) {
  using Verb = schema::MigrateRequest::Which;
  pid_t home_pid = request.getHomePid();
  Verb verb = request.which();
  auto it = jobs_.begin();
  for (; it != jobs_.end(); ++it) {
    pid_t pid = it->second.here ? it->second.here->home_pid() : it->second.away->home_pid();
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
      Continue(slot, it->second.away, ReplyWhenMoved(std::move(reply)));
      return;
    }
    if (verb == Verb::CHECKPOINT && request.getCheckpoint().size() == 0 && it->second.away &&
        !it->second.away->frozen) {
      // One more in the job's own directory, written by the node it runs on.
      AskCheckpointAway(slot, it->second.away, std::make_shared<ReplySender>(std::move(reply)));
      return;
    }
    if (!it->second.here) {
      Fail(ErrorKind::kInvalidInput,
           "job {} is {}; {} works on a job running at home (mosmigrate "
           "{} home first)",
           home_pid, it->second.away->frozen ? "frozen" : "away on " + it->second.away->where(),
           what, home_pid);
    }
    if (verb == Verb::CONTINUE) Fail(ErrorKind::kInvalidInput, "job {} is not frozen", home_pid);
    if (JobState state = it->second.here->state(); state != JobState::RUNNING) {
      Fail(ErrorKind::kOverloaded, "job {} is {}; try again", home_pid, JobStateName(state));
    }
    if (verb == Verb::FREEZE) {
      Freeze(slot, it->second.here, ReplyWhenMoved(std::move(reply)));
    } else if (request.getCheckpoint().size() == 0) {
      // No directory named: one more in the job's own (mosrun -C).
      CheckpointToPlan(slot, it->second.here, std::make_shared<ReplySender>(std::move(reply)));
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
  if (it->second.away) {
    MoveAway(it->second.away, target, ReplyWhenMoved(std::move(reply)));
    return;
  }
  MoveFromHome(slot, it->second.here, target, ReplyWhenMoved(std::move(reply)));
}

void JobRegistry::MoveAway(std::shared_ptr<Away> away, const std::string& target, MoveDone done) {
  if (target != config_.name && target != away->where()) {
    PeerAddress address = resolve_(target);  // throws for an unknown node
    if (std::string why =
            PartnerMayMoveOut(config_, target, address.cluster, JobHome{config_.name, {}});
        !why.empty()) {
      Fail(ErrorKind::kPermissionDenied, "job {} cannot move to {}: {}", away->home_pid(), target,
           why);
    }
  }
  away->protocol.Ask(target);  // throws when the job cannot move now
  capnp::MallocMessageBuilder message;
  auto root = message.initRoot<schema::ControlRequest>();
  root.setVersion(schema::CONTROL_VERSION);
  auto migrate = root.initMigrateJob();
  migrate.setHomePid(away->home_pid());
  migrate.setMoveTo(target);
  away->peer.Send(message);
  away->waiter = std::move(done);
}

void JobRegistry::AttachGuest(schema::AttachGuest::Reader attach, ReplySender reply) {
  if (const std::string& cluster = reply.caller().peer_cluster; !config_.OwnCluster(cluster)) {
    // A partner's node attaches jobs that arrived at its own cluster's nodes only.
    auto known = nodes_ ? nodes_->Find(attach.getNode()) : std::nullopt;
    if (!known || known->cluster != cluster) {
      Fail(ErrorKind::kPermissionDenied, "job {}: node {} is no node of cluster '{}' here",
           attach.getHomePid(), attach.getNode().cStr(), cluster);
    }
  }
  for (auto& [slot, entry] : jobs_) {
    if (entry.here && entry.here->home_pid() == attach.getHomePid() &&
        entry.here->departure().awaiting()) {
      TakeOverDeparted(slot, entry.here, attach, std::move(reply));
      return;
    }
    if (!entry.away || entry.away->home_pid() != attach.getHomePid()) continue;
    auto away = entry.away;
    if (attach.getGeneration() != away->protocol.record().generation) {
      // Fencing: the job was restarted from a checkpoint since this copy left; its node
      // kills it when its relay closes.
      Fail(ErrorKind::kPermissionDenied,
           "job {} on {} is a copy of run {}, but the job was restarted (run {}): refused",
           attach.getHomePid(), attach.getNode().cStr(), attach.getGeneration(),
           away->protocol.record().generation);
    }
    if (attach.getResumed()) {
      const move::Record& record = away->protocol.record();
      if (record.state == move::State::kRunning && record.where == attach.getNode().cStr()) {
        // Only a daemon that took the job back from its journal attaches it resumed: the
        // job's node restarted its daemon, and the relay to it that looks open here is
        // dead (a cut link swallowed its close; a guest frozen past the grace is taken
        // back so). It goes as a closed relay would, and the node attaches again.
        ControlStream old = away->peer;
        if (AwaitNodeBack(away, record.relay)) {
          spdlog::info("job {}: node {} attaches it again; its old relay is dead", away->home_pid(),
                       away->where());
          old.Close();
        }
      }
      if (Rejoin(slot, away, attach, reply)) return;
      break;
    }
    ControlStream old = away->peer;
    uint32_t old_relay = away->protocol.record().relay;
    auto step = away->protocol.Arrived(
        attach.getNode(), attach.hasMoved() ? MigratedFigures(attach.getMoved()) : MoveOutcome());
    if (!step) break;
    away->peer = reply.OpenStream(PeerHandlersForAway(slot, away, away->protocol.record().relay));
    std::fill(std::begin(away->output_here), std::end(away->output_here), 0);
    away->output_told = 0;
    if (away->protocol.OldOutputOwed()) {
      // The old node has not yet sent what the job left in its pipes there: the job's
      // output from here waits for it, so that mosrun gets the job's output in order.
      away->output_held = true;
      away->peer.PauseReading(true);
      away->leaving = old;
      away->leaving_relay = old_relay;
      away->release_output = [away] {
        away->output_held = false;
        away->peer.PauseReading(false);
      };
    }
    PaceRelays(away);
    away->mosrun.PauseReading(false);
    spdlog::info("job {} now runs on {}", away->home_pid(), away->where());
    // Journaled on its new node before the move is answered: a restart from here on
    // awaits the job there (its base pending while the old node still sends).
    JournalAways();
    Apply(slot, away, std::move(*step));
    return;
  }
  Fail(ErrorKind::kNotFound, "no job of this home with pid {} is on its way to a node",
       attach.getHomePid());
}

void JobRegistry::Apply(int slot, const std::shared_ptr<Away>& away, move::Step step) {
  if (step.answer && away->waiter) {
    auto waiter = std::move(away->waiter);
    away->waiter = nullptr;
    waiter(*step.answer);
  }
  if (step.end) EndAway(slot, away, step.why);
}

void JobRegistry::EndOverdueAttaches() {
  auto now = static_cast<int64_t>(uv_now(loop_));
  std::vector<std::pair<int, std::shared_ptr<Away>>> aways;
  for (auto& [slot, entry] : jobs_) {
    if (entry.away) aways.emplace_back(slot, entry.away);
  }
  for (auto& [slot, away] : aways) Apply(slot, away, away->protocol.Tick(now));
  std::vector<std::shared_ptr<Job>> waiting;
  for (auto& [slot, entry] : jobs_) {
    if (entry.here && entry.here->departure().awaiting()) waiting.push_back(entry.here);
  }
  for (auto& job : waiting) {
    if (move::Stay stay = job->TickDeparture(now); stay.continue_job) {
      spdlog::info("job {}: {}; it goes on here", job->home_pid(), stay.why);
      migrate::ContinueJob(job->init_pid());
    }
  }
}

void JobRegistry::TakeOverDeparted(int slot, const std::shared_ptr<Job>& job,
                                   schema::AttachGuest::Reader attach, ReplySender reply) {
  std::string node = attach.getNode();
  if (node != job->departure().target() || !attach.getResumed() ||
      attach.getGeneration() != job->launch().generation) {
    Fail(ErrorKind::kPermissionDenied, "job {} waits for {} to take it over, not for {}",
         job->home_pid(), job->departure().target(), node);
  }
  auto pending = std::make_shared<ReplySender>(std::move(reply));
  auto take = [this, alive = alive_, slot, weak = std::weak_ptr<Job>(job), node, pending] {
    if (!*alive) return;
    auto job = weak.lock();
    auto it = jobs_.find(slot);
    if (!job || it == jobs_.end() || it->second.here != job || !job->departure().awaiting()) {
      // It ended meanwhile, or went on here: the target's copy is refused, and killed.
      pending->SendError(
          Error(ErrorKind::kNotFound, fmt::format("the job no longer waits for {}", node)));
      return;
    }
    FinishTakeOver(slot, job, node, *pending);
  };
  if (job->detached()) {
    spdlog::info("job {}: node {} takes it over once its mosrun is back", job->home_pid(), node);
    job->OnReattached(std::move(take));
    return;
  }
  take();
}

void JobRegistry::FinishTakeOver(int slot, const std::shared_ptr<Job>& job, const std::string& node,
                                 ReplySender& reply) {
  move::Departure departure = job->departure();
  departure.TakenOver(node);
  auto away = AwayFrom(*job, move::Protocol::Moved(job->home_pid(), node, job->migrations() + 1));
  // As a move that ends: what the stopped copy left in its pipes goes to mosrun first,
  // then the copy is killed.
  job->AbandonAfterMove();
  away->origin[1] = job->output_total(1);
  away->origin[2] = job->output_total(2);
  job->Departed(departure);
  jobs_[slot].here.reset();
  jobs_[slot].away = away;
  away->mosrun.SetHandlers(MosrunHandlersForAway(slot, away));
  uint32_t relay = away->protocol.Connected();
  away->peer = reply.OpenStream(PeerHandlersForAway(slot, away, relay));
  PaceRelays(away);
  away->mosrun.PauseReading(false);
  // The target sends its output again from the job's arrival there, and resumes its input.
  TellOutputHad(*away);
  SendHeldSignals(*away);
  JournalAways();  // over the entry of the job here, at once
  spdlog::info("job {}: node {} took it over after the restart; the copy here is killed",
               away->home_pid(), node);
}

void JobRegistry::EndAway(int slot, const std::shared_ptr<Away>& away, const std::string& why) {
  // A job that came home meanwhile shares its mosrun with the job here: only the record
  // in the table is ended.
  auto it = jobs_.find(slot);
  if (it == jobs_.end() || it->second.away != away) return;
  if (!why.empty() && !away->frozen && RestartLost(slot, away, why)) return;
  jobs_.erase(it);
  ForgetAway(*away);
  if (away->frozen) migrate::RemoveImageDir(away->frozen->dir);
  if (!why.empty()) {
    spdlog::warn("job {}: {}", away->home_pid(), why);
    SendExit(away->mosrun, 255, why);
  }
  away->mosrun.Close();
  away->peer.Close();  // the job's node kills a guest whose home relay is gone
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
  job->Depart(move::DumpKind::kMove, target, /*journaled=*/true);
  move->departure = job->departure();
  move->journal = job->DepartureJournal();
  job->relay().PauseReading(true);  // input waits for the job's new place

  int status = QueueWork(
      loop_, [move] { RunMoveOut(*move); },
      [this, alive = alive_, slot, job, move, done = std::move(done)] {
        if (*alive) FinishMove(slot, job, *move, done);
      });
  if (status < 0) {
    job->Stay(uv_strerror(status));
    job->relay().PauseReading(false);
    Fail(ErrorKind::kFailed, "cannot start the move: {}", uv_strerror(status));
  }
}

std::shared_ptr<MoveOut> JobRegistry::PrepareMove(const std::shared_ptr<Job>& job,
                                                  const std::string& target) {
  PeerAddress address = resolve_(target);
  const JobLaunch& launch = job->launch();
  if (std::string why = PartnerMayMoveOut(config_, target, address.cluster,
                                          JobHome{launch.home, launch.home_cluster});
      !why.empty()) {
    Fail(ErrorKind::kPermissionDenied, "job {} cannot move to {}: {}", job->home_pid(), target,
         why);
  }
  // (A partner's job going back to its own cluster is no guest there.)
  if (!address.takes_guests && address.cluster != launch.home_cluster) {
    Fail(ErrorKind::kFailed,
         "node {} of cluster {} takes no jobs of this cluster's now (it is blocked, or its "
         "cluster does not accept them)",
         target, address.cluster);
  }
  // A blocked node, or one without room, refuses the stream anyway; saying so before
  // the dump is clearer and costs the job nothing. Not kOverloaded, which mosmigrate takes
  // for a job busy a moment and asks again: the target's state does not pass that soon.
  for (const balance::Node& node : picture_()) {
    if (node.name != target) continue;
    if (!node.accepts_guests && target != job->launch().home) {
      Fail(ErrorKind::kFailed, "node {} accepts no guests (mosctl block)", target);
    }
    uint32_t needed = job->usage().memory_mb();
    if (node.mem_free_mb < needed) {
      Fail(ErrorKind::kFailed, "node {} has {} MB of free memory; the job uses {} MB", target,
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
  move->key = config_.CredentialsFor(address.cluster);
  move->guest_request = GuestRequest(job->launch(), target);
  move->metadata.home_node = job->launch().home;
  move->metadata.home_pid = home_pid;
  // A guest carries its homefs locks: to another guest node (see ARCHITECTURE.md, "Locks
  // across a move") or home, whose file service hands them to the restored job ("Locks of
  // a job that comes home").
  if (job->launch().guest) move->lock_mount = job->launch().root;
  // A job leaving its home: its locks there are its own descriptions', which the home's
  // file service keeps for it.
  if (!job->launch().guest) {
    move->park_home_locks = park_home_locks_;
    move->unpark_home_locks = unpark_home_locks_;
  }
  move->faults = faults_;
  move->lazy = config_.migration.lazy_pages;
  move->as_user = CriuUserOf(*job);
  move->metadata.external_pipes = job->pipe_roles();
  // The caller holds the job's input from here on (Job::Depart): where it stands now is
  // where it stands when the job is frozen.
  move->input = job->input_place();
  if (move->input.reader >= 0) {
    move->input_reader = Fd::Adopt(HW_SYSCALL(::fcntl(move->input.reader, F_DUPFD_CLOEXEC, 3),
                                              "keep the job's stdin for the move"));
    move->input.reader = move->input_reader.get();
  }
  return move;
}

void JobRegistry::CountMove(const MoveOut& move) {
  if (!move.error.empty()) {
    ++move_counts_.failed;
    return;
  }
  ++move_counts_.moved;
  move_counts_.frozen_ms += static_cast<uint64_t>(move.frozen.count());
}

void JobRegistry::FinishMove(int slot, std::shared_ptr<Job> job, MoveOut& move,
                             const MoveDone& done) {
  CountMove(move);
  auto it = jobs_.find(slot);
  bool still_ours = it != jobs_.end() && it->second.here == job;
  if (!move.error.empty()) {
    spdlog::warn("job {}: move to {} failed: {}", job->home_pid(), move.target_name, move.error);
    job->Departed(move.departure);  // it stays: its input flows on
    job->relay().PauseReading(false);
    MoveOutcome outcome = OutcomeOf(move);
    outcome.error =
        fmt::format("job {} stays on {}: {}", job->home_pid(), config_.name, move.error);
    done(outcome);
    return;
  }
  if (!still_ours) {  // ended meanwhile (its mosrun went away)
    // Its journal entry went with it: the target's word, journaled by the move's thread
    // since, must not outlive it (the target's copy finds no job to attach to).
    if (move.journal) {
      JobJournal(config_.state_dir + "/jobs").Remove(std::to_string(job->home_pid()));
    }
    job->Stay("the job ended during the move");
    done(MoveOutcome::Failure("the job ended during the move"));
    return;
  }
  if (faults_.Hit(Fault::kKillAfterArrived)) {
    DieAtFaultPoint(Fault::kKillAfterArrived,
                    fmt::format("after {} said job {} arrived, before journaling it away there",
                                move.target_name, job->home_pid()));
  }
  auto away = AwayFrom(
      *job, move::Protocol::Moved(job->home_pid(), move.target_name, job->migrations() + 1));
  move.departure.Migrated();
  // Abandoned before it stops migrating: its input, held and reclaimed, is never written
  // to the old pipe again.
  job->AbandonAfterMove();
  away->origin[1] = job->output_total(1);  // what mosrun had when the job left
  away->origin[2] = job->output_total(2);
  job->Departed(move.departure);
  it->second.here.reset();
  it->second.away = away;
  away->mosrun.SetHandlers(MosrunHandlersForAway(slot, away));
  JoinAway(slot, away, std::move(move.connection), nullptr);
  JournalAways();  // over the entry of the job here, at once
  spdlog::info("job {} moved to {} (frozen {} ms, {} in all, {} bytes of images)", away->home_pid(),
               away->where(), move.frozen.count(), move.total.count(), move.image_bytes);
  done(OutcomeOf(move));
}

void JobRegistry::MigrateGuest(std::shared_ptr<Job> job, const std::string& target, MoveDone done) {
  std::shared_ptr<MoveOut> move;
  try {
    if (JobState state = job->state(); state != JobState::RUNNING) {
      Fail(ErrorKind::kOverloaded, "the job is {}", JobStateName(state));
    }
    move = PrepareMove(job, target);
    move->tell_target = true;  // the home hears of the move from the target
    job->Depart(move::DumpKind::kMove, target);
    move->departure = job->departure();
  } catch (const Error& e) {
    if (done) {
      done(MoveOutcome::Failure(e.what(), e.kind()));
      return;
    }
    capnp::MallocMessageBuilder message;
    BuildError(message, e.kind(), e.what());
    job->relay().Send(message);
    return;
  }
  int status = QueueWork(
      loop_, [move] { RunMoveOut(*move); },
      [this, alive = alive_, job, move, done] {
        if (*alive) FinishGuestMove(job, *move, done);
      });
  if (status < 0) {
    job->Stay(uv_strerror(status));
    if (done) {
      done(MoveOutcome::Failure(fmt::format("cannot start the move: {}", uv_strerror(status))));
    }
  }
}

void JobRegistry::FinishGuestMove(std::shared_ptr<Job> job, MoveOut& move, const MoveDone& done) {
  CountMove(move);
  capnp::MallocMessageBuilder message;
  if (!move.error.empty()) {
    job->Departed(move.departure);  // it stays: its input flows on
    spdlog::warn("guest {}: move to {} failed: {}", job->home_pid(), move.target_name, move.error);
    if (done) {
      done(OutcomeOf(move));  // this node's own decision: the home need not hear of it
      return;
    }
    BuildError(message, ErrorKind::kFailed, move.error);
    job->relay().Send(message);
    return;
  }
  // The job runs on at the target, which has told its home how the move went; what it
  // left in our pipes goes home first, then our last word, then this relay closes.
  ControlStream relay = job->relay();
  job->AbandonAfterMove();
  move.departure.Migrated();
  job->Departed(move.departure);
  for (auto it = guests_.begin(); it != guests_.end(); ++it) {
    if (it->second == job) {
      guests_.erase(it);
      break;
    }
  }
  if (faults_.Hit(Fault::kMovedOnHold)) {
    spdlog::warn("fault point movedon-hold: guest {} holds its last word to its home for {} s",
                 job->home_pid(), kMovedOnHoldSeconds);
    HoldMovedOn(loop_, relay, move.target_name);
  } else {
    SayMovedOn(relay, move.target_name);
  }
  spdlog::info("guest {} moved on to {} (frozen {} ms)", job->home_pid(), move.target_name,
               move.frozen.count());
  if (done) done(OutcomeOf(move));
}

}  // namespace homeward
