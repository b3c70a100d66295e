// Jobs away from home that outlive a daemon, the home's side: journaling where each runs,
// waiting for a node whose daemon restarted to take its job up again, and taking jobs
// away back when the home's daemon restarts. See "Daemon restarts" in
// docs/ARCHITECTURE.md.
#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <fstream>
#include <thread>

#include <capnp/message.h>
#include <spdlog/spdlog.h>

#include "c_boundary.h"
#include "checkpoint.h"
#include "error.h"
#include "image_stream.h"
#include "job.h"
#include "job_journal.h"
#include "job_registry.h"
#include "job_stream.h"
#include "output_base.h"
#include "peer_auth.h"
#include "uv_error.h"
#include "uv_work.h"

namespace homeward {

// Every this many bytes of output from a guest, its home says how much it has had, so
// that the guest's spools keep no more than what a restart of its daemon could lose.
constexpr uint64_t kOutputTellEvery = 256 * 1024;

void JobRegistry::CountOutput(Away& away, schema::JobOutput::Reader output) {
  unsigned fd = output.getFd();
  if (fd != 1 && fd != 2) return;
  away.output_here[fd] += output.getData().size();
  // Told only once mosrun's socket has all that was forwarded: the node then forgets it,
  // and a home killed now must not have held any of it only in its memory.
  if (away.output_here[1] + away.output_here[2] - away.output_told >= kOutputTellEvery &&
      away.mosrun.queued_bytes() == 0) {
    TellOutputHad(away);
  }
}

void JobRegistry::SendHeldSignals(Away& away) {
  if (!away.peer.open()) return;
  for (int sig : away.held_signals) {
    capnp::MallocMessageBuilder message;
    auto request = message.initRoot<schema::ControlRequest>();
    request.setVersion(schema::CONTROL_VERSION);
    request.setJobSignal(sig);
    away.peer.Send(message);
  }
  away.held_signals.clear();
}

void JobRegistry::TellOutputHad(Away& away) {
  capnp::MallocMessageBuilder message;
  auto request = message.initRoot<schema::ControlRequest>();
  request.setVersion(schema::CONTROL_VERSION);
  auto had = request.initResumeJob();
  had.setStdoutOffset(away.output_here[1]);
  had.setStderrOffset(away.output_here[2]);
  away.peer.Send(message);
  away.output_told = away.output_here[1] + away.output_here[2];
}

bool JobRegistry::AwaitNodeBack(const std::shared_ptr<Away>& away, uint32_t relay) {
  // The job's node may only have lost its daemon: the job runs on there and the next
  // daemon attaches again (Rejoin).
  if (away->frozen ||
      !away->protocol.RelayLost(relay, static_cast<int64_t>(uv_now(loop_)))) {
    return false;
  }
  spdlog::warn("job {}: lost its relay to node {}; waiting {} s for it to take the job back",
               away->home_pid(), away->where(), move::kAttachTimeoutMs / 1000);
  return true;
}

bool JobRegistry::Rejoin(int slot, const std::shared_ptr<Away>& away,
                         schema::AttachGuest::Reader attach, ReplySender& reply) {
  auto step = away->protocol.Rejoined(attach.getNode());
  if (!step) return false;  // given up, or waiting for another node: the attach is refused
  away->peer = reply.OpenStream(PeerHandlersForAway(slot, away, away->protocol.record().relay));
  PaceRelays(away);
  away->mosrun.PauseReading(false);
  // The node sends again what it has after this; then the job's input goes on. After a
  // restart of this daemon, that waits for mosrun to say what it has.
  if (away->awaiting_mosrun) {
    spdlog::info("job {} taken back by node {}; waiting for its mosrun", away->home_pid(),
                 away->where());
    return true;
  }
  TellOutputHad(*away);
  SendHeldSignals(*away);
  spdlog::info("job {} taken back by node {} after its daemon restarted; output from bytes {} "
               "and {}",
               away->home_pid(), away->where(), away->output_here[1], away->output_here[2]);
  Apply(slot, away, std::move(*step));
  return true;
}

void JobRegistry::ForgetAway(const Away& away) {
  if (away.journaled.empty()) return;
  JobJournal(config_.state_dir + "/jobs").Remove(std::to_string(away.home_pid()));
}

void JobRegistry::JournalAways() {
  for (auto& [slot, entry] : jobs_) {
    if (!entry.away) continue;
    Away& away = *entry.away;
    const move::Record& record = away.protocol.record();
    if (away.awaiting_mosrun) continue;  // its entry stands as it was read
    if (record.state == move::State::kStarting || record.state == move::State::kEnded) continue;
    // A job that arrived before its old node's last output is journaled on its new node
    // at once, its base pending (BaseOf).
    Away::JournalInputs inputs;
    inputs.record = record;
    BaseOf(away, inputs.base);
    inputs.frozen = away.frozen.has_value();
    if (auto plan = checkpoint_plans_.find(slot);
        plan != checkpoint_plans_.end() && plan->second.home_pid == away.home_pid()) {
      inputs.plan = plan->second.plan;
    }
    if (inputs == away.journaled_inputs) continue;  // nothing of its entry changed
    if (away.mosrun_start == 0) away.mosrun_start = ProcessStartTime(away.home_pid());
    JournalEntry journal_entry = AwayEntry(slot, away);
    std::string text = FormatJournalEntry(journal_entry);
    if (text != away.journaled) {
      try {
        JobJournal(config_.state_dir + "/jobs").Write(journal_entry);
        away.journaled = std::move(text);
      } catch (const Error& e) {
        spdlog::warn("job {}: cannot journal it: {}", away.home_pid(), e.what());
        continue;  // tried again at the next tick
      }
    }
    away.journaled_inputs = std::move(inputs);
  }
}

JournalEntry JobRegistry::AwayEntry(int slot, const Away& away) const {
  JournalEntry entry;
  entry.slot = slot;
  entry.mosrun_start = away.mosrun_start;
  if (away.frozen) {
    // Continuing it after a restart needs all of its launch but the input, which is
    // in its image directory (SaveFrozenInput).
    entry.launch = away.frozen->launch;
    entry.launch.input = {};
    entry.frozen_dir = away.frozen->dir;
    entry.pipes = away.frozen->pipes;
  } else {
    entry.launch.identity.home_pid = away.home_pid();
    entry.launch.identity.uid = away.uid;
    entry.launch.home = config_.name;
    entry.launch.argv = {away.command};
    entry.launch.locked = away.locked;
  }
  // Its checkpoint plan, and the user it writes and reads its checkpoints as.
  if (auto plan = checkpoint_plans_.find(slot);
      plan != checkpoint_plans_.end() && plan->second.home_pid == away.home_pid()) {
    entry.launch.checkpoint = plan->second.plan;
    entry.launch.identity.gid = plan->second.owner.gid;
    entry.launch.identity.groups = plan->second.owner.groups;
  }
  entry.away = true;
  entry.record = away.protocol.record().Serialize();
  entry.base_pending = away.protocol.BasePending();
  BaseOf(away, entry.base);
  return entry;
}

void JobRegistry::BaseOf(const Away& away, uint64_t base[3]) {
  base[0] = 0;
  for (int fd : {1, 2}) {
    // Pending, it is none yet: the old node's output still comes (or went with a restart).
    base[fd] = away.protocol.BasePending()
                   ? 0
                   : away.origin[fd] + away.forwarded[fd] - away.output_here[fd];
  }
}

void JobRegistry::WatchMosrun(int slot, const std::shared_ptr<Away>& away) {
  if (!away->awaiting_mosrun && !away->frozen) {
    away->mosrun_watch.reset();
    return;
  }
  if (away->mosrun_watch) return;
  // Such a job does not read its mosrun's stream, so its hangup goes unseen there: the
  // job's pid at home is its mosrun's, whose exit its pidfd tells.
  if (away->mosrun_start == 0) away->mosrun_start = ProcessStartTime(away->home_pid());
  std::weak_ptr<Away> weak = away;
  auto gone = [this, alive = alive_, slot, weak] {
    auto away = weak.lock();
    if (!*alive || !away) return;
    auto it = jobs_.find(slot);
    if (it == jobs_.end() || it->second.away != away || away->protocol.ended() ||
        (!away->awaiting_mosrun && !away->frozen)) {
      return;
    }
    spdlog::info("job {}: its mosrun is gone; ending it {}", away->home_pid(),
                 away->frozen ? "and removing its frozen images" : "on " + away->where());
    Apply(slot, away, away->protocol.MosrunGone());
  };
  away->mosrun_watch =
      std::make_unique<ProcessWatch>(loop_, away->home_pid(), away->mosrun_start, gone);
}

bool JobRegistry::SettleBase(Away& away, const uint64_t had[3]) {
  pid_t pid = away.home_pid();
  std::string old_node = away.protocol.record().owed_by;
  bool pending = away.protocol.BaseSettled();
  if (pending) {
    spdlog::warn("job {}: the last of its output on {} may be lost; its output from {} starts "
                 "at mosrun's bytes {} and {}",
                 pid, old_node, away.where(), had[1], had[2]);
  }
  SettledBase settled = SettleOutputBase(pid, pending, away.frozen.has_value(), away.origin, had);
  for (int fd : {1, 2}) {
    if (settled.lost[fd] == 0) continue;
    spdlog::warn("job {}: {} bytes of its fd {} before it reached {} were lost with this "
                 "node's last daemon",
                 pid, settled.lost[fd], fd, away.where());
  }
  return settled.changed;
}

void JobRegistry::RecoverAway(JournalEntry& entry) {
  pid_t home_pid = entry.launch.identity.home_pid;
  std::string name = entry.Name();
  std::string why;
  if (ProcessStartTime(home_pid) != entry.mosrun_start) {
    why = "its mosrun is gone";
  } else if (jobs_.count(entry.slot) || entry.slot < 0 || entry.slot >= kMaxJobs) {
    why = fmt::format("slot {} is taken", entry.slot);
  }
  std::optional<move::Protocol> protocol;
  if (why.empty()) {
    try {
      protocol = move::Protocol::Reloaded(move::Record::Parse(entry.record),
                                          static_cast<int64_t>(uv_now(loop_)));
    } catch (const Error& e) {
      why = e.what();
    }
  }
  if (why.empty() && protocol->ended()) why = "it had ended";
  bool frozen = !entry.frozen_dir.empty();
  if (why.empty() && frozen != (protocol->state() == move::State::kFrozen)) {
    why = "its images do not match its state";
  }
  JobLaunch frozen_launch;
  if (why.empty() && frozen) {
    frozen_launch = entry.launch;
    frozen_launch.init_path = init_path_;
    frozen_launch.preload_path = preload_path_;
    try {
      frozen_launch.input = LoadFrozenInput(entry.frozen_dir);
    } catch (const Error& e) {
      why = e.what();
    }
  }
  if (!why.empty()) {
    // Its node's attach is refused: the guest is killed there. Frozen images go.
    spdlog::warn("job {} of the journal, {}, is not taken back ({})", home_pid,
                 frozen ? "frozen" : "away", why);
    if (frozen) migrate::RemoveImageDir(entry.frozen_dir);
    JobJournal(config_.state_dir + "/jobs").Remove(name);
    return;
  }
  auto away = std::make_shared<Away>(std::move(*protocol));
  away->uid = entry.launch.identity.uid;
  // A job away is journaled with its command as one word; a frozen one with its argv.
  away->command = CommandOf(entry.launch.argv);
  if (frozen) {
    away->frozen = Away::Frozen{entry.frozen_dir, frozen_launch, entry.pipes,
                                WaitsForRoom(entry.frozen_dir)};
  }
  away->locked = entry.launch.locked;
  away->partners = entry.launch.partners;
  away->awaiting_mosrun = true;
  away->mosrun_start = entry.mosrun_start;
  away->origin[1] = entry.base[1];
  away->origin[2] = entry.base[2];
  away->journaled = FormatJournalEntry(entry);
  jobs_[entry.slot].away = away;
  WatchMosrun(entry.slot, away);
  PlanCheckpoints(entry.slot, entry.launch.identity, entry.launch.checkpoint,
                  entry.launch.started_unix_ms);
  if (frozen) {
    spdlog::info("job {} taken back after a restart: frozen to {}; waiting for its mosrun",
                 home_pid, entry.frozen_dir);
  } else if (away->protocol.BasePending()) {
    spdlog::info("job {} taken back after a restart: runs on {}, arrived from {} before the last "
                 "of its output there; waiting for it and its mosrun, whose offsets settle "
                 "where its output goes on",
                 home_pid, away->where(), away->protocol.record().owed_by);
  } else {
    spdlog::info("job {} taken back after a restart: runs on {}; waiting for it and its mosrun",
                 home_pid, away->where());
  }
}

bool JobRegistry::ResumeAway(schema::ResumeJob::Reader request, ReplySender& reply) {
  const Caller& caller = reply.caller();
  for (auto& [slot, entry] : jobs_) {
    if (!entry.away || entry.away->home_pid() != caller.pid) continue;
    auto away = entry.away;
    if (away->uid != caller.uid || !away->awaiting_mosrun) {
      Fail(ErrorKind::kInvalidInput, "job {} has its mosrun already", caller.pid);
    }
    uint64_t had[3] = {0, request.getStdoutOffset(), request.getStderrOffset()};
    bool settled = SettleBase(*away, had);
    for (int fd : {1, 2}) {
      away->output_here[fd] = had[fd] - away->origin[fd];
      away->forwarded[fd] = away->output_here[fd];
    }
    away->awaiting_mosrun = false;
    // The new base is journaled before the node sends anything again: a restart after
    // some of that output reached mosrun must not take mosrun's offsets for it again.
    if (settled) JournalAways();
    WatchMosrun(slot, away);  // a frozen job's mosrun is still watched
    away->mosrun = reply.OpenStream(MosrunHandlersForAway(slot, away));
    // A frozen job's input waits (paused) until it continues.
    if (away->frozen) away->mosrun.PauseReading(true);
    PaceRelays(away);
    spdlog::info("job {}: its mosrun is back; output goes on from bytes {} and {}", caller.pid,
                 had[1], had[2]);
    // The node, if it is back already, resends from there and says where input goes on.
    if (away->protocol.state() == move::State::kRunning) {
      TellOutputHad(*away);
      SendHeldSignals(*away);
    }
    return true;
  }
  return false;
}

}  // namespace homeward
