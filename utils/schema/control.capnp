# The control protocol: the user commands talk to their node's mosnoded over a local
# unix socket, one framed ControlRequest answered by one framed ControlReply.
@0xd3a1f0c0b4e2a901;

using Cxx = import "/capnp/c++.capnp";
$Cxx.namespace("homeward::schema");

const controlVersion :UInt16 = 8;
# 2: migrateJob's verbs are a union (moveTo, home, freeze, continue, checkpoint), so no
#    node name is taken for a verb; a job's state is an enum.
# 3: a job's input is a stream with offsets (jobInputAt, jobInputEndAt, jobInputWritten,
#    jobInputResume), so that it survives moves; jobInput, jobInputEnd and jobInputTaken
#    are no longer sent.
# 4: restarts from checkpoints (restartJob) and daemon restarts (resumeJob).
# 5: mosrun numbers its signals (jobSignalNumbered) and keeps each until the job's node
#    answers jobSignalDelivered, so that a signal read but not delivered is not lost.
# 6: a job's node that moved it on ends its relay with movedOn, after the output the job
#    left there, instead of migrated; the move's figures reach the home with the new
#    node's attachGuest (moved), so that the move is answered at the arrival.
# 7: a move's target answers startGuest (done, or why not) before anything is frozen,
#    and the job's memory then comes to its page server while the source dumps
#    (migrate/page_relay.h), before the migration stream.
# 8: mosctl reload (adminRequest reload; adminReport reloaded and cluster).

struct ControlRequest {
  version @0 :UInt16;
  # The sender's controlVersion; a daemon answers a version it does not speak with an error
  # that names the client and both versions ("mosmigrate is older than this daemon: ...").

  union {
    status @1 :Void;
    # Who is this node: name, address, version, uptime.
    listNodes @2 :Void;
    # The cluster as this node sees it (mosmon).
    startJob @3 :JobSpec;
    # mosrun: start a job whose home is this node. The connection then becomes the job's
    # relay: the daemon answers jobStarted, then jobOutput messages and one jobExited;
    # mosrun sends jobInput, jobInputEnd and jobSignal.
    jobInput @4 :Data;
    # Bytes for the job's stdin.
    jobInputEnd @5 :Void;
    # mosrun's stdin reached its end: the job's stdin is closed.
    jobSignal @6 :Int32;
    # Deliver this signal to the job (its main process), wherever it runs.
    listJobs @7 :Void;
    # mosps: the jobs whose home is this node, and the guests running here.
    startGuest @8 :GuestSpec;
    # From a home's daemon over an authenticated peer connection only: run a job of that
    # home here. The connection then relays as for startJob.
    homeMount @9 :HomeMountRequest;
    migrateJob @10 :MigrateRequest;
    # mosmigrate: move a job of this home (by its home pid) to another node. On a guest's
    # relay, from its home: move that guest on (answered on the relay: migrated or error).
    attachGuest @11 :AttachGuest;
    # From the node a job was moved on to, over a peer connection that becomes its relay.
    admin @12 :AdminRequest;
    # mosctl block, unblock, expel, bring (root only): answered by one adminReport once
    # every move it started has ended.
    jobInputAt @13 :InputChunk;
    # Bytes for the job's stdin at their offset in the stream of its input: a node takes
    # only the bytes it has not had, so bytes resent after a move are never doubled.
    jobInputEndAt @14 :UInt64;
    # mosrun's stdin ended after this many bytes: the job's stdin closes once it has them.
    restartJob @15 :RestartSpec;
    # mosrun -R: restart a job of the caller from the newest good checkpoint in a directory
    # (mosrun -C). The connection then becomes the job's relay, as for startJob.
    resumeJob @16 :ResumeJob;
    # mosrun, after its daemon was restarted: takes its job (by mosrun's own pid, the home
    # pid) back from the new daemon. The connection becomes the job's relay again. On a
    # guest's relay, from its home: how much of the job's output the home has had from
    # this node (see attachGuest's resumed).
    # Mount (up) or unmount /mosix/home/<name>: what membership does for each peer, by
    # hand (debugging, tests).
    jobSignalNumbered @17 :NumberedSignal;
    # mosrun: deliver this signal to the job, wherever it runs, and say so (the job's node
    # answers jobSignalDelivered with its number once kill() succeeded there). mosrun
    # keeps it until then and sends it again (after a reconnect, a move, or a second
    # without an answer); the job's init takes each number of a mosrun once only.
  }
}

