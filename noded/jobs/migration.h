// Moving a job between nodes: the blocking halves that run off the event loop. The
// sender (on libuv's thread pool) dumps the job with CRIU, streams the images to the
// target's "migration" peer service and waits for the target's word; the receiver (on
// the peer server's thread) takes the images, restores the job in a namespace rooted
// in the job's home tree, and answers. Only after the target confirms does the source
// drop its frozen copy; any failure before that thaws the job where it was.
#pragma once

#include <capnp/message.h>

#include <chrono>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "checkpoint.h"
#include "child_process.h"
#include "criu_acting.h"
#include "fault.h"
#include "fd.h"
#include "home_locks.h"
#include "image_stream.h"
#include "job.h"
#include "secure_channel.h"

namespace homeward {

struct MoveOut {
  // In: the job and where it goes.
  pid_t init_pid = -1;
  std::vector<uint64_t> pipe_inodes;  // stdin, stdout, stderr, status
  std::string image_dir;
  std::string target_name;
  std::string target_host;
  uint16_t target_port = 0;
  PeerCredentials key;  // the target's cluster's, or the partnership's
  std::shared_ptr<capnp::MallocMessageBuilder> guest_request;  // a startGuest request
  migrate::JobMetadata metadata;
  FaultPoints faults;  // for failure tests: HOMEWARD_FAULT, read once by the daemon
  // A lazy move ([migration] lazy_pages): the job runs on the target before its memory
  // is there, and the move ends once the target has every page (see ARCHITECTURE.md,
  // "Lazy moves").
  bool lazy = false;
  std::optional<ActingUser> as_user;  // whose rights criu has on the job's files (homefs)
  // A guest's home tree (its homefs mount) when the job goes to another guest node: the
  // locks it holds through homefs are parked at its home for the target to claim (see
  // ARCHITECTURE.md, "Locks across a move"). Empty: nothing is carried.
  std::string lock_mount;
  // A job of this home leaving it: the home's file service parks the descriptions its
  // processes hold locks through (HomeJobLock, taken from the frozen job), under the
  // token, and returns how many; unpark gives them up when the move fails (see
  // ARCHITECTURE.md, "Locks of a job that leaves home"). Unset: nothing is carried.
  std::function<size_t(uint64_t token, const std::vector<HomeJobLock>& held)> park_home_locks;
  std::function<void(uint64_t token)> unpark_home_locks;
  // The job's stdin, held while it moves: reclaimed after the dump into metadata.input_*,
  // put back if the move fails.
  Job::InputPlace input;
  Fd input_reader;  // our own copy of input.reader: the job may end during the move
  // The job's departure (move::Departure), carried through the move's steps here and
  // given back to the job when the move ends (Job::Departed).
  move::Departure departure;
  // Journals the departure's state (Job::DepartureJournal), or empty: the target's word
  // that the job arrived is journaled before the loop hears of the move's end.
  std::function<void(const move::Departure&)> journal;
  // The job is a guest here, so its home hears how the move went from the target: the
  // figures go to the target after its word, and it attaches with them.
  bool tell_target = false;
  // Out: the connection that becomes the job's relay, or why the move failed.
  Fd connection;
  std::string error;
  std::chrono::milliseconds frozen{0};
  std::chrono::milliseconds total{0};
  uint64_t image_bytes = 0;
};

// Runs a move; blocks. On failure the job runs on here and `error` names the step.
void RunMoveOut(MoveOut& move);

// Restores the job whose images are in `dir` on this node, in a mount namespace rooted at
// `root`, with fresh pipes for its stdio and status; blocks. Throws Error naming the step.
// `own_network`: in a fresh network namespace with only its loopback (a guest), else in
// this node's own (a job at its home). The job's init is owned from the moment CRIU
// returns: dropped, it is killed and reaped.
struct RestoredHere {
  // A lazy restore's lazy-pages, which must outlive the job's init (dropped, the init is
  // killed first).
  std::unique_ptr<migrate::LazyPages> lazy;
  ChildProcess init;
  DaemonEnds ends;
};
// The home's file service's hold on the locks of a job coming home (see ARCHITECTURE.md,
// "Locks of a job that comes home"): claimed for the mount namespace the job is restored
// in before criu runs, told when it is restored, given back when the restore fails.
struct HomeLockClaims {
  std::function<bool(uint64_t token, uint64_t mntns, uid_t uid)> claim;
  std::function<void(uint64_t token)> restored;
  std::function<void(uint64_t token)> unclaim;
};
// Locks a moving job carries (see ARCHITECTURE.md, "Locks across a move"): the token the
// source parked them under at the home, and the homefs mount of that home here; or, for
// a job coming home, the home's own file service.
struct LockClaim {
  uint64_t token = 0;
  std::string mount;
  const HomeLockClaims* home = nullptr;
  uid_t uid = 0;  // the job's user: only its processes are handed a job coming home's locks
};
// The namespaces a job is restored into, held by `mosjob-init --prepare-root` until criu
// has restored into them. CRIU restores the job into a mount namespace like the one a job
// starts in: the home's tree as the job's view (for a guest), or this node's own (at
// home); and a guest into a network namespace of its own with only its loopback, like a
// guest started here.
struct LandingNamespaces {
  ChildProcess holder;
  Fd hold;  // the holder's stdin: it holds the namespaces until this closes
  Fd mount;
  Fd net;  // a guest's only
  CarrierSockets carrier;  // a guest's only: its carrier's sockets in `net`
};
LandingNamespaces PrepareLanding(const std::string& root, const std::string& init_path,
                                 bool own_network);

// `intent_dir`, when given: where the restore's intent is journaled (job_journal.h).
// `claim`: the job's locks are claimed, for its mount namespace, before criu runs.
// `prepared`: the landing namespaces, made ahead (else made here).
// `lazy_pages_socket`: a lazy restore, its memory pulled over this socket (RestoredHere::lazy).
RestoredHere RestoreHere(const std::string& dir,
                         const std::vector<migrate::PipeRole>& external_pipes,
                         const std::string& root, const std::string& init_path,
                         const FaultPoints& faults, bool own_network = false,
                         const std::string& intent_dir = {},
                         std::optional<ActingUser> as_user = std::nullopt,
                         const LockClaim& claim = {}, LandingNamespaces* prepared = nullptr,
                         int lazy_pages_socket = -1);

// A lazy move's page connection (the "lazy-pages" peer service), which starts with the
// move's token: kept until the incoming move with that token claims it (RunMoveIn).
void DepositLazyPageConnection(std::unique_ptr<SecureStream> stream);

// A job restored here, ready for the loop to adopt.
struct RestoredJob {
  Fd connection;  // from the job's home: becomes the job's relay
  ChildProcess init;
  DaemonEnds ends;
  // Moved here from a node that is not its home: how the move went, as that node told it
  // after our word (MoveOut::tell_target); unset when it could not.
  std::optional<MoveOutcome> figures;
};

struct MoveInContext {
  std::string state_dir;
  std::string init_path;
  std::string node_name;
  FaultPoints faults;
  HomeLockClaims home_locks;  // this node's file service, for jobs coming home
};

// Serves one incoming move on `stream` (the images opened in place, then the connection
// becomes a channel for the relay); blocks. `make_launch` turns the sender's startGuest
// request into the guest's launch (and throws when this node cannot take it). Returns
// nothing when the move failed; the sender has then been told why.
std::optional<RestoredJob> RunMoveIn(
    std::unique_ptr<SecureStream> stream, const MoveInContext& context,
    const std::function<JobLaunch(schema::GuestSpec::Reader)>& make_launch, JobLaunch* launch);

}  // namespace homeward
