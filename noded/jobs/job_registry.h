// JobRegistry: the jobs of this node. Its home jobs, wherever they run — started here
// for mosrun, or on another node through a peer connection to that node's daemon — and
// the guests other homes run here. It answers mosps, gives each home job a unique block
// of process ids, and kills what runs here at shutdown.
//
// One class, in files by concern: job_registry.cc (the job table), job_relay.cc (a job
// away's two streams joined here), job_moves.cc (moves, and the move protocol's steps
// carried out), job_snapshots.cc (checkpoint, freeze, continue), job_arrivals.cc
// (restored jobs taken over), job_replies.h (the messages it builds). Where a job away
// stands is move::Protocol (move_protocol.h), pure logic.
#pragma once

#include <uv.h>

#include <atomic>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "balance_policy.h"
#include "checkpoint.h"
#include "child_process.h"
#include "config.h"
#include "control_server.h"
#include "fault.h"
#include "fs_credentials.h"
#include "home_grace.h"
#include "image_stream.h"
#include "input_log.h"
#include "job.h"
#include "job_journal.h"
#include "job_whereabouts.h"
#include "migration.h"
#include "move_protocol.h"
#include "node_directory.h"
#include "process_watch.h"
#include "user_groups.h"

#include <capnp/message.h>

namespace homeward {

class AdminRun;  // one mosctl action's moves (job_placement.cc)

// Where another node's daemon listens, as the cluster's picture has it.
struct PeerAddress {
  std::string host;
  uint16_t port = 0;
  std::string cluster;  // a partner cluster's node; empty: one of this cluster
  // A partner's node takes this cluster's jobs: not blocked, and its cluster accepts ours
  // (this cluster's own nodes are checked against the balancer's picture instead).
  bool takes_guests = true;
};
// Finds a live node by name; throws Error(kNotFound) naming the node when there is none.
using PeerResolver = std::function<PeerAddress(const std::string& node)>;
// The live nodes as the placement policy sees them, this one included.
using PictureSource = std::function<std::vector<balance::Node>()>;

using MoveDone = std::function<void(const MoveOutcome&)>;

// Fails unless this node sees the launch's home through /mosix/home (a guest's root).
void CheckHomeSeen(const std::string& node, const std::string& mosix_root,
                   const JobLaunch& launch);

class JobRegistry {
 public:
  JobRegistry(uv_loop_t* loop, const NodeConfig& config, ControlServer& control,
              PeerResolver resolve, PictureSource picture, FaultPoints faults);
  JobRegistry(const JobRegistry&) = delete;
  JobRegistry& operator=(const JobRegistry&) = delete;
  ~JobRegistry();

  // mosrun's startJob: starts the job here or on the node it names, and turns the
  // connection into the job's relay.
  void StartJob(schema::JobSpec::Reader spec, ReplySender reply);
  // A home's startGuest, over an authenticated peer connection.
  void StartGuest(schema::GuestSpec::Reader spec, ReplySender reply);
  // mosmigrate's migrateJob: moves a job of this home that runs here to another node.
  void MigrateJob(schema::MigrateRequest::Reader request, ReplySender reply);
  // An incoming move from a node of `from_cluster` (empty: this cluster), on a peer server
  // thread: restores the job here as a guest, or as a job of this home come back.
  void AcceptMove(std::unique_ptr<SecureStream> fd, const std::string& from_cluster);
  // A job moved on between guest nodes announces its new place; the connection becomes
  // its relay.
  void AttachGuest(schema::AttachGuest::Reader attach, ReplySender reply);
  // mosrun -R: restarts a job of the caller from the newest good checkpoint in a
  // directory (job_checkpoints.cc); the connection becomes the job's relay.
  void RestartJob(schema::RestartSpec::Reader spec, ReplySender reply);
  // A mosrun whose daemon was restarted presents its job again (job_recovery.cc).
  void ResumeJob(schema::ResumeJob::Reader request, ReplySender reply);
  // mosps's listJobs.
  void ListJobs(ReplySender reply) const;
  // The same list, into `list` (the web monitor's /api/jobs).
  void DescribeJobs(schema::JobList::Builder list) const;
  // The moves that left this node (its jobs and guests moving on), for /metrics: moved,
  // failed, and the moved ones' frozen time in all.
  struct MoveCounts {
    uint64_t moved = 0;
    uint64_t failed = 0;
    uint64_t frozen_ms = 0;
  };
  const MoveCounts& move_counts() const { return move_counts_; }
  // mosctl block, unblock, expel, bring, leave and join.
  void Admin(schema::AdminRequest::Reader request, ReplySender reply);
  // Whether this node has left the cluster (mosctl leave): it keeps its jobs home.
  bool left() const { return left_; }
  // For a node that moves to another cluster (mosctl reload): blocks, sends every guest
  // away and brings every job home, as leave does but with no freezing, then answers
  // `reply` with the moves' report. `finish` is called before the report goes, with
  // whether the node is clear (no guest here, no job of its away); it fills in the rest
  // of the report. A node not clear takes guests and moves jobs again as before.
  // `stays`, when given, keeps what runs across clusters it names (a reload that changes
  // only partnerships): a guest whose home's cluster it names, a job away on a node of
  // one; "clear" then means nothing else is left.
  using VacateFinish = std::function<void(bool clear, schema::AdminReport::Builder report)>;
  using ClusterStays = std::function<bool(const std::string& cluster)>;
  struct VacateRules {
    ClusterStays guest_stays;  // by its home's cluster
    ClusterStays away_stays;   // by the cluster of the node it runs on
  };
  void Vacate(ReplySender reply, VacateFinish finish, VacateRules stays = {});
  // Whether a job that came home still waits for the output its old node owed mosrun: a
  // restart now would cut that node's relay (and the output with it).
  bool OutputOwed() const;

