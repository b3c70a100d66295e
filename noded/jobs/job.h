// Job: one job whose process tree runs on this node. It owns the job's init (pid 1 of
// the job's namespaces), the daemon's ends of the job's stdio and status pipes, and
// relays them to the job's mosrun over its control stream.
#pragma once

#include <sys/resource.h>
#include <sys/types.h>
#include <uv.h>

#include <chrono>
#include <functional>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "carrier_sockets.h"
#include "child_process.h"
#include "control_server.h"
#include "fd.h"
#include "fd_keeper.h"
#include "image_stream.h"
#include "job_state.h"
#include "job_usage.h"
#include "move_protocol.h"
#include "peer_auth.h"
#include "uv_handle.h"

namespace homeward {

// Who a job runs as, read from the kernel's view of the caller, never from its claims.
struct JobIdentity {
  uid_t uid = 0;
  gid_t gid = 0;
  std::vector<gid_t> groups;
  mode_t umask = 022;
  struct Limit {
    int resource;
    rlim_t soft;
    rlim_t hard;
  };
  std::vector<Limit> limits;
  pid_t home_pid = 0;   // the job's mosrun at home: the id users know the job by
  pid_t home_ppid = 0;  // mosrun's parent, what the job's main process sees as its parent

  // Reads uid, gid, groups, umask, limits and parent of process `pid` from /proc and
  // prlimit. Throws Error(kNotFound) when the process is gone.
  static JobIdentity OfProcess(pid_t pid, uid_t uid, gid_t gid);
};

// A job's standard input where the job stands in it: the offset (in the stream mosrun
// sends) of the first byte the job has not read, the bytes from there that the daemon
// reclaimed from the job's stdin pipe once the job was frozen, and whether mosrun's end of
// input came after them. Carried with a move (or a freeze) to where the job runs next.
struct InputCarry {
  uint64_t offset = 0;
  std::string data;
  bool ended = false;
};

// Output of a guest frozen past its home's grace that its home may not have had: per
// stream (1 stdout, 2 stderr) its offset since the job came to this node (the count its
// home keeps) and the bytes from there on (see kFrozenOutput in job_journal.h).
struct FrozenOutput {
  uint64_t start[3] = {0, 0, 0};
  std::string data[3];
};

// Where a job's checkpoints go and when (mosrun -C, -A, -N, -S); see job_checkpoints.cc.
struct CheckpointPlan {
  std::string dir;       // absolute, the user's; empty: the job has no checkpoint directory
  int64_t every_ms = 0;  // periodic checkpoints; 0: only on demand
  uint32_t keep = 0;     // the newest this many are kept; 0: all
  int signal = 0;        // a signal to the job's main process that asks for one; 0: none