struct ControlReply {
  union {
    error @0 :ControlError;
    status @1 :NodeStatus;
    nodes @2 :NodeList;
    jobStarted @3 :JobStarted;
    jobOutput @4 :JobOutput;
    jobExited @5 :JobExit;
    jobs @6 :JobList;
    done @7 :Void;
    migrated @8 :Migrated;
    adminReport @9 :AdminReport;
    jobInputTaken @10 :UInt32;
    # From the job's node: this many more bytes of jobInput have left the relay (written
    # to the job's stdin, or dropped because the job closed it). mosrun keeps at most
    # kInputWindow bytes of input unacknowledged, so no daemon on the way holds more
    # than that, and signals never queue behind a flood of input.
    jobInputWritten @11 :UInt64;
    # From the job's node: the job's stdin has every byte of input before this offset
    # (written to the pipe). mosrun keeps the bytes from there on, at most inputWindow.
    jobInputResume @12 :InputResume;
    checkpointed @13 :Checkpointed;
    # From the node a job away runs on, on the job's relay: how the checkpoint its home
    # asked for (migrateJob with checkpointAway) went.
    checkpointAsked @14 :Void;
    # From the node a job away runs on: the job asked for a checkpoint (mosrun -S).
    jobSignalDelivered @15 :UInt32;
    # From the job's node: the signal of this number (jobSignalNumbered) reached the job.
    # From the job's node, once the job arrived there (restored after a move, or
    # continued): its input goes on from `offset`; mosrun sends again what it holds from
    # there, and its end of input unless `ended`.
    movedOn @16 :Text;
    # From the node a job away ran on, once it moved the job on to the node named: the
    # last of the output the job left there has been sent; the relay closes next. (The
    # move's figures come with the new node's attachGuest.)
  }
}

struct Checkpointed {
  path @0 :Text;
  # The checkpoint written, or empty when it failed.
  error @1 :Text;
  inputPlaced @2 :Bool;
  inputOffset @3 :UInt64;
  # Where the job stood in its input at the checkpoint (when placed): its home's input log
  # needs nothing before it any more.
}

struct NumberedSignal {
  number @0 :UInt32;
  # 1 for a mosrun's first signal, one more for each after it.
  signal @1 :Int32;
}

struct ResumeJob {
  stdoutOffset @0 :UInt64;
  stderrOffset @1 :UInt64;
  # How many bytes of the job's stdout and stderr mosrun has: the daemon resends from there.
}

struct InputChunk {
  offset @0 :UInt64;
  data @1 :Data;
}

struct InputResume {
  offset @0 :UInt64;
  ended @1 :Bool;
  # The job's node has the end of input too.
}

const inputWindow :UInt32 = 1048576;
# The most jobInput bytes a mosrun may have sent and not yet seen jobInputTaken for.

struct ControlError {
  kind @0 :Text;
  # The ErrorKind's name: "invalid input", "not found", ...
  message @1 :Text;
}

struct NodeStatus {
  name @0 :Text;
  address @1 :Text;
  version @2 :Text;
  uptimeMs @3 :UInt64;
  gossipPort @4 :UInt16;
  peerPort @5 :UInt16;
  pid @6 :Int32;
}

struct NodeList {
  nodes @0 :List(NodeInfo);
}

struct NodeInfo {
  name @0 :Text;
  address @1 :Text;
  alive @2 :Bool;
  # What gossip says of the node (noded/gossip/membership.h): the local node is listed too.
  state @3 :Text;            # "alive", "suspect" or "dead"
  isSelf @4 :Bool;
  gossipPort @5 :UInt16;
  peerPort @6 :UInt16;
  cores @7 :UInt16;
  speed @8 :Float32;
  load @9 :Float32;
  homewardLoad @10 :Float32;
  memFreeMb @11 :UInt32;
  memTotalMb @12 :UInt32;
  swapFreeMb @13 :UInt32;
  swapTotalMb @14 :UInt32;
  jobsAway @15 :UInt32;
  guestsHere @16 :UInt32;
  ageMs @17 :UInt64;
  incarnation @18 :UInt64;
  blocked @19 :Bool;
  # The node accepts no guests (mosctl block).
  cluster @20 :Text;         # the node's cluster: this node's own, or a partner's
  clockKnown @21 :Bool;
  clockOffsetMs @22 :Int64;
  bootTimeS @23 :UInt64;     # when the node's machine booted (epoch seconds); 0: unknown
  users @24 :UInt16;         # users logged in there
  group @25 :Text;           # its sub-cluster ([node] group); empty: none
  longJobAfterS @26 :UInt32; # a node for short jobs ([node] long_job_s); 0: not
  # How far the node's clock is ahead of this node's (negative: behind), measured from
  # the stamp of its last gossip datagram (transit included); clockKnown false when this
  # node has heard nothing from it (itself included).
}

