// Jobs that outlive their daemon: journaling a job and its keeper before it runs, taking
// jobs back when a daemon starts after another was killed, and a mosrun reattaching to
// its job. See "Daemon restarts" in docs/ARCHITECTURE.md.
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
#include "peer_auth.h"
#include "uv_error.h"
#include "uv_work.h"

namespace homeward {

namespace {

int PidfdOpen(pid_t pid) { return static_cast<int>(::syscall(SYS_pidfd_open, pid, 0)); }

// The job's init, found by the write end of its status pipe, which only the init holds (its
// program closes it): for a journal entry written before the init was spawned, whose
// daemon died before it could journal the init. The oldest such process, should the init
// be forking its program right now. Nothing when there is none.
pid_t FindStatusWriter(uint64_t status_inode, pid_t except) {
  std::string wanted = fmt::format("pipe:[{}]", status_inode);
  pid_t found = 0;
  uint64_t found_start = 0;
  DIR* proc = ::opendir("/proc");
  if (!proc) return 0;
  while (dirent* process = ::readdir(proc)) {
    char* end = nullptr;
    long pid = strtol(process->d_name, &end, 10);
    if (*end || pid <= 0 || pid == except) continue;
    std::string fds = fmt::format("/proc/{}/fd", pid);
    DIR* dir = ::opendir(fds.c_str());
    if (!dir) continue;
    bool writes = false;
    while (dirent* fd = ::readdir(dir)) {
      if (fd->d_name[0] == '.') continue;
      char target[64];
      ssize_t n = ::readlinkat(::dirfd(dir), fd->d_name, target, sizeof target - 1);
      if (n <= 0 || std::string_view(target, static_cast<size_t>(n)) != wanted) continue;
      // A write end: its flags (octal) say O_WRONLY.
      std::ifstream info(fmt::format("/proc/{}/fdinfo/{}", pid, fd->d_name));
      std::string key;
      std::string flags;
      while (info >> key >> flags) {
        if (key == "flags:") break;
      }
      if ((std::strtoul(flags.c_str(), nullptr, 8) & O_ACCMODE) == O_WRONLY) {
        writes = true;
        break;
      }
    }
    ::closedir(dir);
    if (!writes) continue;
    uint64_t start = 0;
    try {
      start = ProcessStartTime(static_cast<pid_t>(pid));
    } catch (const Error&) {
      continue;  // gone meanwhile
    }
    if (start != 0 && (found == 0 || start < found_start)) {
      found = static_cast<pid_t>(pid);
      found_start = start;
    }
  }
  ::closedir(proc);
  return found;
}

// Whether the status pipe a keeper holds (its read end, and its spool) has anything: an
// init writes on it only once it runs, and its last line as it ends.
bool StatusWritten(const std::vector<Fd>& kept) {
  if (kept.size() != kKeptFds) return false;
  int pending = 0;
  if (kept[4].valid() && ::ioctl(kept[4].get(), FIONREAD, &pending) == 0 && pending > 0) {
    return true;
  }
  struct stat st;
  return kept[8].valid() && ::fstat(kept[8].get(), &st) == 0 && st.st_size > 0;
}

// Image directories (`<images>/<what>-<daemon pid>-<n>`, and criu's `.work` beside them)
// that a daemon killed during a move, a restore or a checkpoint left: nothing reads them
// any more (the job went on where it was, and a restore cut short was undone above).
void RemoveStaleImages(const std::string& images) {
  DIR* dir = ::opendir(images.c_str());
  if (!dir) return;
  std::vector<std::string> stale;
  std::string mine = fmt::format("-{}-", ::getpid());
  while (dirent* entry = ::readdir(dir)) {
    std::string name = entry->d_name;
    if (name[0] != '.' && name.find(mine) == std::string::npos) stale.push_back(name);
  }
  ::closedir(dir);
  for (const auto& name : stale) {
    try {
      migrate::RemoveImageDir(images + "/" + name);
      spdlog::info("removed {}/{}, left by a daemon before", images, name);
    } catch (const Error& e) {
      spdlog::warn("cannot remove {}/{}, left by a daemon before: {}", images, name, e.what());
    }
  }
}

}  // namespace

void KillIfSame(pid_t pid, uint64_t start_time) {
  if (pid <= 0 || start_time == 0) return;
  Fd pidfd = Fd::Adopt(PidfdOpen(pid));
  if (!pidfd.valid() || ProcessStartTime(pid) != start_time) return;
  ::syscall(SYS_pidfd_send_signal, pidfd.get(), SIGKILL, nullptr, 0);
}

Fd MakeSpool(const char* stream) {
  return Fd::Adopt(HW_SYSCALL(::memfd_create(fmt::format("homeward-{}", stream).c_str(),
                                             MFD_CLOEXEC),
                              "make the job's {} spool", stream));
}

std::vector<int> KeptFds(const DaemonEnds& ends) {
  return {ends.stdin_write.get(),  ends.stdin_read.get(),   ends.stdout_read.get(),
          ends.stderr_read.get(),  ends.status_read.get(),  ends.stdin_spool.get(),
          ends.stdout_spool.get(), ends.stderr_spool.get(), ends.status_spool.get()};
}

DaemonEnds EndsFromKept(std::vector<Fd> kept) {
  if (kept.size() != kKeptFds) Fail(ErrorKind::kFailed, "a keeper holds {} fds", kept.size());
  return DaemonEnds{std::move(kept[0]), std::move(kept[1]), std::move(kept[2]),
                    std::move(kept[3]), std::move(kept[4]), std::move(kept[5]),
                    std::move(kept[6]), std::move(kept[7]), std::move(kept[8])};
}

void Job::JournalDeparture() {
  if (!journal_write_ || !keeper_.running() || init_pid() <= 0) return;  // journaled only
  try {
    journal_write_(init_pid(), init_start_, keeper_.pid(), keeper_.start_time(), departure_);
  } catch (const Error& e) {
    spdlog::warn("job {}: cannot journal its move: {}", home_pid(), e.what());
  }
}

void Job::KeepAcrossRestarts(JournalWrite write, std::function<void()> remove) {
  journal_write_ = std::move(write);
  journal_remove_ = std::move(remove);
}

void Job::Recover(pid_t init_pid, uint64_t init_start, FdKeeper keeper, std::vector<Fd> kept,
                  Fd mosrun_pidfd, JournalWrite write, std::function<void()> remove) {
  if (write || remove) KeepAcrossRestarts(std::move(write), std::move(remove));
  keeper_ = std::move(keeper);
  init_start_ = init_start;
  detached_ = true;
  Fd pidfd = Fd::Adopt(PidfdOpen(init_pid));
  if (pidfd.valid() && ProcessStartTime(init_pid) == init_start) {
    foreign_init_ = init_pid;
    pidfd_ = std::move(pidfd);
  } else {
    // It ended while no daemon ran: the status pipe says how.
    init_status_ = ExitStatus{0, SIGKILL, true};
  }
  DaemonEnds ends = EndsFromKept(std::move(kept));
  for (const Fd* fd : {&ends.stdin_read, &ends.stdout_read, &ends.stderr_read, &ends.status_read,
                       &ends.stdin_spool, &ends.stdout_spool, &ends.stderr_spool,
                       &ends.status_spool}) {
    if (!fd->valid()) Fail(ErrorKind::kFailed, "the keeper lost one of the job's pipes");
  }
  Attach(std::move(ends));
  // The spool's file position moves with every splice into the pipe: it is the offset
  // of the next byte of input, whenever the daemon before us was killed.
  input_written_ = static_cast<uint64_t>(
      HW_SYSCALL(::lseek(stdin_spool_.get(), 0, SEEK_CUR), "job input position"));
  // What mosrun has of the output is known when it comes back; until then nothing of
  // what the spools hold counts as trimmed.
  for (Stream* stream : {stdout_.get(), stderr_.get()}) stream->trimmed = 0;
  if (mosrun_pidfd.valid()) WatchMosrun(std::move(mosrun_pidfd));
  spdlog::info("job {} taken back after a restart: {} (init pid {}{}); input at byte {}{}",
               home_pid(), command(), init_pid, init_status_ ? ", ended" : "", input_written_,
               input_closed_ ? ", at its end" : "");
}

void Job::WatchMosrun(Fd pidfd) {
  mosrun_pidfd_ = std::move(pidfd);
  CheckUv(uv_poll_init(loop_, mosrun_watch_.get(), mosrun_pidfd_.get()), "watch mosrun");
  mosrun_watch_.get()->data = this;
  CheckUv(uv_poll_start(mosrun_watch_.get(), UV_READABLE,
                        [](uv_poll_t* handle, int, int) {
                          GuardedCall("mosrun gone", [handle] {
                            auto* job = static_cast<Job*>(handle->data);
                            job->mosrun_watch_.Close();
                            job->mosrun_pidfd_.Reset();
                            if (!job->detached_) return;
                            // Nobody is left to hear of the job: it ends as on a hangup.
                            job->detached_ = false;
                            job->RelayLost();
                            for (auto* stream :
                                 {job->stdout_.get(), job->stderr_.get(), job->status_.get()}) {
                              if (stream) job->Pump(*stream);
                            }
                          });
                        }),
          "watch mosrun");
}

void Job::CheckResume(uint64_t stdout_offset, uint64_t stderr_offset) const {
  if (!detached_) Fail(ErrorKind::kInvalidInput, "job {} has its mosrun already", home_pid());
  for (auto [stream, offset] : {std::pair{stdout_.get(), stdout_offset},
                                std::pair{stderr_.get(), stderr_offset}}) {
    uint64_t base = launch_.guest ? 0 : output_base_[stream->fd];
    // Nothing of this node's output went to mosrun yet: its offset is the base.
    if (output_base_pending_ && !launch_.guest && stream->trimmed == 0) continue;
    if (offset < base + stream->trimmed || offset > base + stream->taken) {
      Fail(ErrorKind::kInvalidInput,
           "job {}: mosrun has {} bytes of its fd {}; this node can resend from {} to {}",
           home_pid(), offset, stream->fd, base + stream->trimmed, base + stream->taken);
    }
  }
}

void Job::Reattach(ControlStream relay, uint64_t stdout_offset, uint64_t stderr_offset) {
  CheckResume(stdout_offset, stderr_offset);
  if (output_base_pending_ && !launch_.guest) {
    spdlog::info("job {}: its output here starts after mosrun's bytes {} and {}", home_pid(),
                 stdout_offset, stderr_offset);
    set_output_base(stdout_offset, stderr_offset);
  }
  // mosrun counts from the job's start; the spools from its arrival on this node.
  if (!launch_.guest) {
    stdout_offset -= output_base_[1];
    stderr_offset -= output_base_[2];
  }
  stdout_->sent = stdout_offset;
  stderr_->sent = stderr_offset;
  relay_ = std::move(relay);
  detached_ = false;
  mosrun_watch_.Close();
  mosrun_pidfd_.Reset();
  WatchRelayDrain();
  // mosrun sends again what it holds of the input from here, and its end unless the job
  // has it.
  capnp::MallocMessageBuilder message;
  auto resume = message.initRoot<schema::ControlReply>().initJobInputResume();
  resume.setOffset(input_received());
  resume.setEnded(input_end_ || input_closed_);
  relay_.Send(message);
  spdlog::info("job {}: its mosrun is back; output goes on from bytes {} and {}, input from {}",
               home_pid(), stdout_offset, stderr_offset, input_received());
  for (Stream* stream : {stdout_.get(), stderr_.get(), status_.get()}) Pump(*stream);
  MaybeFinish();
  if (on_reattached_) {
    auto reattached = std::move(on_reattached_);
    on_reattached_ = nullptr;
    reattached();
  }
}

void Job::OutputHad(uint64_t stdout_offset, uint64_t stderr_offset) {
  if (detached_) {
    Reattach(relay_, stdout_offset, stderr_offset);
    return;
  }
  for (auto [stream, offset] : {std::pair{stdout_.get(), stdout_offset},
                                std::pair{stderr_.get(), stderr_offset}}) {
    if (!stream) continue;
    uint64_t upto = std::min(offset, stream->sent) & ~uint64_t{4095};
    if (upto > stream->trimmed) {
      ::fallocate(stream->spool.get(), FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
                  static_cast<off_t>(stream->trimmed), static_cast<off_t>(upto - stream->trimmed));
      stream->trimmed = upto;
    }
  }
}

uint64_t Job::output_total(int fd) const {
  const Stream* stream = fd == 1 ? stdout_.get() : fd == 2 ? stderr_.get() : nullptr;
  return output_base_[fd == 2 ? 2 : 1] + (stream ? stream->sent : 0);
}

void Job::set_output_base(uint64_t stdout_base, uint64_t stderr_base) {
  output_base_[1] = stdout_base;
  output_base_[2] = stderr_base;
  output_base_pending_ = false;
  JournalDeparture();  // the journal has the base too
}

void Job::set_output_base_pending() {
  output_base_pending_ = true;
  JournalDeparture();
}

void Job::Detach() {
  if (detached_ || finished_) return;
  detached_ = true;
  relay_ = ControlStream();
  for (Stream* stream : {stdout_.get(), stderr_.get(), status_.get()}) {
    if (stream) UpdatePoll(*stream);
  }
  spdlog::warn("job {}: lost its relay to its home {}; it runs on and waits to be taken back",
               home_pid(), launch_.home);
}

void Job::GiveUp() {
  detached_ = false;
  RelayLost();
  for (Stream* stream : {stdout_.get(), stderr_.get(), status_.get()}) {
    if (stream) Pump(*stream);
  }
  MaybeFinish();
}

void JobRegistry::KeepJob(Job& job, int slot) {
  std::string dir = config_.state_dir + "/jobs";
  JournalEntry entry;
  entry.slot = slot;
  if (!job.launch().guest) entry.mosrun_start = ProcessStartTime(job.home_pid());
  entry.launch = job.launch();
  entry.launch.env.clear();
  std::string name = entry.Name();
  Job* kept = &job;  // the job owns this function: it never outlives the job
  bool die_after_spawn = faults_.Hit(Fault::kKillAfterSpawn);
  job.KeepAcrossRestarts(
      [dir, entry, kept, die_after_spawn](pid_t init_pid, uint64_t init_start, pid_t keeper_pid,
                                          uint64_t keeper_start,
                                          const move::Departure& departure) mutable {
        if (die_after_spawn && entry.init_pid == 0 && entry.keeper_pid != 0 && init_pid > 0) {
          // The init runs, journaled with its keeper only: the daemon dies here.
          DieAtFaultPoint(Fault::kKillAfterSpawn,
                          fmt::format("before journaling job {}'s init (pid {})",
                                      entry.launch.identity.home_pid, init_pid));
        }
        entry.departure = departure.journaled() ? departure.state() : move::Leave::kHere;
        entry.departure_to = departure.journaled() ? departure.target() : "";
        entry.base[1] = kept->output_base(1);
        entry.base[2] = kept->output_base(2);
        entry.base_pending = kept->output_base_pending();
        entry.init_pid = init_pid;
        entry.init_start = init_start;
        entry.keeper_pid = keeper_pid;
        entry.keeper_start = keeper_start;
        JobJournal(dir).Write(entry);
      },
      [dir, name] { JobJournal(dir).Remove(name); });
}

void JobRegistry::Recover() {
  std::string dir = config_.state_dir + "/jobs";
  JobJournal journal(dir);
  for (JournalEntry& entry : journal.ReadAll()) {
    // Not journaled: the node's own key, or a partnership's (none once the partnership
    // is gone from the configuration: the guest then cannot reach its home).
    if (entry.launch.guest) {
      // A partner's guest of the cluster this node has joined since is a guest of its own.
      if (config_.OwnCluster(entry.launch.home_cluster)) entry.launch.home_cluster.clear();
      try {
        entry.launch.home_credentials = HomeCredentials(entry.launch);
      } catch (const Error& e) {
        spdlog::warn("guest {} of {}: {}", entry.launch.identity.home_pid, entry.launch.home,
                     e.what());
      }
    }
    entry.launch.daemon_ports = {config_.peer_port, config_.gossip_port};
    if (entry.away) {
      RecoverAway(entry);
    } else if (entry.launch.guest && !entry.frozen_dir.empty()) {
      RecoverFrozenGuest(entry);
    } else {
      RecoverRunning(entry, dir);
    }
  }
  std::vector<uint64_t> taken;
  for (const auto& [slot, entry] : jobs_) {
    if (entry.here) taken.push_back(entry.here->pipe_inodes()[1]);
  }
  for (const auto& [id, guest] : guests_) taken.push_back(guest->pipe_inodes()[1]);
  CleanRestoreIntents(dir, taken);
  RemoveStaleImages(config_.state_dir + "/images");
  RemoveStaleFrozenGuests();
  SweepInputLogs();  // after every journaled job took its plan (and its log) back
}

namespace {

// Journaled with its keeper, before its init was spawned: the daemon may have died
// between the spawn and the next journal write. The init, if it runs, holds the status
// pipe's write end; the keeper holds its read end. Returns why it is not taken back, or
// nothing (then `entry` names the init found, or none for a job that ended meanwhile).
std::string FindUnjournaledInit(JournalEntry& entry, const std::vector<Fd>& kept) {
  pid_t home_pid = entry.launch.identity.home_pid;
  pid_t init = kept.size() == kKeptFds && kept[4].valid()
                   ? FindStatusWriter(migrate::PipeInode(kept[4].get()), entry.keeper_pid)
                   : 0;
  uint64_t start = 0;
  try {
    if (init > 0) start = ProcessStartTime(init);
  } catch (const Error&) {
    start = 0;  // gone meanwhile
  }
  if (start == 0 && StatusWritten(kept)) {
    // No init, but its status pipe has its last word: it ran and ended while no daemon
    // looked. Its output is in its pipes, its exit status in that line: taken back as a
    // job that ended (Job::Recover reads how from the pipe).
    spdlog::info(
        "job {}: its init was spawned but not journaled before the daemon died, "
        "and has ended since; its output and exit status are kept",
        home_pid);
    return "";
  }
  if (start == 0) return "it never started";
  spdlog::info("job {}: found its init (pid {}) by its status pipe: it was spawned but "
               "not journaled before the daemon died",
               home_pid, init);
  entry.init_pid = init;
  entry.init_start = start;
  return "";
}

}  // namespace

void JobRegistry::RecoverRunning(JournalEntry& entry, const std::string& dir) {
  pid_t home_pid = entry.launch.identity.home_pid;
  bool guest = entry.launch.guest;
  std::string why;
  Fd mosrun;  // a guest's mosrun is at its home
  if (!guest) mosrun = Fd::Adopt(PidfdOpen(home_pid));
  if (!guest && (!mosrun.valid() || ProcessStartTime(home_pid) != entry.mosrun_start)) {
    why = "its mosrun is gone";
  } else if (!guest && (jobs_.count(entry.slot) || entry.slot >= kMaxJobs)) {
    why = fmt::format("slot {} is taken", entry.slot);
  }
  std::vector<Fd> kept;
  FdKeeper keeper;
  if (why.empty()) {
    try {
      keeper = FdKeeper::Reclaim(entry.keeper_pid, entry.keeper_start, kKeptFds, &kept);
    } catch (const Error& e) {
      why = e.what();
    }
  }
  if (why.empty() && entry.init_pid <= 0) why = FindUnjournaledInit(entry, kept);
  if (why.empty()) {
    why = TakeBack(entry, std::move(keeper), std::move(kept), std::move(mosrun));
    if (why.empty()) return;
  }
  spdlog::warn("job {} of the journal is not taken back ({}): ending it", home_pid, why);
  KillIfSame(entry.init_pid, entry.init_start);
  if (keeper.running()) {
    keeper.Stop();
  } else {
    KillIfSame(entry.keeper_pid, entry.keeper_start);
  }
  JobJournal(dir).Remove(entry.Name());
}

std::string JobRegistry::TakeBack(JournalEntry& entry, FdKeeper keeper, std::vector<Fd> kept,
                                  Fd mosrun) {
  pid_t home_pid = entry.launch.identity.home_pid;
  bool guest = entry.launch.guest;
  uint64_t id = guest ? next_guest_++ : 0;
  int slot = entry.slot;
  JobLaunch launch = std::move(entry.launch);
  launch.init_path = init_path_;
  launch.preload_path = preload_path_;
  auto finished = guest ? std::function<void(Job&)>([this, id](Job&) { guests_.erase(id); })
                        : std::function<void(Job&)>([this, slot](Job& job) {
                            JobEnded(job);
                            jobs_.erase(slot);
                          });
  auto job = std::make_shared<Job>(loop_, std::move(launch), ControlStream(), finished);
  try {
    KeepJob(*job, guest ? -1 : slot);  // journaled on: a later move marks its entry
    // Its plan first: an ask the job makes while it is taken back counts.
    if (!guest) PlanCheckpoints(slot, job->launch().identity, job->launch().checkpoint,
                                job->launch().started_unix_ms);
    WatchCheckpointAsks(job);
    move::Stay stay;
    move::Departure departure = move::Departure::Reloaded(
        entry.departure, entry.departure_to, static_cast<int64_t>(uv_now(loop_)), &stay);
    // Before anything journals the job again: its entry keeps the target's word.
    if (departure.awaiting()) job->AwaitTakeOver(departure);
    if (!guest && entry.base_pending) {
      job->set_output_base_pending();
    } else if (!guest) {
      job->set_output_base(entry.base[1], entry.base[2]);
    }
    job->Recover(entry.init_pid, entry.init_start, std::move(keeper), std::move(kept),
                 std::move(mosrun), nullptr, nullptr);
    if (guest) {
      guests_[id] = job;
    } else {
      jobs_[slot].here = job;
    }
    if (departure.awaiting()) {
      spdlog::info(
          "job {}: its move was cut by the restart after {} said it arrived: it "
          "waits, stopped, for {} to take it over (at most {} s)",
          home_pid, departure.target(), departure.target(), move::kAttachTimeoutMs / 1000);
    } else if (stay.continue_job) {
      // The daemon died during a move (or a freeze) of the job, stopped for its dump: it
      // stays here and goes on (a node that restored it meanwhile finds no home for it
      // and kills it).
      spdlog::info("job {}: its move was cut by the restart ({}); it goes on here", home_pid,
                   stay.why);
      migrate::ContinueJob(entry.init_pid);
    }
    if (guest) ReattachGuest(job, static_cast<int64_t>(uv_now(loop_)) + move::kAttachTimeoutMs);
    return "";
  } catch (const Error& e) {
    job->Kill();
    return e.what();
  }
}

void JobRegistry::RelayClosed(const std::shared_ptr<Job>& job) {
  if (job->launch().guest && !job->detached() && job->state() == JobState::RUNNING) {
    job->Detach();
    ReattachGuest(job, static_cast<int64_t>(uv_now(loop_)) + move::kAttachTimeoutMs);
  } else if (job->detached()) {
    // The home refused to take it back (it gave the job up): the job ends here.
    spdlog::warn("job {}: its home {} does not take it back; killing it", job->home_pid(),
                 job->launch().home);
    job->GiveUp();
  } else {
    job->RelayLost();
  }
}

void JobRegistry::ReattachGuest(std::shared_ptr<Job> job, int64_t until_ms, bool again) {
  struct Connection {
    Fd fd;
    std::string error;
  };
  auto result = std::make_shared<Connection>();
  std::string host = job->launch().home_host;
  uint16_t port = job->launch().home_port;
  // Without credentials (its home's cluster is no partner any more) the tries fail with
  // the reason, as a home that cannot be reached would.
  std::optional<PeerCredentials> key = job->launch().home_credentials;
  std::weak_ptr<Job> weak = job;
  // The peer handshake blocks; it runs on libuv's thread pool, never on the loop (and so
  // does the pause between tries while the home's daemon is away).
  int status = QueueWork(
      loop_,
      [result, host, port, key, again] {
        if (again) std::this_thread::sleep_for(std::chrono::milliseconds(300));
        try {
          if (!key) Fail(ErrorKind::kPermissionDenied, "its home's cluster is no partner now");
          result->fd = PeerConnect(host, port, *key, "jobs", std::chrono::seconds(5));
        } catch (const std::exception& e) {
          result->error = e.what();
        }
      },
      [this, alive = alive_, weak, result, until_ms] {
        if (!*alive) return;
        auto job = weak.lock();
        if (!job) return;
        if (!result->error.empty() && static_cast<int64_t>(uv_now(loop_)) < until_ms) {
          ReattachGuest(job, until_ms, true);  // its home's daemon is not back yet
          return;
        }
        if (!result->error.empty()) {
          spdlog::error("job {} of {} cannot reach its home again: {}; killing it",
                        job->home_pid(), job->launch().home, result->error);
          job->GiveUp();
          return;
        }
        auto weak_job = std::make_shared<std::weak_ptr<Job>>(job);
        Caller peer;
        peer.peer = true;
        ControlStream relay =
            control_.AdoptStream(std::move(result->fd), peer, RelayHandlersFor(weak_job));
        job->set_relay(relay);
        capnp::MallocMessageBuilder message;
        auto request = message.initRoot<schema::ControlRequest>();
        request.setVersion(schema::CONTROL_VERSION);
        auto attach = request.initAttachGuest();
        attach.setHomePid(job->home_pid());
        attach.setNode(config_.name);
        attach.setGeneration(job->launch().generation);
        attach.setResumed(true);
        relay.Send(message);
        spdlog::info("job {}: asked its home {} to take it back", job->home_pid(),
                     job->launch().home);
      });
  if (status < 0) {
    spdlog::error("job {}: cannot reach its home again: {}", job->home_pid(), uv_strerror(status));
  }
}

void JobRegistry::ResumeJob(schema::ResumeJob::Reader request, ReplySender reply) {
  const Caller& caller = reply.caller();
  if (ResumeAway(request, reply)) return;
  std::shared_ptr<Job> job;
  // Only the job's own mosrun (its home pid, by the kernel's word) takes it back.
  for (const auto& [slot, home_job] : jobs_) {
    if (home_job.here && home_job.here->home_pid() == caller.pid) job = home_job.here;
  }
  if (!job || job->uid() != caller.uid) {
    Fail(ErrorKind::kNotFound, "node {} has no job of process {} to take back", config_.name,
         caller.pid);
  }
  // Checked before the connection becomes the relay: a refusal is then its one reply.
  job->CheckResume(request.getStdoutOffset(), request.getStderrOffset());
  auto weak_job = std::make_shared<std::weak_ptr<Job>>(job);
  ControlStream relay = reply.OpenStream(RelayHandlersFor(weak_job));
  job->Reattach(relay, request.getStdoutOffset(), request.getStderrOffset());
}

}  // namespace homeward
