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
  kAnnounced,   // its old node said it moved; the new node must attach by `attach_due_ms`
  kArrived,     // the new node attached (or it came home); the old node's word is not in yet
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
  MoveOutcome announced;  // kAnnounced: the old node's figures, given once the job arrives
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
  Step Refused(uint32_t relay, const std::string& why);
  // The job's node said, on relay `relay`, that the job moved on (`figures.where`).
  Step Migrated(uint32_t relay, MoveOutcome figures, int64_t now_ms);
  // The job arrived: its new node attached, or it came back home (`node` is then home).
  // Its new relay is record().relay. Nothing when no arrival is expected now.
  std::optional<Step> Arrived(const std::string& node);
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