  bool operator==(const CheckpointPlan&) const = default;
};

struct JobLaunch {
  std::vector<std::string> argv;
  std::vector<std::string> env;
  std::string cwd;
  std::string home;        // the home node's name
  std::string home_cluster;  // the home's cluster when it is a partner's; empty: this one
  std::string root = "/";  // the home's tree as this node sees it
  JobIdentity identity;
  int64_t pid_base = 0;  // ids of the job's other processes start here (see preload/)
  bool keep_home = false;
  bool locked = false;          // never moved automatically (mosrun -L)
  uint32_t min_free_mb = 0;     // only on nodes with this much free memory (mosrun -m)
  bool partners = false;        // may be moved automatically to partner clusters (mosrun -G)
  int64_t started_unix_ms = 0;  // when the job started at its home
  bool guest = false;           // a job of another home, running here
  std::string home_host;        // where the home's daemon listens (peer port)
  uint16_t home_port = 0;
  bool reattach = false;      // restored here from a node that is not its home
  std::string init_path;      // mosjob-init
  std::string preload_path;   // libmosix_preload.so, or empty when not built
  InputCarry input;           // a restored job's input, written to its new pipe first
  CheckpointPlan checkpoint;  // at home only: the job's checkpoints
  uint32_t generation = 0;    // raised by each restart from a checkpoint (move::Record)
  // A guest: how this node connects to its home, for carrying its loopback connections
  // there (the node's own key, or the partnership's; never journaled or sent).
  std::optional<PeerCredentials> home_credentials;
  // A guest: this node's daemon ports (peer, gossip), never a target of its traffic sent
  // from here (the node's own, never journaled or sent).
  std::vector<uint16_t> daemon_ports;
};

// The wall clock in milliseconds since the epoch: a job's start, as every node reads it.
int64_t WallClockMs();

// The daemon's ends of a job's pipes.
struct DaemonEnds {
  Fd stdin_write;
  Fd stdin_read;  // the daemon's copy of the job's end: what the job has not read is
                  // reclaimed from it when the job moves
  Fd stdout_read;
  Fd stderr_read;
  Fd status_read;
  // What the daemon took from the output pipes (and will put into the input pipe), at
  // its offset in each stream (see "Daemon restarts"): memfds, made by Attach when not
  // given (a daemon restarted takes them back from the job's keeper).
  Fd stdin_spool{};
  Fd stdout_spool{};
  Fd stderr_spool{};
  Fd status_spool{};
  // A guest restored here: its carrier's sockets, made in its namespace before it ran.
  CarrierSockets carrier{};
};

// A command line as mosps shows it: the arguments joined by spaces.
std::string CommandOf(const std::vector<std::string>& argv);

// An empty spool for one of a job's streams (a memfd named after it).
Fd MakeSpool(const char* stream);
// A spool holding `data` at offset `start` (a hole before it).
Fd SpoolOf(const char* stream, uint64_t start, const std::string& data);
// Kills process `pid` if it is still the one that started at `start_time`.
void KillIfSame(pid_t pid, uint64_t start_time);
// The daemon's ends and spools in the order a keeper holds them (stdin's write end
// first, the one a keeper is told to drop at the end of input), and back.
std::vector<int> KeptFds(const DaemonEnds& ends);
DaemonEnds EndsFromKept(std::vector<Fd> kept);
constexpr size_t kKeptFds = 9;
constexpr size_t kKeptStdinWrite = 0;

class LoopbackCarrier;

class Job : public std::enable_shared_from_this<Job> {
 public:
  using Finished = std::function<void(Job&)>;
  Job(uv_loop_t* loop, JobLaunch launch, ControlStream relay, Finished finished);
  Job(const Job&) = delete;
  Job& operator=(const Job&) = delete;
  ~Job();

