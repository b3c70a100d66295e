// The move protocol as a job's home sees it: one state machine for a home job that runs
// on another node (or is frozen at home), fed the events the network produces, in any
// order, and answering with what the registry must do. Pure logic: no libuv, no sockets,
// time passed in; the record is a plain value that can be written down and read back.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <optional>
#include <string>

#include "error.h"

namespace homeward {

// How a move ended: `error` is empty when the job moved.
struct MoveOutcome {
  std::string error;
  ErrorKind kind = ErrorKind::kFailed;
  std::string where;
  uint64_t frozen_ms = 0;
  uint64_t total_ms = 0;
  uint64_t image_bytes = 0;

  static MoveOutcome Failure(std::string error, ErrorKind kind = ErrorKind::kFailed) {
    MoveOutcome outcome;
    outcome.error = std::move(error);
    outcome.kind = kind;
    return outcome;
  }
  bool operator==(const MoveOutcome&) const = default;
};

namespace move {

// How long a job moved on from one node may take to show up from the next.
constexpr int64_t kAttachTimeoutMs = 30000;

enum class State : uint8_t {
  kStarting,    // its node was asked to start it; the relay to that node is not open yet
  kRunning,     // runs on `where`, over the current relay
  kAsked,       // the home asked `where` to move it on and has heard nothing yet
  kAnnounced,   // its old node said it moved on and sent the last of its output; the new
                // node must attach by `attach_due_ms`
  kArrived,     // the new node attached (or it came home) and the move is answered; the old
                // node (`owed_by`) still sends the output the job left there (its new
                // output waits)
  kRelayLost,   // the relay to its node was lost, or this daemon restarted: the job may
                // attach again by `attach_due_ms`, from where it ran (that node's daemon
                // restarted) or from a node it moved to meanwhile
  kFrozen,      // frozen to disk at home
  kContinuing,  // being restored at home from its frozen images
  kEnded,       // gone; nothing more happens to it
};
std::string_view StateName(State state);

// Everything the protocol knows of one job: a plain value, saved and reloaded as is.
struct Record {
  State state = State::kStarting;
  pid_t home_pid = 0;
  std::string where;        // the node it runs on, or last ran on
  uint32_t relay = 0;       // which relay to the job's node is current (see Connected)
  uint32_t migrations = 0;  // counted at each arrival
  int64_t attach_due_ms = 0;
  bool waiting = false;   // someone waits to hear how the asked move ends
  std::string moved_to;   // kAnnounced: the node its old node said it moved on to
  // The node the job moved on from, while where its output from `where` starts in
  // mosrun's stream (the journal's `base`) is not known: set at an arrival before the old
  // node's last word (kArrived), cleared by that word or that node's close, and kept
  // across a restart until mosrun's offsets settle it (BaseSettled).
  std::string owed_by;
  // Which run of the job this is: raised each time it is restarted from a checkpoint, so
  // that a copy of an older run (on a node that was lost and came back) is refused.
  uint32_t generation = 0;