  // The balancer's side. Samples what every job running here uses, and returns those it
  // may move: not locked (mosrun -L), not pinned, not moving; `now_ms` is the loop's time.
  std::vector<balance::Job> MovableJobs(int64_t now_ms);
  // Moves a job MovableJobs offered; `done` runs on the loop when the move has ended.
  void MoveAutomatically(uint64_t id, const std::string& target, MoveDone done);
  // Called when a job starts or arrives here from another node (a guest, or a job of
  // this home coming back).
  void OnArrival(std::function<void()> callback) { on_arrival_ = std::move(callback); }
  // Called when a new job of this home is placed on another node (mosrun -b, -m).
  void OnPlaced(std::function<void(const std::string& node)> callback) {
    on_placed_ = std::move(callback);
  }
  // Gossip's word on another node, as a home of guests here: unreachable (declared dead)
  // or back. Guests whose home stays unreachable for [recovery] home_grace_s are frozen
  // to this node's disk, and continued here when it is back (job_grace.cc).
  void HomeUnreachable(const std::string& home);
  void HomeReachable(const std::string& home);
  // Whether this node refuses guests (mosctl block); read from peer threads too.
  bool blocked() const { return blocked_; }
  void KillAll();
  void Start();
  // The home's file service, which keeps the locks of a job leaving home for it (see
  // MoveOut::park_home_locks).
  void HomeLockParking(std::function<size_t(uint64_t, const std::vector<HomeJobLock>&)> park,
                       std::function<void(uint64_t)> unpark) {
    park_home_locks_ = std::move(park);
    unpark_home_locks_ = std::move(unpark);
  }
  // The same service, which holds the locks of a job coming home for it.
  void HomeLockClaiming(HomeLockClaims claims) { home_lock_claims_ = std::move(claims); }
  // The nodes gossip knows, alive or not: which cluster each is of (for mosps), and
  // whether the home a partner's incoming job names is one of that partner's (AcceptMove).
  void KnowNodes(const NodeDirectory* nodes) { nodes_ = nodes; }
  // Called whenever the number of jobs away or guests here may have changed.
  void OnChange(std::function<void()> callback) { on_change_ = std::move(callback); }

  uint32_t jobs_away() const;
  // Where this home's jobs away run, for the loopback service's threads: republished
  // after every turn of the loop (a check handle), so every place the registry records a
  // job's start away, move, arrival home, end or replay after a restart is covered.
  JobWhereabouts& whereabouts() { return whereabouts_; }
  uint32_t guests_here() const { return static_cast<uint32_t>(guests_.size()); }
  // The inits of the home jobs running on this node (their processes alone take the
  // shim's OFD locks on this node's files).
  std::vector<pid_t> HomeJobInits() const;