  // Starts the job's init and relaying. Throws Error when the job cannot start.
  void Start();
  // Set before Start: the job survives its daemon's death (see "Daemon restarts" in
  // docs/ARCHITECTURE.md). A keeper process holds the daemon's ends of its pipes, and
  // `write` journals the job (with its keeper, then its init) before each is relied on;
  // `remove` forgets it once the job ends or leaves this node.
  using JournalWrite = std::function<void(pid_t init_pid, uint64_t init_start, pid_t keeper_pid,
                                          uint64_t keeper_start, const move::Departure& departure)>;
  void KeepAcrossRestarts(JournalWrite write, std::function<void()> remove);
  // A restarted daemon takes back a job its journal names: its init (not our child any
  // more, watched by pidfd, `init_start` checked), the keeper and what it holds. The job
  // waits, its output unread, until its mosrun presents itself again (Reattach).
  // `mosrun_pidfd` says when that mosrun is gone: the job is then killed, as a hangup.
  void Recover(pid_t init_pid, uint64_t init_start, FdKeeper keeper, std::vector<Fd> kept,
               Fd mosrun_pidfd, JournalWrite write, std::function<void()> remove);
  // The job's mosrun, back: `relay` is its new connection, which has every byte of
  // stdout and stderr before the offsets it gives. Throws Error(kInvalidInput) for
  // offsets the daemon cannot resend from.
  void Reattach(ControlStream relay, uint64_t stdout_offset, uint64_t stderr_offset);
  // Throws Error(kInvalidInput) when Reattach would refuse these offsets.
  void CheckResume(uint64_t stdout_offset, uint64_t stderr_offset) const;
  // A guest's home has had this much of the job's output from this node: a job taken back
  // after a restart resends from there (on its relay, set before with set_relay); the
  // spools of a running one keep only what comes after.
  void OutputHad(uint64_t stdout_offset, uint64_t stderr_offset);
  void set_relay(ControlStream relay) { relay_ = std::move(relay); }
  // A guest whose home's relay closed: it runs on, its output waiting in its pipes and
  // spools, until its home takes it back (Reattach through OutputHad) or gives it up
  // (GiveUp: killed as when its relay closed).
  void Detach();
  void GiveUp();
  // How much of the job's stdout (1) or stderr (2) mosrun has been sent, since the job
  // started: what this node sent, after what mosrun had when the job arrived here.
  uint64_t output_total(int fd) const;
  void set_output_base(uint64_t stdout_base, uint64_t stderr_base);
  uint64_t output_base(int fd) const { return output_base_[fd == 2 ? 2 : 1]; }
  // A home job that came back while its old node still sent what it owed mosrun: where its
  // output here starts is not known yet (journaled `base pending`). set_output_base
  // settles it; after a restart, mosrun's offsets do (Reattach), as none of this node's
  // output went to mosrun before.
  void set_output_base_pending();
  bool output_base_pending() const { return output_base_pending_; }
  bool detached() const { return detached_; }
  // The departure side of the move protocol (move::Departure). A dump of `kind` starts
  // (a move to `target`, a freeze, a checkpoint): the job's input is held from here on.
  // `journaled`: the journal names the departure, so that a daemon killed meanwhile
  // leaves a job the next one continues (SIGCONT) if it is still here. Throws Error when
  // a dump is under way.
  void Depart(move::DumpKind kind, const std::string& target = {}, bool journaled = false);
  // The departure as it ended: `departure` is the job's, carried through the steps that
  // ran off the loop (MoveOut::departure), or Failed or Done. A job that stays has its
  // input flow on; one that left (abandoned first) is gone.
  void Departed(const move::Departure& departure);
  // The dump ended and the job stays (`why` empty: a checkpoint was written).
  move::Stay Stay(const std::string& why = {});
  const move::Departure& departure() const { return departure_; }
  // A freeze's images are safe on disk: the job, abandoned (AbandonAfterMove), has left.
  void LeftFrozen();
  // Writes the job's journal entry with a departure's state from any thread (a move's
  // steps on libuv's pool), or nothing when the job is not journaled.
  std::function<void(const move::Departure&)> DepartureJournal() const;
  // A job taken back after a restart that cut its move's handover (move::Departure::
  // Reloaded): it stays stopped, its input held, until its target takes it over or the
  // wait is over (TickDeparture: the returned Stay says whether to continue it).
  void AwaitTakeOver(move::Departure departure);
  move::Stay TickDeparture(int64_t now_ms);
  // Takes over a job CRIU restored here: its init (our child) and our pipes' ends.
  void Adopt(ChildProcess init, DaemonEnds ends);
  // The job has moved on: relays the output it left in our pipes, then kills the frozen
  // copy here without reporting an end to mosrun.
  void AbandonAfterMove();
  // A guest being frozen past its home's grace (stopped, dumped): takes what its pipes
  // hold into its spools and relays it, as AbandonAfterMove would, and returns what its
  // home has not acknowledged (its spools from the home's last word on). Throws
  // Error(kFailed) when that is more than `limit` bytes.
  FrozenOutput PendingOutput(uint64_t limit);
  // A guest continued after a freeze, its spools (given to Adopt) holding its pending
  // output up to their end: the home may ask for any of it again from `start` on.
  void KeepOutputFrom(const FrozenOutput& output);
  // Called once the job's home took it back after a restart (Reattach).
  void OnReattached(std::function<void()> callback) { on_reattached_ = std::move(callback); }
  // The inodes of the job's stdin, stdout, stderr and status pipes, as CRIU names them.
  const std::vector<uint64_t>& pipe_inodes() const { return pipe_inodes_; }
  // The same pipes with what each carries, as the migration stream names them.
  std::vector<migrate::PipeRole> pipe_roles() const;
  ControlStream& relay() { return relay_; }
  // Whether the job's exit reached a mosrun (its relay was open when it ended): false for
  // a job lost with its mosrun, which a later `mosrun -R` may restart.
  bool exit_delivered() const { return exit_delivered_; }
  // Where the job's input stands while it is held: what reclaiming it needs.
  struct InputPlace {
    int reader = -1;       // the daemon's copy of the read end of the job's stdin pipe
    uint64_t written = 0;  // the offset just past the last byte written to the pipe
    bool ended = false;    // the pipe carries the end of input after them
  };
  InputPlace input_place() const;
  // Copies out of the job's stdin pipe what the job has not read, once the job is frozen
  // (the bytes stay in the pipe); safe on any thread. Throws Error when the pipe cannot
  // be read.
  static InputCarry ReclaimInput(const InputPlace& place);
  // Kept for the move's failure path: the reclaimed bytes never left the pipe, so nothing
  // is put back.
  static void ReturnInput(const InputPlace& place, const InputCarry& carry);
  uint32_t migrations() const { return migrations_; }
  void set_migrations(uint32_t count) { migrations_ = count; }
  // From mosrun: stdin bytes at `offset` in its input stream (kNextInput: right after
  // what came before), the end of stdin after `offset` bytes, a signal for the job.
  // Bytes the job's node already has are dropped, and so are bytes after a gap (they come
  // again when mosrun resends from where the job's input resumes).
  static constexpr uint64_t kNextInput = ~uint64_t{0};
  void Input(uint64_t offset, const void* data, size_t size);
  void InputEnd(uint64_t offset);
  void Signal(int signo);
  // mosrun's signal numbered `number` (jobSignalNumbered): true once it is delivered (the
  // init has it queued; see job_signals.h, the init takes each number once). False while
  // the job cannot take it here (being dumped, or not running): it is not acknowledged,
  // and mosrun sends it again, to wherever the job is then.
  bool SignalNumbered(int signo, uint32_t number);
  // mosrun is gone: without its deputy at home, the job is killed.
  void RelayLost();
  // Holds the job's output back (not read from its pipes) while its home waits for the
  // output its old node relays, so that mosrun gets it in order.
  void HoldOutput(bool hold);
  bool output_held() const { return output_held_; }
  // Called too whenever mosrun has drained what the relay queued: the old node's relay,
  // which sends what the job left in its pipes there, reads on (job_arrivals.cc).
  void AlsoWhenRelayDrains(std::function<void()> callback) {
    relay_drained_ = std::move(callback);
  }
  // Kills the job now (daemon shutdown).
  void Kill();
  // The job asked for a checkpoint (mosrun -S: its init said so on the status pipe).
  void OnCheckpointRequest(std::function<void()> callback) {
    on_checkpoint_request_ = std::move(callback);
  }