  bool operator==(const Record&) const = default;
  // One line of text and back, for a journal; Parse throws Error(kInvalidInput).
  std::string Serialize() const;
  static Record Parse(const std::string& line);
};

// What the registry must do after an event. Both may be asked at once.
struct Step {
  // End the job: close its relays (its node kills a guest whose home relay is gone) and,
  // when `why` is not empty, tell its mosrun why.
  bool end = false;
  std::string why;
  // Answer the waiting move (only when one waits).
  std::optional<MoveOutcome> answer;
};

// The departure side: a job running on this node while a dump takes it away (a move to
// another node, a freeze to disk) or copies it (a checkpoint). Its input is held from the
// start (nothing more is written to its stdin) until it stays or has left. A move's dump,
// stream and handover run off the loop on a copy of this value (MoveOut::departure), which
// goes back to the job once the move ends; the journal names the state (Name).
enum class Leave : uint8_t {
  kHere,         // runs here; nothing takes it away
  kDumping,      // criu dumps it (a move or freeze stops it; a checkpoint leaves it running)
  kSending,      // dumped and stopped: its images go to the target
  kHandingOver,  // every image is with the target, which restores it and answers
  kArrived,      // the target restored it and said so; the home has not yet recorded the
                 // move (journaled the job away there, abandoned the copy here)
  kLeft,         // gone: the target has it (or its images are on disk); the copy here goes
};
std::string_view LeaveName(Leave state);
// Throws Error(kInvalidInput) for a name that is none of them.
Leave LeaveNamed(std::string_view name);

enum class DumpKind : uint8_t {
  kMove,        // to another node, which restores it
  kFreeze,      // to disk at this node
  kCheckpoint,  // a copy; the job runs on
};

// What the job's node must do when a departure fails, or is found cut by a restart.
struct Stay {
  bool continue_job = false;  // the dump stopped it: it is sent SIGCONT and runs on here
  std::string why;            // empty when nothing failed (a checkpoint written, say)
};

class Departure {
 public:
  Leave state() const { return state_; }
  DumpKind kind() const { return kind_; }
  const std::string& target() const { return target_; }
  // Whether the job is being dumped or moved (mosps: migrating), and its input held.
  bool leaving() const { return state_ != Leave::kHere && state_ != Leave::kLeft; }
  bool left() const { return state_ == Leave::kLeft; }
  // Whether the journal must name this departure, so that a daemon restarted meanwhile
  // finds the job stopped by it (Reloaded).
  bool journaled() const { return journaled_ && leaving(); }

  // A dump of `kind` starts (`target`: the node of a move). Throws Error(kOverloaded) when
  // one is under way, Error(kInvalidInput) when the job has left.
  void Start(DumpKind kind, std::string target = {}, bool journaled = false);
  // criu has dumped it: a move's images go out next; a checkpoint or a freeze is done
  // with its dump.
  void Dumped();
  // Every image is with the target.
  void Sent();
  // The target restored the job and said so (a move: kArrived), or the freeze's images
  // are safe on disk (kLeft).
  void Arrived();
  // The move is recorded (the job journaled away on its target): the job has left; the
  // copy here is abandoned.
  void Migrated();
  // The departure ended without the job leaving: a checkpoint written, or any step failed
  // (the target refused, the stream broke, the target died mid-move): it runs on here.
  // Nothing (and no SIGCONT) once it has left.
  Stay Failed(std::string why);
  Stay Done() { return Failed(""); }
  // A daemon restarted at `now_ms` with the journal naming `saved` (a move to `target`)
  // for the job here, which it takes back. Stopped by a dump, a stream or a handover the
  // restart cut, the job is continued here (`stay`): the target has not said it has the
  // job (a copy it restored finds no home that takes it back, and is killed). Once the
  // target said it arrived (kArrived), the job stays stopped (awaiting) until the target
  // takes it over (TakenOver) or, past the attach timeout, has given up on this home
  // (Tick): it runs in one place only.
  static Departure Reloaded(Leave saved, std::string target, int64_t now_ms, Stay* stay);
  // Whether a restarted daemon waits for the target to take the job over.
  bool awaiting() const { return due_ms_ > 0 && state_ == Leave::kArrived; }
  // The job's target attached it after the restart: true (the job has left) when the job
  // waited for `node`.
  bool TakenOver(const std::string& node);
  // The loop's clock: a job whose target did not take it over in time stays here, and is
  // continued.
  Stay Tick(int64_t now_ms);

 private:
  Leave state_ = Leave::kHere;
  DumpKind kind_ = DumpKind::kMove;
  std::string target_;
  bool journaled_ = false;
  bool stopped_ = false;  // a dump that stops the job has run (or may have)
  int64_t due_ms_ = 0;    // awaiting: the target must take the job over by then
};

class Protocol {
 public:
  // A job asked to start on `where`.
  static Protocol Starting(pid_t home_pid, const std::string& where);
  // A job that just left this node for `where`, over a relay about to open.
  static Protocol Moved(pid_t home_pid, const std::string& where, uint32_t migrations);
  // A job frozen to disk at home.
  static Protocol Frozen(pid_t home_pid, uint32_t migrations);
  // A record read back after the daemon restarted at `now_ms`: what each state means
  // then is decided here (see Reloaded in move_protocol.cc).
  static Protocol Reloaded(const Record& saved, int64_t now_ms);