struct JobSpec {
  argv @0 :List(Text);
  env @1 :List(Text);
  cwd @2 :Text;
  # The caller's working directory, as a path of the home's tree.
  where @3 :Text;
  # The node to start on; empty for this (the home) node.
  keepHome @4 :Bool;
  # Never move the job away from home (mosrun -h).
  placeBest @5 :Bool;
  # Start on the node where the job would get the most CPU now (mosrun -b).
  minFreeMb @6 :UInt32;
  # Only on nodes with this much free memory, at start and when moved (mosrun -m).
  locked @7 :Bool;
  # Never move the job automatically (mosrun -L); by hand it still moves.
  checkpointDir @8 :Text;
  # Where the job's checkpoints go (mosrun -C, absolute); empty: none.
  checkpointEveryMs @9 :UInt64;
  # Take one every this many milliseconds (mosrun -A); 0: only on demand.
  checkpointKeep @10 :UInt32;
  # Keep the newest this many (mosrun -N); 0: keep all.
  checkpointSignal @11 :Int32;
  # A signal that, delivered to the job's main process, takes a checkpoint (mosrun -S).
  partners @12 :Bool;
  # May be moved automatically to partner clusters' nodes (mosrun -G); by hand
  # (mosmigrate) it moves to one either way, where the partnership allows.
}

struct RestartSpec {
  dir @0 :Text;
  # The job's checkpoint directory (absolute).
  checkpointEveryMs @1 :UInt64;
  checkpointKeep @2 :UInt32;
  # Overrides of what the checkpoint recorded; 0 keeps it.
  where @3 :Text;
  placeBest @4 :Bool;
  # Once restarted at home, move the job to this node (mosrun -R -r NODE), or to the node
  # where it gets the most CPU (-b).
}

struct JobStarted {
  homePid @0 :Int32;
  # The id the user knows the job by: the pid of its mosrun at home.
  where @1 :Text;
  restartedFrom @2 :Text;
  # For a restarted job: which checkpoint it goes on from, and when that was taken.
  terminal @3 :Text;
  # For a restarted job: the descriptors its pseudo-terminal is on ("0,1" or "0,1,2", as
  # HOMEWARD_TERMINAL said when it started), empty when it has pipes: its stdout then
  # carries the terminal stream, and mosrun -R on a terminal relays it as at the start.
}

struct JobOutput {
  fd @0 :UInt8;
  # 1 for stdout, 2 for stderr.
  data @1 :Data;
}

struct JobExit {
  signaled @0 :Bool;
  code @1 :Int32;
  # The exit code, or the terminating signal when signaled.
  message @2 :Text;
  # Why the job could not run, when it never started (code is then 126 or 127).
}

struct JobList {
  jobs @0 :List(JobInfo);
  cluster @1 :Text;
  # The listing node's cluster.
}

struct JobInfo {
  homePid @0 :Int32;
  home @1 :Text;
  where @2 :Text;
  state @3 :JobState;
  migrations @4 :UInt32;
  cmd @5 :Text;
  cpuMs @6 :UInt64;
  uid @7 :UInt32;
  pinned @8 :Text;
  # Why the job may not leave its home, or empty.
  guest @9 :Bool;
  # A guest: a job of another home, running here.
  locked @10 :Bool;
  # Started with mosrun -L: the balancer leaves it where it is.
  homeCluster @11 :Text;
  whereCluster @12 :Text;
  # The clusters of `home` and `where` (a partner cluster's, or the listing node's own).
  partners @13 :Bool;
  # Started with mosrun -G: the balancer may move it to partner clusters.
}

enum JobState {
  # mosps shows each by its name (utils/lib/job_state.h), and so does `mosps --json`.
  starting @0;
  # Away: the home has sent it to its node, which has not taken it yet.
  running @1;
  migrating @2;
  # Being checkpointed, frozen or moved: another such request must wait.
  frozen @3;
  # Frozen to disk at home (mosmigrate PID freeze) until mosmigrate PID continue.
  exiting @4;
}

struct GuestSpec {
  job @0 :JobSpec;
  home @1 :Text;
  # The home node's name: the guest's files are under /mosix/home/<home>.
  identity @2 :JobIdentity;
  pidBase @3 :Int64;
  homeHost @4 :Text;
  homePort @5 :UInt16;
  # Where the home's daemon listens, for a job moved on from one guest node to another.
  startedUnixMs @7 :UInt64;
  # When the job started at its home (wall clock): its age, for the balancer's cost test.
  reattach @6 :Bool;
  # The job comes from a node other than its home: once restored, its new node connects
  # to the home (attachGuest) and that connection becomes the job's relay.
  generation @8 :UInt32;
  # Which run of the job: raised by each restart from a checkpoint (move::Record).
  homeCluster @9 :Text;
  # The home's cluster ([cluster] name); empty from older senders: the sender's, which
  # is then the receiver's.
}