  // Each home job's processes other than its main one get ids PidBase(slot) + their pid
  // in the job's namespace: above any real pid (at most 2^22), and unique among the
  // home's jobs. See preload/.
  static int64_t PidBase(int slot) { return (static_cast<int64_t>(slot) + 1) << 22; }
  static constexpr int kMaxJobs = 500;

 private:
  // A home job running on another node (or frozen at home): its relay is two streams
  // joined here, and where it is in the move protocol.
  struct Away {
    explicit Away(move::Protocol protocol) : protocol(std::move(protocol)) {}
    move::Protocol protocol;
    std::string command;
    bool locked = false;
    bool partners = false;  // mosrun -G
    uid_t uid = 0;
    ControlStream mosrun;
    ControlStream peer;
    // The old node's relay while it sends what the job left in its pipes there, after the
    // job arrived elsewhere (state kArrived): relay number `leaving_relay`.
    ControlStream leaving;
    uint32_t leaving_relay = 0;
    // The stream of relay number `relay`, if it is the current or the leaving one.
    ControlStream* StreamOf(uint32_t relay) {
      if (relay == protocol.record().relay) return &peer;
      if (relay == leaving_relay && leaving.open()) return &leaving;
      return nullptr;
    }
    MoveDone waiter;  // hears how a move this home asked for ends
    // Set for a job frozen to disk at home (mosmigrate freeze): what restoring it needs.
    struct Frozen {
      std::string dir;  // its images
      JobLaunch launch;
      std::vector<migrate::PipeRole> pipes;
      // Frozen for want of room at home after mosctl leave: continues by itself, one job
      // at a time, as room appears (ContinueWhenRoom). Kept across restarts as a file
      // in `dir`.
      bool waits_for_room = false;
    };
    std::optional<Frozen> frozen;
    // Set while the job's new place holds its output back until its old node's last
    // output (what the job left in its pipes) has come in: releases it.
    std::function<void()> release_output;
    bool output_held = false;
    // The job's stdout and stderr bytes had from the node it runs on since it got there
    // (the offsets of that node's spools), and the last total told to that node
    // (job_recovery.cc: "Daemon restarts").
    uint64_t output_here[3] = {0, 0, 0};
    uint64_t output_told = 0;
    // mosrun's offsets when the job left home (or started away), and every byte of
    // output forwarded to mosrun since: where the current node's output starts in
    // mosrun's stream is origin + forwarded - output_here.
    uint64_t origin[3] = {0, 0, 0};
    uint64_t forwarded[3] = {0, 0, 0};
    // Taken back from the journal after this daemon restarted: its mosrun has not come
    // back yet (it must be the process that started at mosrun_start).
    bool awaiting_mosrun = false;
    // Signals from mosrun while no relay to the job's node is open (its daemon or this one
    // restarted): sent, in order, once the node has the job again.
    std::vector<int> held_signals;
    uint64_t mosrun_start = 0;
    // Set while the job's mosrun is not read here (taken back and awaiting it, or frozen
    // at home): its exit is seen through its pidfd instead (WatchMosrun).
    std::unique_ptr<ProcessWatch> mosrun_watch;
    int slot = -1;
    std::string journaled;  // the journal's text as last written
    // What that text was made of, of what can change: while it stays the same, the entry
    // is neither formatted nor written again.
    struct JournalInputs {
      move::Record record;
      uint64_t base[3] = {0, 0, 0};
      bool frozen = false;
      std::optional<CheckpointPlan> plan;
      bool operator==(const JournalInputs&) const = default;
    };
    std::optional<JournalInputs> journaled_inputs;

    pid_t home_pid() const { return protocol.record().home_pid; }
    const std::string& where() const { return protocol.record().where; }
  };
  struct HomeJob {
    std::shared_ptr<Job> here;   // runs on this node
    std::shared_ptr<Away> away;  // runs elsewhere
  };