  pid_t home_pid() const { return launch_.identity.home_pid; }
  uid_t uid() const { return launch_.identity.uid; }
  pid_t init_pid() const { return init_ ? init_->pid() : foreign_init_; }
  uint64_t init_start() const { return init_start_; }
  const FdKeeper& keeper() const { return keeper_; }
  std::string command() const;
  JobState state() const {
    return finished_              ? JobState::EXITING
           : departure_.leaving() ? JobState::MIGRATING
                                  : JobState::RUNNING;
  }
  uint64_t cpu_ms() const;
  // The job's live processes, read from /proc (none once it has ended).
  std::vector<pid_t> Pids() const;
  // Why the job may not leave its home (mosrun -h, a listening socket or another TCP or
  // UDP socket in the node's network, System V shared memory), or empty when it may.
  // Reads /proc, so it is asked for, never cached. `lock_holders`: the processes of this
  // node that hold a file lock (LockHolders), read once for every job a caller asks about.
  std::string PinnedReason() const { return PinnedReason(Pids(), LockHolders()); }
  std::string PinnedReason(const std::vector<pid_t>& pids,
                           const std::set<pid_t>& lock_holders) const;
  // The processes that hold a file lock on this node (/proc/locks; waiters are not).
  static std::set<pid_t> LockHolders();
  bool keep_home() const { return launch_.keep_home; }
  // Samples what the job's processes `pids` use (the balancer does, once per round).
  void SampleUsage(int64_t now_ms, const std::vector<pid_t>& pids);
  const UsageMeter& usage() const { return usage_; }
  // When the job started or arrived on this node (steady clock, ms).
  int64_t arrived_ms() const { return arrived_ms_; }
  const JobLaunch& launch() const { return launch_; }

