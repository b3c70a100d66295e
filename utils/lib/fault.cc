// Fault points chosen by HOMEWARD_FAULT.
#include "fault.h"

#include <signal.h>
#include <unistd.h>

#include <cstdlib>

#include <spdlog/spdlog.h>

#include "error.h"

namespace homeward {

namespace {

constexpr FaultInfo kFaults[] = {
    {Fault::kDumpBeforeCriu, "dump-before-criu", "a dump fails before criu runs"},
    {Fault::kDumpCriu, "dump-criu",
     "criu dump fails at its post-dump step, after the images are written (criu thaws the job)"},
    {Fault::kRestoreBeforeCriu, "restore-before-criu", "a restore fails before criu runs"},
    {Fault::kRestoreCriu, "restore-criu",
     "criu restore fails at its post-restore step, after the job was restored (criu kills it)"},
    {Fault::kRestoreAfterCriu, "restore-after-criu",
     "a restore that criu completed is failed (and the restored job killed) afterwards"},
    {Fault::kAdoptRestored, "adopt-restored",
     "the daemon cannot take over a job criu restored (its init is killed and reaped)"},
    {Fault::kStreamMid, "stream-mid", "the sender cuts the image stream halfway"},
    {Fault::kStreamCorrupt, "stream-corrupt", "the sender corrupts a chunk of the image stream"},
    {Fault::kStreamHold, "stream-hold",
     "the sender holds the image stream after about half the bytes until the receiver hangs up"},
    {Fault::kReceiveMid, "receive-mid", "the receiver fails after about half the images"},
    {Fault::kPeerThread, "peer-thread", "the peer server cannot start a service thread"},
    {Fault::kLoopCallbackThrows, "loop-callback-throws",
     "a completion on the daemon's event loop throws once, just after start-up"},
    {Fault::kKillAfterSpawn, "kill-after-spawn",
     "the daemon SIGKILLs itself after spawning a job's init, before journaling it"},
    {Fault::kRestoreHold, "restore-hold",
     "criu holds a restore at its post-restore step (the job restored, criu not done) for 6 s"},
    {Fault::kKillAfterAppend, "kill-after-append",
     "the file service SIGKILLs its daemon after an O_APPEND write's system call, before "
     "logging it done (a first try only, not one sent again)"},
    {Fault::kKillBeforeSignal, "kill-before-signal",
     "the daemon SIGKILLs itself when it has read a numbered signal for a job from its relay, "
     "before delivering it"},
    {Fault::kKillAfterSignal, "kill-after-signal",
     "the daemon SIGKILLs itself when it has delivered a numbered signal to a job, before "
     "acknowledging it"},
    {Fault::kKillAfterArrived, "kill-after-arrived",
     "the daemon SIGKILLs itself when a move of a job of its home has ended with the target's "
     "word that the job arrived, before it journals the job as away there"},
    {Fault::kKillAfterHomecoming, "kill-after-homecoming",
     "the daemon SIGKILLs itself when a job of its home has come back while its old node "
     "still sends the output it owed mosrun, once the job is journaled home"},
    {Fault::kMovedOnHold, "movedon-hold",
     "a guest that moved on to another node holds its last word to the job's home (movedOn, "
     "sent after the output the job left there) for 20 s"},
    {Fault::kNoFileNotices, "no-file-notices",
     "the file service sends its clients no change notices: only their opens (close-to-open) "
     "and lock acquisitions revalidate what they cached"},
    {Fault::kLazyHold, "lazy-hold",
     "the target of a lazy move holds the source's first answer to criu lazy-pages (the "
     "restored job waits for its memory) until the relay ends or a minute has passed"},
    {Fault::kClockAhead, "clock-ahead",
     "the node stamps its gossip 5 s ahead of its clock, as a machine whose clock is off "
     "would: its peers measure the offset (mosctl check)"},
    {Fault::kSignalAtStart, "signal-at-start",
     "the node sends every job it starts SIGTERM the moment its init runs, before the init "
     "has set itself up, as a user's kill right after mosrun started can"},
    {Fault::kAdoptHold, "adopt-hold",
     "a job restored here runs on, its source told the move is done, while the daemon waits "
     "5 s to take it over (its carrier, output and signals)"},
    {Fault::kNoIoUringLane, "no-io-uring-lane",
     "homefs cannot make a lane for the kernel's requests through io_uring (as when a ring "
     "or its memory is refused): the kernel is not asked for io_uring, and requests come "
     "through /dev/fuse"},
};

}  // namespace

std::span<const FaultInfo> AllFaults() {
  return kFaults;
}

std::string_view FaultName(Fault fault) {
  return kFaults[static_cast<size_t>(fault)].name;
}

FaultPoints FaultPoints::Parse(std::string_view spec) {
  static_assert(std::size(kFaults) == decltype(selected_)().size(), "a fault point is unlisted");
  FaultPoints points;
  while (!spec.empty()) {
    size_t comma = spec.find(',');
    std::string_view name = spec.substr(0, comma);
    if (!name.empty()) {
      const FaultInfo* found = nullptr;
      for (const FaultInfo& info : kFaults) {
        if (info.name == name) found = &info;
      }
      if (!found) {
        std::string known;
        for (const FaultInfo& info : kFaults)
          known += (known.empty() ? "" : ", ") + std::string(info.name);
        Fail(ErrorKind::kInvalidInput,
             "HOMEWARD_FAULT names an unknown fault point '{}' (known: {})", name, known);
      }
      points.selected_.set(static_cast<size_t>(found->fault));
    }
    if (comma == std::string_view::npos) break;
    spec.remove_prefix(comma + 1);
  }
  return points;
}

FaultPoints FaultPoints::FromEnvironment() {
  const char* spec = std::getenv("HOMEWARD_FAULT");
  return spec ? Parse(spec) : FaultPoints();
}

bool FaultPoints::Hit(Fault fault) const {
  return selected_.test(static_cast<size_t>(fault));
}

void FaultPoints::Check(Fault fault) const {
  if (Hit(fault)) Fail(ErrorKind::kFailed, "fault point {} hit (HOMEWARD_FAULT)", FaultName(fault));
}

void DieAtFaultPoint(Fault fault, std::string_view when) {
  spdlog::warn("fault point {}: the daemon dies {}", FaultName(fault), when);
  spdlog::default_logger()->flush();
  ::kill(::getpid(), SIGKILL);
  ::_exit(137);  // not reached: SIGKILL cannot be caught
}

}  // namespace homeward