  // Jobs restored on peer server threads, waiting for the loop to adopt them.
  struct Restored {
    Fd connection;
    ChildProcess init;  // killed and reaped if nobody takes the job over
    DaemonEnds ends;
    JobLaunch launch;
    std::optional<MoveOutcome> figures;  // RestoredJob::figures
  };
  int FreeSlot() const;
  // The record of a home job leaving this node, taken over from its Job.
  static std::shared_ptr<Away> AwayFrom(Job& job, move::Protocol protocol);
  JobLaunch LaunchFrom(schema::JobSpec::Reader spec) const;
  // Starts `launch` on this node with `reply`'s connection as its relay; `finished`
  // runs when the job is gone.
  std::shared_ptr<Job> RunHere(JobLaunch launch, ReplySender& reply,
                               std::function<void()> finished,
                               std::function<void(Job&)> prepare = nullptr);
  // Journals a job of this home started here in `slot`, so that it survives the daemon's
  // death; and takes back, at start, the jobs the journal names (job_recovery.cc).
  void KeepJob(Job& job, int slot);
  void Recover();
  // A job the journal names that ran here (at home or as a guest): taken back, or ended
  // and its entry removed.
  void RecoverRunning(JournalEntry& entry, const std::string& dir);
  // Takes back the job of `entry` with what its keeper kept; returns why it could not.
  std::string TakeBack(JournalEntry& entry, FdKeeper keeper, std::vector<Fd> kept, Fd mosrun);
  // A guest taken back after a restart asks its home to take it back too.
  void ReattachGuest(std::shared_ptr<Job> job, int64_t until_ms, bool again = false);
  // The relay of a job running here closed: a guest waits for its home to take it back
  // (its home's daemon may have been restarted), anything else is killed.
  void RelayClosed(const std::shared_ptr<Job>& job);
  // Home's side: counts output from the current relay and now and then tells the node
  // how much it has had; a relay closed while the job runs waits for the node's daemon
  // to come back; a node whose daemon came back takes the job up again.
  static void CountOutput(Away& away, schema::JobOutput::Reader output);
  static void TellOutputHad(Away& away);
  // Sends the signals mosrun gave while the job's node had no relay (Away::held_signals).
  static void SendHeldSignals(Away& away);
  bool AwaitNodeBack(const std::shared_ptr<Away>& away, uint32_t relay);
  // Keeps the journal of every job away current (each second, and at once after some
  // changes): an entry is formatted and written only when what it is made of changed.
  void JournalAways();
  // The entry of `away` in `slot`, as JournalAways writes it.
  JournalEntry AwayEntry(int slot, const Away& away) const;
  // mosrun's offsets where the output from the job's node starts (zero while pending).
  static void BaseOf(const Away& away, uint64_t base[3]);
  // mosrun came back after a restart having had `had` of the job's stdout and stderr:
  // where the output from the job's node starts. Pending (the old node's last output
  // went with the restart), there; short of the journaled base (output of the job's
  // previous place that died in the killed daemon's memory), there too, the loss logged.
  // Throws for a frozen job short of its base. True when the base changed.
  static bool SettleBase(Away& away, const uint64_t had[3]);
  // Ends the job `away` when its mosrun exits while nothing reads its stream (taken back
  // and awaiting it, or frozen at home); a no-op once that is no longer so.
  void WatchMosrun(int slot, const std::shared_ptr<Away>& away);
  // Journals the jobs away on the loop's next turn rather than within the second: a move
  // between guests changed where one runs, and a home killed before that is journaled
  // would refuse the job's new node.
  void JournalSoon();
  static void OnCountsTimer(uv_timer_t* timer);
  void ForgetAway(const Away& away);
  // The nodes job `home_pid` of this home may run on now (JobWhereabouts' answer).
  std::vector<std::string> NodesOf(pid_t home_pid) const;
  void RecoverAway(JournalEntry& entry);
  bool ResumeAway(schema::ResumeJob::Reader request, ReplySender& reply);
  bool Rejoin(int slot, const std::shared_ptr<Away>& away, schema::AttachGuest::Reader attach,
              ReplySender& reply);
  void StartAway(int slot, JobLaunch launch, const std::string& where, ReplySender reply);
  void ConnectedAway(int slot, std::shared_ptr<Away> away, Fd fd,
                     std::shared_ptr<capnp::MallocMessageBuilder> guest_request);
  // Carries out what the move protocol said after an event: answers the waiting move,
  // ends the job.
  void Apply(int slot, const std::shared_ptr<Away>& away, move::Step step);
  // Ends an away job, telling its mosrun `why` when not empty.
  void EndAway(int slot, const std::shared_ptr<Away>& away, const std::string& why);
  // Once the old node's relay has said its last (moved, or closed), the output held back
  // at the job's new place flows.
  static void MaybeReleaseOutput(const std::shared_ptr<Away>& away);
  // The old node has said its last (or closed): the job's entry is journaled with its
  // base settled, then its new node's output is let go.
  void SettledBeforeRelease(const std::shared_ptr<Away>& away);
  // Output from the job's nodes waits while mosrun is behind; once mosrun has drained,
  // the old node's last output goes on, then the current node's, and input from mosrun
  // goes on once the current node has drained.
  static void PaceRelays(const std::shared_ptr<Away>& away);
  // Ends the jobs whose move on was announced but whose new node never attached, and
  // continues here those whose target did not take them over after a restart.
  void EndOverdueAttaches();
  // The target of a move a restart cut during its handover attaches the job (resumed):
  // it has the job, so the stopped copy here goes and the job is away there, once its
  // mosrun is back (the copy here may still owe it output). Throws Error when the attach
  // is not the target's.
  void TakeOverDeparted(int slot, const std::shared_ptr<Job>& job,
                        schema::AttachGuest::Reader attach, ReplySender reply);
  void FinishTakeOver(int slot, const std::shared_ptr<Job>& job, const std::string& node,
                      ReplySender& reply);
  StreamHandlers MosrunHandlersForAway(int slot, std::shared_ptr<Away> away);
  void JoinAway(int slot, std::shared_ptr<Away> away, Fd fd, capnp::MallocMessageBuilder* first);
  // The handlers of relay number `relay` (move::Protocol) to the job's node.
  StreamHandlers PeerHandlersForAway(int slot, std::shared_ptr<Away> away, uint32_t relay);
  StreamHandlers RelayHandlersFor(std::shared_ptr<std::weak_ptr<Job>> weak_job);
  // The fault points kill-before-signal and kill-after-signal: SIGKILLs this daemon.
  void DieAtSignal(Fault fault, const Job& job, schema::NumberedSignal::Reader signal) const;
  // Moves a guest on. `done`, when given, hears the outcome (a move this node decided);
  // otherwise the guest's home does, on its relay (a move the home asked for).
  void MigrateGuest(std::shared_ptr<Job> job, const std::string& target, MoveDone done = {});
  void FinishGuestMove(std::shared_ptr<Job> job, struct MoveOut& move, const MoveDone& done);
  // Moves a home job running here to `target`.
  void MoveFromHome(int slot, std::shared_ptr<Job> job, const std::string& target, MoveDone done);
  // Asks the node a home job runs on to move it to `target` (this node for home).
  void MoveAway(std::shared_ptr<Away> away, const std::string& target, MoveDone done);
  // Where a new job starts: its -r node, or one -b or -m chooses.
  std::string Place(const JobLaunch& launch, const std::string& where, bool best) const;
  void ComeHome(Restored& restored);
  void ArriveAsGuest(Restored& restored);
  // Makes the Job of a restored init and takes it over; throws Error when it cannot (the
  // init is then killed and reaped). `finished` runs when the job is gone.
  // `slot`: a job of this home coming back, journaled in that slot (-1: not journaled,
  // unless a guest). `hold_output`: the job's output waits (HoldOutput) from its first
  // byte, for what its old node still owes mosrun.
  std::shared_ptr<Job> AdoptRestored(JobLaunch launch, ControlStream relay, ChildProcess init,
                                     DaemonEnds ends, std::function<void()> finished,
                                     int slot = -1, bool hold_output = false);
  std::shared_ptr<MoveOut> PrepareMove(const std::shared_ptr<Job>& job, const std::string& target);
  // A guest's launch from its spec; CheckHomeSeen (which may wait on the network) is apart.
  JobLaunch GuestLaunch(schema::GuestSpec::Reader spec) const;
  // Empty when a job coming from a node of partner cluster `from_cluster` names a home
  // that may send it from there (partner_services.h, KnownHome; for a job of this home,
  // its whereabouts), and then sets the home's address from gossip; otherwise why not. On
  // a peer server thread.
  std::string CheckPartnersJob(JobLaunch& launch, const std::string& from_cluster);
  // How this node connects to the home of `launch` (of this cluster or a partner's).
  PeerCredentials HomeCredentials(const JobLaunch& launch) const {
    return config_.CredentialsFor(launch.home_cluster);
  }
  std::shared_ptr<capnp::MallocMessageBuilder> GuestRequest(const JobLaunch& launch,
                                                            const std::string& where) const;
  void TakeRestored();
  // Writes a checkpoint of a running job into a new directory the caller names, made
  // with the caller's rights (checkpoint_dir.h); the job runs on.
  void Checkpoint(std::shared_ptr<Job> job, const std::string& path, const Caller& caller,
                  ReplySender reply);
  // Dumps a job at home to <state_dir>/frozen/job-PID and keeps its slot and mosrun
  // (mosmigrate freeze); `waits_for_room`: frozen because the home has no room for it
  // after it left the cluster (mosctl leave), to continue by itself when room appears.
  void Freeze(int slot, std::shared_ptr<Job> job, MoveDone done, bool waits_for_room = false);
  // mosctl's expel and bring, each move reported to `run`.
  // Every guest goes, and every job away comes home, but those `stays` keeps.
  void ExpelGuests(const std::shared_ptr<AdminRun>& run, const ClusterStays& stays = {});
  void BringJobsHome(const std::shared_ptr<AdminRun>& run, const ClusterStays& stays = {});
  // The cluster of a job's home, and of a node by name (this one's when gossip names none).
  std::string ClusterOfHome(const JobLaunch& launch) const;
  std::string ClusterOfNode(const std::string& node) const;
  // Whether `stays` keeps what runs across `cluster` (none given: nothing stays).
  static bool Keeps(const ClusterStays& stays, const std::string& cluster) {
    return stays && stays(cluster);
  }
  // Room at home after mosctl leave (job_room.cc), each second: while more jobs run here
  // (this home's and guests) than the node has cores, the job brought home last is
  // frozen to disk; while there is a core free, the job frozen so first is continued,
  // one at a time.
  uint32_t RunningHere() const;
  uint32_t CoresHere() const;
  void KeepRoom();
  struct DumpOutcome {
    migrate::DumpResult dump;
    std::string error;
    ErrorKind kind = ErrorKind::kFailed;
  };
  // Dumps a job's init (given with the options to use), on libuv's thread pool.
  using DumpStep = std::function<migrate::DumpResult(pid_t init, migrate::DumpOptions options)>;
  // Dumps `job` into `dir` on the thread pool, then calls `done` on the loop.
  // Whose rights criu gets on a job's files through homefs (see criu_acting.h).
  ActingUser CriuUserOf(const Job& job) const;
  void DumpOffLoop(const std::shared_ptr<Job>& job, migrate::AfterDump after, DumpStep dump,
                   std::function<void(const DumpOutcome&)> done);
  void Continue(int slot, std::shared_ptr<Away> away, MoveDone done);
  // A frozen job restored at home (or not), back on the loop.
  struct Restoring {
    std::optional<RestoredHere> restored;
    std::string error;
  };
  void Continued(int slot, const std::shared_ptr<Away>& away, Restoring& result,
                 const MoveDone& done);
  void FinishMove(int slot, std::shared_ptr<Job> job, struct MoveOut& move, const MoveDone& done);
  void CountMove(const struct MoveOut& move);