 private:
  struct Stream;
  void KeepEnds(DaemonEnds& ends);
  // While a job is being dumped its input is held in the daemon (nothing more is written
  // to its stdin); a move that fails writes it on (job_input.cc).
  void set_migrating(bool migrating);
  // Writes the job's journal entry with its departure's state.
  void JournalDeparture();
  void Attach(DaemonEnds ends);
  // A guest's loopback connections go home from here on (loopback_carrier.h).
  void StartCarrier(int net_ns, CarrierSockets sockets = {});
  // Takes what the stream's pipe has into its spool, and sends on what the spool has
  // that mosrun has not (all of it, paused or not, when `force`).
  void Pump(Stream& stream, bool force = false);
  void Deliver(Stream& stream, bool force);
  void UpdatePoll(Stream& stream);
  bool Stopped(const Stream& stream) const;
  void WatchInit();
  void WatchMosrun(Fd pidfd);
  // The job is over here (ended, killed, moved on): its keeper and journal go.
  void Forget();
  void KillInit();
  void PauseOutput(bool pause);
  // Output read on once mosrun has drained the relay's queue.
  void WatchRelayDrain();
  void UpdateOutputReading();
  void SendOutput(int fd, const char* data, size_t size);
  void OnInitExit();
  void MaybeFinish();
  void SendExit();
  // Writes what input the job's stdin takes now; acknowledges it to mosrun.
  void FlushInput();
  void CloseInput();
  uint64_t input_received() const { return input_written_ + input_queue_.size(); }

  uv_loop_t* loop_;
  JobLaunch launch_;
  ControlStream relay_;
  Finished on_finished_;
  std::optional<ChildProcess> init_;
  pid_t foreign_init_ = -1;  // the init a daemon before us started (Recover)
  std::unique_ptr<LoopbackCarrier> carrier_;  // a guest's, while it runs here
  Fd pidfd_;
  UvHandle<uv_poll_t> exit_watch_;
  // The job's standard input, a stream of bytes with offsets (see "Standard input across
  // moves" in docs/ARCHITECTURE.md): written by the daemon, non-blocking, with its own
  // queue so that nothing is in flight inside libuv when a move reclaims it.
  Fd stdin_write_;
  Fd stdin_read_;
  Fd stdin_spool_;                  // its file position is input_written_, moved with each splice
  UvHandle<uv_poll_t> stdin_poll_;  // declared after the fd: closed before it
  std::string input_queue_;         // the bytes from input_written_ on, not yet written
  uint64_t input_written_ = 0;
  bool input_end_ = false;     // mosrun's end of input has come, after the queue
  bool input_held_ = false;    // a move is dumping the job: nothing more is written
  bool input_closed_ = false;  // our write end is closed: the job has its end of input
  bool input_polling_ = false;
  std::unique_ptr<Stream> stdout_;
  std::unique_ptr<Stream> stderr_;
  std::unique_ptr<Stream> status_;
  std::string status_text_;
  uint64_t status_consumed_ = 0;  // the status stream's offset of status_text_'s start
  uint64_t status_replayed_ = 0;  // the status read again after a restart ends here
  std::optional<ExitStatus> init_status_;
  bool input_paused_ = false;
  bool output_paused_ = false;
  bool output_held_ = false;
  std::function<void()> relay_drained_;
  bool finished_ = false;
  bool exit_delivered_ = false;
  move::Departure departure_;
  uint32_t migrations_ = 0;
  std::vector<uint64_t> pipe_inodes_;
  UsageMeter usage_;
  int64_t arrived_ms_ = 0;
  std::function<void()> on_checkpoint_request_;
  std::function<void()> on_reattached_;
  FdKeeper keeper_;
  JournalWrite journal_write_;
  std::function<void()> journal_remove_;
  bool detached_ = false;  // taken back after a restart; its mosrun has not come back yet
  uint64_t output_base_[3] = {0, 0, 0};
  bool output_base_pending_ = false;
  uint64_t init_start_ = 0;
  Fd mosrun_pidfd_;
  UvHandle<uv_poll_t> mosrun_watch_;
};

}  // namespace homeward
