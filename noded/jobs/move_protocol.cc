// The move protocol's transitions. A move on from the job's node ends with two events that
// the network may deliver in either order: the arrival (the new node's attach, or the job
// coming home), which carries the move's figures, and the old node's last word (`movedOn`,
// after the output the job left there, on the old relay) or that relay's close. The move
// counts, and a waiting mosmigrate hears, at the arrival; the job's output from its new
// place waits for the old node's last word (kArrived).
#include "move_protocol.h"

#include <fmt/format.h>

#include <array>
#include <sstream>

namespace homeward::move {

namespace {

constexpr std::array<std::string_view, 9> kStateNames = {
    "starting", "running",    "asked",     "announced", "arrived",
    "relay-lost", "frozen", "continuing", "ended"};

}  // namespace

std::string_view StateName(State state) {
  return kStateNames[static_cast<size_t>(state)];
}

std::string Record::Serialize() const {
  return fmt::format("state={} pid={} where={} relay={} migrations={} due={} waiting={}",
                     StateName(state), home_pid, where, relay, migrations, attach_due_ms,
                     waiting ? 1 : 0) +
         (moved_to.empty() ? "" : fmt::format(" moved={}", moved_to)) +
         (owed_by.empty() ? "" : fmt::format(" owed={}", owed_by)) +
         (generation ? fmt::format(" generation={}", generation) : "");
}

Record Record::Parse(const std::string& line) {
  Record record;
  std::istringstream in(line);
  std::string field;
  int seen = 0;
  try {
    while (in >> field) {
      auto eq = field.find('=');
      if (eq == std::string::npos) Fail(ErrorKind::kInvalidInput, "no '=' in '{}'", field);
      std::string key = field.substr(0, eq), value = field.substr(eq + 1);
      ++seen;
      if (key == "state") {
        size_t i = 0;
        while (i < kStateNames.size() && kStateNames[i] != value) ++i;
        if (i == kStateNames.size()) Fail(ErrorKind::kInvalidInput, "no state '{}'", value);
        record.state = static_cast<State>(i);
      } else if (key == "pid") {
        record.home_pid = static_cast<pid_t>(std::stol(value));
      } else if (key == "where") {
        record.where = value;
      } else if (key == "relay") {
        record.relay = static_cast<uint32_t>(std::stoul(value));
      } else if (key == "migrations") {
        record.migrations = static_cast<uint32_t>(std::stoul(value));
      } else if (key == "due") {
        record.attach_due_ms = std::stoll(value);
      } else if (key == "waiting") {
        record.waiting = value == "1";
      } else if (key == "generation") {
        record.generation = static_cast<uint32_t>(std::stoul(value));
        --seen;  // optional: only a restarted job has one
      } else if (key == "moved") {
        // Optional. Lines of older daemons always have it, with the old node's figures
        // after the node (`moved=node3,12,80,1048576`): only the node is kept.
        record.moved_to = value.substr(0, value.find(','));
        --seen;
      } else if (key == "owed") {
        record.owed_by = value;  // optional: only between an arrival and the old node's word
        --seen;
      } else {
        Fail(ErrorKind::kInvalidInput, "unknown field '{}'", key);
      }
    }
  } catch (const std::logic_error& e) {  // std::stoul and friends on a bad number
    Fail(ErrorKind::kInvalidInput, "a bad number in move record '{}'", line);
  }
  if (seen != 7) Fail(ErrorKind::kInvalidInput, "move record '{}' is incomplete", line);
  return record;
}

namespace {

constexpr std::array<std::string_view, 6> kLeaveNames = {"here",         "dumping", "sending",
                                                         "handing-over", "arrived", "left"};

}  // namespace

std::string_view LeaveName(Leave state) {
  return kLeaveNames[static_cast<size_t>(state)];
}

Leave LeaveNamed(std::string_view name) {
  for (size_t i = 0; i < kLeaveNames.size(); ++i) {
    if (kLeaveNames[i] == name) return static_cast<Leave>(i);
  }
  Fail(ErrorKind::kInvalidInput, "no departure state '{}'", name);
}

void Departure::Start(DumpKind kind, std::string target, bool journaled) {
  if (state_ == Leave::kLeft) Fail(ErrorKind::kInvalidInput, "the job has left this node");
  if (state_ != Leave::kHere) Fail(ErrorKind::kOverloaded, "the job is migrating");
  state_ = Leave::kDumping;
  kind_ = kind;
  target_ = std::move(target);
  journaled_ = journaled;
  stopped_ = false;
}

void Departure::Dumped() {
  if (state_ != Leave::kDumping) return;
  if (kind_ == DumpKind::kCheckpoint) return;  // it ran on; Done ends it
  stopped_ = true;
  if (kind_ == DumpKind::kMove) state_ = Leave::kSending;
}

void Departure::Sent() {
  if (state_ == Leave::kSending) state_ = Leave::kHandingOver;
}

void Departure::Arrived() {
  if (kind_ == DumpKind::kMove && state_ == Leave::kHandingOver) {
    state_ = Leave::kArrived;
  } else if (kind_ == DumpKind::kFreeze && stopped_ && state_ == Leave::kDumping) {
    state_ = Leave::kLeft;
  }
}

void Departure::Migrated() {
  if (state_ != Leave::kArrived) return;
  state_ = Leave::kLeft;
  due_ms_ = 0;
}

Stay Departure::Failed(std::string why) {
  if (!leaving()) return {};
  Stay stay;
  // Only a dump that succeeded leaves the job stopped: criu thaws what it froze when
  // its dump fails, and a checkpoint's dump lets the job run on.
  stay.continue_job = stopped_;
  stay.why = std::move(why);
  state_ = Leave::kHere;
  stopped_ = false;
  journaled_ = false;
  due_ms_ = 0;
  target_.clear();
  return stay;
}

// Up to the target's word, the home decides: the job goes on here, and a copy the target
// restored (its word lost with the home) attaches to no job and is killed. Once the word
// is journaled (`arrived`), the target decides: its copy runs on from the dump, so the
// one here must not (the job would run twice, from the same point); it waits, stopped.
// The target's copy, whose home relay closed with the home, asks this home to take it
// back (attachGuest, resumed) until the attach timeout after that close, which came
// before this restart: a job not taken over by now + that timeout is the home's again.
Departure Departure::Reloaded(Leave saved, std::string target, int64_t now_ms, Stay* stay) {
  Departure departure;
  *stay = Stay();
  if (saved == Leave::kHere || saved == Leave::kLeft) return departure;
  if (saved == Leave::kArrived && !target.empty()) {
    departure.state_ = Leave::kArrived;
    departure.kind_ = DumpKind::kMove;
    departure.target_ = std::move(target);
    departure.journaled_ = true;
    departure.stopped_ = true;
    departure.due_ms_ = now_ms + kAttachTimeoutMs;
    return departure;
  }
  stay->continue_job = true;
  stay->why = fmt::format("cut by a restart while {}", LeaveName(saved));
  return departure;
}

bool Departure::TakenOver(const std::string& node) {
  if (!awaiting() || node != target_) return false;
  Migrated();
  return true;
}

Stay Departure::Tick(int64_t now_ms) {
  if (!awaiting() || now_ms <= due_ms_) return {};
  return Failed(
      fmt::format("{} did not take it over within {} s", target_, kAttachTimeoutMs / 1000));
}

Protocol Protocol::Starting(pid_t home_pid, const std::string& where) {
  Record record;
  record.home_pid = home_pid;
  record.where = where;
  return Protocol(record);
}

Protocol Protocol::Moved(pid_t home_pid, const std::string& where, uint32_t migrations) {
  Protocol protocol = Starting(home_pid, where);
  protocol.record_.migrations = migrations;
  return protocol;
}

Protocol Protocol::Frozen(pid_t home_pid, uint32_t migrations) {
  Record record;
  record.state = State::kFrozen;
  record.home_pid = home_pid;
  record.migrations = migrations;
  return Protocol(record);
}

// After a restart every relay is gone and nobody waits any more. A job that was only
// starting is given up (its node kills a guest whose home relay closes); one that ran or
// was moving somewhere has lost its relay: it is expected to attach again, from wherever
// it runs now, within the attach timeout, or it is ended; frozen images stay frozen, and
// a restore the restart interrupted is tried again by the next continue. A job that had
// arrived before its old node's last word is awaited from its new node, its base still
// pending (owed_by): that word went with the relay, and mosrun's offsets settle it.
Protocol Protocol::Reloaded(const Record& saved, int64_t now_ms) {
  Record record = saved;
  record.waiting = false;
  switch (saved.state) {
    case State::kStarting:
      record.state = State::kEnded;
      break;
    case State::kRunning:
    case State::kAsked:
    case State::kAnnounced:
    case State::kArrived:
    case State::kRelayLost:
      record.state = State::kRelayLost;
      record.relay = saved.relay + 1;  // no relay from before the restart is current
      record.attach_due_ms = now_ms + kAttachTimeoutMs;
      record.moved_to.clear();
      break;
    case State::kFrozen:
    case State::kContinuing:
      record.state = State::kFrozen;
      break;
    case State::kEnded:
      break;
  }
  return Protocol(record);
}

uint32_t Protocol::Connected() {
  if (record_.state == State::kStarting) record_.state = State::kRunning;
  return ++record_.relay;
}

void Protocol::Ask(const std::string& target) {
  pid_t pid = record_.home_pid;
  switch (record_.state) {
    case State::kRunning:
      if (BasePending()) {
        Fail(ErrorKind::kOverloaded,
             "job {} has just moved to {}: where its output goes on is known once its mosrun "
             "is back",
             pid, record_.where);
      }
      break;
    case State::kStarting:
      Fail(ErrorKind::kOverloaded, "job {} is still starting", pid);
    case State::kAsked:
    case State::kAnnounced:
      Fail(ErrorKind::kOverloaded, "job {} is already moving", pid);
    case State::kArrived:
      Fail(ErrorKind::kOverloaded,
           "job {} has just moved to {}: its old node still sends the output it owed", pid,
           record_.where);
    case State::kRelayLost:
      Fail(ErrorKind::kDisconnected, "job {} is out of contact: waiting for node {} to take it back",
           pid, record_.where);
    case State::kFrozen:
    case State::kContinuing:
      Fail(ErrorKind::kInvalidInput, "job {} is frozen: mosmigrate {} continue first", pid, pid);
    case State::kEnded:
      Fail(ErrorKind::kNotFound, "job {} has ended", pid);
  }
  if (target == record_.where) {
    Fail(ErrorKind::kInvalidInput, "job {} already runs on {}", pid, target);
  }
  record_.state = State::kAsked;
  record_.waiting = true;
}

Step Protocol::Refused(uint32_t relay, const std::string& why, ErrorKind kind) {
  if (relay != record_.relay || ended()) return {};
  if (record_.state == State::kAsked) {
    // The job's node could not move it on: it runs on there. The kind goes to the asker
    // (busy a moment, kOverloaded, is asked again by mosmigrate).
    record_.state = State::kRunning;
    return Answer(MoveOutcome::Failure(
        fmt::format("job {} stays on {}: {}", record_.home_pid, record_.where, why), kind));
  }
  std::string message = fmt::format("node {} cannot run the job: {}", record_.where, why);
  return End(message, MoveOutcome::Failure(message));
}

Step Protocol::MovedOn(uint32_t relay, const std::string& target, int64_t now_ms) {
  State state = record_.state;
  if (relay == record_.relay && (state == State::kRunning || state == State::kAsked)) {
    // This relay closes next; the new node attaches on a connection of its own, which may
    // come after that close: the close is no longer the job's end.
    ++record_.relay;
    record_.state = State::kAnnounced;
    record_.moved_to = target;
    record_.attach_due_ms = now_ms + kAttachTimeoutMs;
    return {};
  }
  if (relay != record_.relay && state == State::kArrived) {
    record_.state = State::kRunning;  // the move was answered at the arrival
    record_.owed_by.clear();          // all it owed is in: the base is known
  }
  return {};
}

bool Protocol::ExpectsArrival() const {
  State state = record_.state;
  return state == State::kRunning || state == State::kAsked || state == State::kAnnounced ||
         state == State::kRelayLost;
}

std::optional<Step> Protocol::Arrived(const std::string& node, MoveOutcome figures) {
  State state = record_.state;
  if (!ExpectsArrival()) return std::nullopt;
  std::string old_node = record_.where;
  record_.where = node;
  ++record_.migrations;
  ++record_.relay;
  record_.attach_due_ms = 0;
  record_.moved_to.clear();
  // Announced, the old node has said its last; lost, it will say nothing more. Else its
  // word (or its close) is still to come, after the output it owes.
  record_.state =
      state == State::kAnnounced || state == State::kRelayLost ? State::kRunning : State::kArrived;
  if (record_.state == State::kArrived) record_.owed_by = std::move(old_node);
  figures.error.clear();
  figures.where = node;
  return Answer(std::move(figures));
}

bool Protocol::BaseSettled() {
  if (!BasePending() || record_.state == State::kArrived) return false;
  record_.owed_by.clear();
  return true;
}

bool Protocol::RelayLost(uint32_t relay, int64_t now_ms) {
  if (relay != record_.relay || record_.state != State::kRunning) return false;
  record_.state = State::kRelayLost;
  ++record_.relay;
  record_.attach_due_ms = now_ms + kAttachTimeoutMs;
  return true;
}

std::optional<Step> Protocol::Rejoined(const std::string& node) {
  if (record_.state != State::kRelayLost || node != record_.where) return std::nullopt;
  ++record_.relay;
  record_.attach_due_ms = 0;
  record_.state = State::kRunning;
  MoveOutcome unmoved;
  unmoved.where = node;
  return Answer(std::move(unmoved));
}

Step Protocol::Closed(uint32_t relay) {
  State state = record_.state;
  if (relay == record_.relay &&
      (state == State::kRunning || state == State::kAsked || state == State::kArrived)) {
    return End(fmt::format("lost contact with node {}, where the job ran", record_.where),
               MoveOutcome::Failure(
                   fmt::format("lost contact with node {} during the move", record_.where),
                   ErrorKind::kDisconnected));
  }
  if (relay != record_.relay && state == State::kArrived) {
    // The job has arrived but its old node closed without its last word (it died): what
    // it sent is all mosrun gets from there, and the job's output from its new place
    // goes on.
    record_.state = State::kRunning;
    record_.owed_by.clear();
  }
  return {};  // a relay replaced by the job's new node closes quietly
}

Step Protocol::Exited() {
  if (ended()) return {};
  return End("", MoveOutcome::Failure("the job ended during the move"));
}

Step Protocol::MosrunGone() {
  if (ended()) return {};
  return End("", MoveOutcome::Failure("the job ended: its mosrun is gone"));
}

Step Protocol::Lost(const std::string& why) {
  if (ended()) return {};
  return End(why, MoveOutcome::Failure(why, ErrorKind::kDisconnected));
}

Step Protocol::Tick(int64_t now_ms) {
  State state = record_.state;
  if ((state != State::kAnnounced && state != State::kRelayLost) ||
      now_ms <= record_.attach_due_ms) {
    return {};
  }
  // Announced by its old node: the move's target never attached. Lost: the relay to the
  // job's node was lost, or this daemon restarted, and that node did not come back.
  std::string why =
      state == State::kRelayLost
          ? fmt::format(
                "lost contact with node {}, where the job ran: it did not come back "
                "within {} s",
                record_.where, kAttachTimeoutMs / 1000)
          : fmt::format("the job left node {} and no node took it over", record_.where);
  return End(why, MoveOutcome::Failure(why, ErrorKind::kDisconnected));
}

void Protocol::Continue() {
  if (record_.state == State::kContinuing) {
    Fail(ErrorKind::kOverloaded, "job {} is already continuing", record_.home_pid);
  }
  if (record_.state != State::kFrozen) {
    Fail(ErrorKind::kInvalidInput, "job {} is not frozen", record_.home_pid);
  }
  record_.state = State::kContinuing;
}

void Protocol::ContinueDone(bool ok) {
  if (record_.state != State::kContinuing) return;
  // Continued, the job is no longer away: its record is done.
  record_.state = ok ? State::kEnded : State::kFrozen;
}

Step Protocol::End(std::string why, MoveOutcome failure) {
  record_.state = State::kEnded;
  Step step = Answer(std::move(failure));
  step.end = true;
  step.why = std::move(why);
  return step;
}

Step Protocol::Answer(MoveOutcome outcome) {
  Step step;
  if (record_.waiting) {
    record_.waiting = false;
    step.answer = std::move(outcome);
  }
  return step;
}

}  // namespace homeward::move