  // Checkpoints into a job's checkpoint directory (job_checkpoints.cc): what mosrun -C,
  // -A, -N, -S asked for, by slot, for the job of that home pid.
  struct PlannedCheckpoints {
    pid_t home_pid = 0;
    FsIdentity owner;  // the job's user: the directory is read and written as them
    CheckpointPlan plan;
    int64_t next_ms = 0;  // the loop's time of the next periodic one
    bool busy = false;    // one is being written
    bool asked = false;   // the job asked for one (mosrun -S): taken at the next tick
    int64_t busy_until_ms = 0;  // a job away: its node's answer is given up after this
    std::shared_ptr<ReplySender> waiter;  // mosmigrate, for a job away
    // Whether a checkpoint of this run of the job may exist (one was written, or the job
    // was restarted or taken back): its input log then outlives the job, for `mosrun -R`.
    bool restartable = false;
    // The input the job was given since its newest checkpoint (input_log.h); none when it
    // cannot be kept (logged).
    std::shared_ptr<InputLog> input_log;
  };
  static CheckpointPlan PlanFrom(schema::JobSpec::Reader spec);
  JobLaunch RestartedLaunch(const struct CheckpointManifest& manifest) const;
  // A job restarted at home goes on to `where` (mosrun -R -r) or the best node (-b).
  void PlaceRestarted(int slot, const std::shared_ptr<Job>& job, const std::string& where,
                      bool best);
  // `fresh_log`: a new job, whose input log starts empty; else (a job taken back or
  // restarted) it goes on.
  // `run`: the job's first start (JobLaunch::started_unix_ms, which restarts keep), what
  // its input log is of.
  void PlanCheckpoints(int slot, const JobIdentity& owner, const CheckpointPlan& plan,
                       int64_t run, bool fresh_log = false);
  // Input logs (job_input_logs.cc): what was logged in this loop turn is synced at its
  // end (SyncInputLogs, from input_sync_); a job with no checkpoint whose exit reached its
  // mosrun has its log removed (EndInputLog, from JobEnded for a job here); at start, logs
  // of no journaled job whose directory is gone are removed (SweepInputLogs).
  void OpenInputLog(PlannedCheckpoints& planned, const std::string& dir, int64_t run,
                    bool fresh);
  void SyncInputLogs();
  void EndInputLog(pid_t home_pid);
  void JobEnded(Job& job);
  void SweepInputLogs();
  // Input from mosrun for job `home_pid` of this home, at `offset` in its stream: kept in
  // the job's input log, if it has one, before the job's node may take it.
  void LogInput(pid_t home_pid, uint64_t offset, const void* data, size_t size);
  // A job away whose end is `why` (its node lost): restarts it at home from its newest
  // checkpoint, on the same mosrun. False when it has no checkpoint directory.
  bool RestartLost(int slot, const std::shared_ptr<Away>& away, const std::string& why);
  // A fresh root-only directory under <state_dir>/restart for a checkpoint's copy, or ""
  // (errno says why).
  std::string RestartCopyDir(pid_t pid) const;
  // Tells mosrun (and mosps) that `job` was restarted, and from which checkpoint.
  void TellRestarted(const Job& job, ControlStream& relay, const std::string& from);
  // The job restarted at home from its checkpoint in place of `away`, in `slot`, on the
  // same mosrun. Throws Error when it cannot be taken over.
  std::shared_ptr<Job> TakeOverRestarted(int slot, const std::shared_ptr<Away>& away,
                                         const CheckpointPlan& plan,
                                         const struct CheckpointManifest& manifest,
                                         RestoredHere restored);
  void StartCheckpointTimer();
  void CheckpointTick();
  // Takes the job's own asks for a checkpoint (mosrun -S) from its status pipe.
  void WatchCheckpointAsks(const std::shared_ptr<Job>& job);
  // The job running here asked for a checkpoint itself (mosrun -S): a guest passes the
  // word to its home; a job at home is marked (CheckpointAsked).
  void CheckpointRequested(const std::shared_ptr<Job>& job);
  // The job with `home_pid` asked for a checkpoint, here or on its node: the next tick
  // takes one.
  void CheckpointAsked(pid_t home_pid);
  // The plan of the job with `home_pid` in `slot`, free for a new checkpoint; throws Error
  // (saying `without`, how else to take one, when the job has no checkpoint directory, or
  // that one is under way).
  PlannedCheckpoints& FreePlan(int slot, pid_t home_pid, const std::string& without);
  // Writes a checkpoint of a job running here into its checkpoint directory; `reply`, when
  // given, hears how it went.
  void CheckpointToPlan(int slot, std::shared_ptr<Job> job, std::shared_ptr<ReplySender> reply);
  // Its end, on the loop: the plan is free again, the input log trimmed to the checkpoint,
  // and the caller (if any) answered.
  void CheckpointWritten(int slot, pid_t home_pid, const struct WrittenCheckpoint& written,
                         std::optional<uint64_t> measured, ReplySender* reply,
                         const DumpOutcome& result);
  // A job away: its node dumps it and writes the checkpoint into its directory through
  // homefs, as the user (CheckpointGuest there), and answers on the relay (CheckpointedAway).
  void AskCheckpointAway(int slot, const std::shared_ptr<Away>& away,
                         std::shared_ptr<ReplySender> reply);
  void CheckpointGuest(std::shared_ptr<Job> job, schema::CheckpointAway::Reader request);
  void CheckpointedAway(int slot, const std::shared_ptr<Away>& away,
                        schema::Checkpointed::Reader report);
  // A guest frozen here while its home was unreachable: its images, what restoring it
  // needs, and its relay to the home, kept open (and not read) meanwhile.
  // Journaled (JournalFrozenGuest) before its running copy is killed, with its pending
  // output and unread input in its image directory: a restart of this daemon takes it
  // back frozen (RecoverFrozenGuest), without a relay (`relay` closed): once continued it
  // attaches to its home again, as a guest taken back after a restart does.
  struct FrozenGuest {
    std::string dir;
    JobLaunch launch;
    std::vector<migrate::PipeRole> pipes;
    ControlStream relay;
    uint32_t migrations = 0;
    bool continuing = false;
    bool go_home = false;  // [recovery] frozen_guests = "home" when it froze
    bool reattach = false;  // taken back after a restart: no relay to its home yet
    int64_t retry_ms = -1;  // such a guest whose restore failed is tried again then
    FrozenOutput output;
  };
  void FreezeOverdueGuests();
  void FreezeGuest(uint64_t id, std::shared_ptr<Job> job);
  void JournalFrozenGuest(const FrozenGuest& frozen, pid_t init_pid, uint64_t init_start,
                          pid_t keeper_pid, uint64_t keeper_start);
  void RecoverFrozenGuest(JournalEntry& entry);
  void RemoveStaleFrozenGuests();
  // Forgets a frozen guest: its journal entry and its images.
  void DropFrozenGuest(const FrozenGuest& frozen);
  void ContinueGuest(uint64_t id, std::shared_ptr<FrozenGuest> frozen);
  // ContinueGuest's pieces, on the loop once the restore has run: takes the restored job
  // over (nothing, the error in `result`, when it cannot), then lets it run on its relay or
  // asks its home to take it back.
  void ContinuedGuest(uint64_t id, const std::shared_ptr<FrozenGuest>& frozen, Restoring& result);
  std::shared_ptr<Job> AdoptContinuedGuest(uint64_t id, const FrozenGuest& frozen,
                                           Restoring& result);
  void RunContinuedGuest(const FrozenGuest& frozen, const std::shared_ptr<Job>& job);
  // Moves a guest continued after a freeze home ([recovery] frozen_guests = "home").
  void SendHome(std::shared_ptr<Job> job);
  void DropFrozenGuests();