struct AttachGuest {
  homePid @0 :Int32;
  node @1 :Text;
  # The node the job now runs on.
  generation @2 :UInt32;
  # The run of the job this copy belongs to: a copy of an older run is refused.
  resumed @3 :Bool;
  # The job did not move: the daemon of the node it runs on was restarted and took it back.
  # The home answers on the relay with resumeJob (how much of the job's output it has had
  # from that node), as it does from time to time while the job runs there, so that the
  # node resends what was lost and keeps no more than the home lacks.
  moved @4 :Migrated;
  # Not resumed: how the move went, as the node the job left told this one after the
  # handover (where is this node); unset when that node could not tell it.
}

struct JobIdentity {
  uid @0 :UInt32;
  gid @1 :UInt32;
  groups @2 :List(UInt32);
  umask @3 :UInt32;
  limits @4 :List(ResourceLimit);
  homePid @5 :Int32;
  homePpid @6 :Int32;
}

struct ResourceLimit {
  resource @0 :Int32;
  soft @1 :UInt64;
  hard @2 :UInt64;
  # RLIM_INFINITY is all ones.
}

struct HomeMountRequest {
  name @0 :Text;
  address @1 :Text;
  peerPort @2 :UInt16;
  up @3 :Bool;
}

struct MigrateRequest {
  homePid @0 :Int32;
  union {
    moveTo @1 :Text;
    # Move the job to the node of this name (any name: "freeze" is a node here too).
    home @2 :Void;
    # Bring the job back to its home node.
    freeze @3 :Void;
    # Dump the job to disk at home and stop it there.
    continue @4 :Void;
    # Restore a frozen job at home.
    checkpoint @5 :Text;
    # Write the job's images to this directory (absolute, must not exist) and let it run on;
    # empty: add one to the job's checkpoint directory (mosrun -C).
    checkpointAway @6 :CheckpointAway;
    # On a guest's relay, from its home: add a checkpoint to the job's checkpoint directory
    # (a path of the home's tree), written through homefs with the user's rights; answered
    # on the relay with checkpointed.
  }
}

struct CheckpointAway {
  dir @0 :Text;
  keep @1 :UInt32;
  everyMs @2 :UInt64;
  signal @3 :Int32;
}

struct Migrated {
  where @0 :Text;
  frozenMs @1 :UInt64;
  # How long the job was stopped: from the dump's freeze to its restore.
  totalMs @2 :UInt64;
  imageBytes @3 :UInt64;
}

struct AdminRequest {
  action @0 :Action;
  enum Action {
    block @0;
    # Accept no more guests (new ones or moves); the cluster learns it through gossip.
    unblock @1;
    expel @2;
    # Block, then send every guest away: home, or to another node when home cannot take it.
    bring @3;
    # Bring every job of this home that runs elsewhere back home.
    leave @4;
    # Leave the cluster: expel every guest, bring every job home, and keep them home
    # (no moves out, no guests) until join. A job that comes home to no room (more jobs
    # running here than cores) is frozen to disk and continued, one at a time, as room
    # appears.
    join @5;
    # Take part in the cluster again after leave (unblocks too).
    reload @6;
    # Read the node's configuration file again and restart the daemon in place under it,
    # its jobs kept (as after a crash). When the node's cluster changes (its name, key or
    # partners), every guest is sent away and every job brought home first; the reload
    # is refused when one stays.
  }
}

struct AdminReport {
  moves @0 :List(MoveReport);
  # One per job the action tried to move, in the order they ended.
  blocked @1 :Bool;
  # Whether the node accepts no guests after the action.
  left @2 :Bool;
  # Whether the node has left the cluster (mosctl leave) after the action.
  reloaded @3 :Bool;
  # reload: the daemon restarts under the configuration read again (after this report).
  cluster @4 :Text;
  # reload: the cluster the node restarts in.
  problem @5 :Text;
  # reload: why the node was not reloaded (it runs on as it was), or empty.
}

struct MoveReport {
  homePid @0 :Int32;
  home @1 :Text;
  from @2 :Text;
  to @3 :Text;
  error @4 :Text;
  # Empty when the job moved; otherwise why it stays where it was.
}