  const Record& record() const { return record_; }
  void SetGeneration(uint32_t generation) { record_.generation = generation; }
  State state() const { return record_.state; }
  bool ended() const { return record_.state == State::kEnded; }
  // Whether the job may arrive now (an attach, or coming home).
  bool ExpectsArrival() const;

  // The current relay `relay` to the node a running job is on closed, at `now_ms`, and
  // the home waits for that node to take the job back (its daemon may only have been
  // restarted) instead of ending it. False when the job was not simply running there:
  // the close is then an ordinary Closed.
  bool RelayLost(uint32_t relay, int64_t now_ms);
  // The node the job ran on, whose daemon was restarted, took the job back and attached
  // again (after RelayLost, or a restart of this daemon): the job runs on there, unmoved,
  // over the new relay record().relay. Nothing when no such return is expected (the home
  // gave the job up, or it waits for another node).
  std::optional<Step> Rejoined(const std::string& node);
  // A relay to the job's node opened: returns its number, which later events name.
  uint32_t Connected();
  // The home asks the job's node to move it to `target`; throws Error saying why it
  // cannot now. A waiter then hears the outcome.
  void Ask(const std::string& target);
  // The job's node answered an error on relay `relay`.
  Step Refused(uint32_t relay, const std::string& why, ErrorKind kind = ErrorKind::kFailed);
  // The job's old node said, on relay `relay`, that the job moved on to `target` and
  // that it has sent all the output the job left there (its `movedOn` word); the relay
  // closes next.
  Step MovedOn(uint32_t relay, const std::string& target, int64_t now_ms);
  // The job arrived: its new node attached, or it came back home (`node` is then home),
  // with the move's figures from the node it left (zero when that node could not give
  // them). Its new relay is record().relay. A waiter hears at once, even while the old
  // node still sends what it owed (kArrived). Nothing when no arrival is expected now.
  std::optional<Step> Arrived(const std::string& node, MoveOutcome figures = {});
  // Whether the job's new place must hold its output back: the old node has not yet said
  // its last (kArrived).
  bool OldOutputOwed() const { return record_.state == State::kArrived; }
  // Whether where the output from record().where starts in mosrun's stream is unknown:
  // the old node (record().owed_by) has not said its last, or this daemon restarted
  // before it did and mosrun has not said what it has.
  bool BasePending() const { return !record_.owed_by.empty(); }
  // After a restart, mosrun came back with its offsets: they are where the output from
  // record().where starts (what the old node had not got to mosrun is lost). True when
  // the base was pending; nothing while the old node still sends (kArrived).
  bool BaseSettled();
  // Relay `relay` closed.
  Step Closed(uint32_t relay);
  // The job exited (its node said so on the current relay).
  Step Exited();
  // Its mosrun is gone.
  Step MosrunGone();
  // The job is lost for a reason the protocol does not see (its node could not be
  // reached to start it, or it came home and could not be taken back): it ends.
  Step Lost(const std::string& why);
  // The loop's clock moved on: ends a job whose new node never attached.
  Step Tick(int64_t now_ms);
  // mosmigrate continue: throws Error when the job is not frozen (or already continuing).
  void Continue();
  // The restore at home ended: the job runs here again (the record is then done), or it
  // stays frozen.
  void ContinueDone(bool ok);

 private:
  explicit Protocol(Record record) : record_(std::move(record)) {}
  Step End(std::string why, MoveOutcome failure);
  Step Answer(MoveOutcome outcome);
  Record record_;
};

}  // namespace move
}  // namespace homeward