  uv_loop_t* loop_;
  const NodeConfig& config_;
  ControlServer& control_;
  PeerResolver resolve_;
  PictureSource picture_;
  std::string init_path_;
  std::string preload_path_;
  balance::PrecedenceRules precedence_;  // [node] group and long_job_s
  // The groups of the jobs' users, for precedence and placement (a cache: Place is const).
  mutable UserGroupCache user_groups_;
  std::map<int, HomeJob> jobs_;  // home jobs, by slot
  std::map<uint64_t, std::shared_ptr<Job>> guests_;
  uint64_t next_guest_ = 0;
  std::shared_ptr<bool> alive_ = std::make_shared<bool>(true);
  FaultPoints faults_;
  MoveCounts move_counts_;
  std::function<void()> on_change_;
  const NodeDirectory* nodes_ = nullptr;
  std::function<size_t(uint64_t, const std::vector<HomeJobLock>&)> park_home_locks_;
  std::function<void(uint64_t)> unpark_home_locks_;
  HomeLockClaims home_lock_claims_;
  std::function<void()> on_arrival_;
  std::function<void(const std::string& node)> on_placed_;
  std::atomic<bool> blocked_{false};
  bool left_ = false;                // mosctl leave, until mosctl join
  bool vacating_ = false;             // Vacate: no home job is offered to the balancer
  bool room_busy_ = false;            // KeepRoom's one freeze or continue at a time
  std::set<int> brought_home_;        // slots of the jobs brought home since mosctl leave
  UvHandle<uv_timer_t> counts_timer_;
  UvHandle<uv_async_t> restored_wakeup_;
  JobWhereabouts whereabouts_;
  UvHandle<uv_check_t> input_sync_;
  std::mutex restored_mutex_;
  std::vector<Restored> restored_;
  std::map<int, PlannedCheckpoints> checkpoint_plans_;
  UvHandle<uv_timer_t> checkpoint_timer_;
  HomeGrace home_grace_{config_.recovery.home_grace};
  std::map<uint64_t, std::shared_ptr<FrozenGuest>> frozen_guests_;
};

}  // namespace homeward
