// Fault points: named places compiled into the code where a failure test can make a step
// fail on purpose (like CRIU's CRIU_FAULT). HOMEWARD_FAULT=name[,name...] selects them;
// main() reads the variable once and passes the set down, so there is no global state.
// The points are a declared list (Fault, kFaults): the code names them by enumerator, so
// a typo there does not compile, and a name the list lacks in HOMEWARD_FAULT is refused
// at start-up rather than silently doing nothing.
#pragma once

#include <bitset>
#include <span>
#include <string>
#include <string_view>

namespace homeward {

enum class Fault {
  kDumpBeforeCriu,
  kDumpCriu,
  kRestoreBeforeCriu,
  kRestoreCriu,
  kRestoreAfterCriu,
  kAdoptRestored,
  kStreamMid,
  kStreamCorrupt,
  kStreamHold,
  kReceiveMid,
  kPeerThread,
  kLoopCallbackThrows,
  kKillAfterSpawn,
  kRestoreHold,
  kKillAfterAppend,
  kKillBeforeSignal,
  kKillAfterSignal,
  kKillAfterArrived,
  kKillAfterHomecoming,
  kMovedOnHold,
  kNoFileNotices,
  kLazyHold,
  kClockAhead,
  kSignalAtStart,
  kAdoptHold,
  kNoIoUringLane,
};

// How long the restore-hold fault point holds criu at its post-restore step.
constexpr int kRestoreHoldSeconds = 6;
// How long the adopt-hold fault point holds a restored job from its daemon.
constexpr int kAdoptHoldSeconds = 5;
// How long the movedon-hold fault point holds a guest's last word to its home.
constexpr int kMovedOnHoldSeconds = 20;
// How far ahead the clock-ahead fault point stamps a node's gossip.
constexpr int kClockAheadSeconds = 5;

struct FaultInfo {
  Fault fault;
  std::string_view name;    // as HOMEWARD_FAULT spells it
  std::string_view effect;  // what a test that selects it sees
};

// Every fault point, in the order of Fault.
std::span<const FaultInfo> AllFaults();
std::string_view FaultName(Fault fault);

class FaultPoints {
 public:
  FaultPoints() = default;
  // Parses "name[,name...]"; empty names are ignored. Throws Error(kInvalidInput) naming
  // the known points when a name is not one of them.
  static FaultPoints Parse(std::string_view spec);
  // The set that HOMEWARD_FAULT names (empty when it is unset); throws as Parse does.
  static FaultPoints FromEnvironment();

  // True when `fault` was selected: the caller then fails the way the point describes.
  bool Hit(Fault fault) const;
  // Throws Error(kFailed, "fault point <name> hit") when `fault` was selected.
  void Check(Fault fault) const;
  bool empty() const { return selected_.none(); }

 private:
  std::bitset<static_cast<size_t>(Fault::kNoIoUringLane) + 1> selected_;
};

// A fault point that kills the daemon: logs "fault point <name>: the daemon dies
// <when>", flushes the log and sends itself SIGKILL, so that nothing is cleaned up, as
// in a crash.
[[noreturn]] void DieAtFaultPoint(Fault fault, std::string_view when);

}  // namespace homeward
