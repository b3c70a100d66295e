// A job on this node: spawning its init in fresh namespaces, and relaying its stdio,
// signals and exit to its mosrun (its output: job_output.cc, its input: job_input.cc; its
// leaving on a move: job_departure.cc; what keeps it from moving: job_pins.cc).
#include "job.h"

#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cstring>
#include <fstream>
#include <sstream>

#include <capnp/message.h>
#include <spdlog/spdlog.h>

#include "c_boundary.h"
#include "checkpoint.h"
#include "error.h"
#include "job_env.h"
#include "job_signals.h"
#include "job_stream.h"
#include "job_usage.h"
#include "loopback_carrier.h"
#include "proc_limits.h"
#include "terminal_stream.h"
#include "uv_error.h"

namespace homeward {

namespace {

// The value of "Key:" in a /proc/<pid>/status file.
std::string StatusField(const std::string& status, const std::string& key) {
  size_t at = status.find("\n" + key + ":");
  if (at == std::string::npos) return {};
  size_t start = status.find_first_not_of(" \t", at + key.size() + 2);
  size_t end = status.find('\n', start);
  return status.substr(start, end - start);
}

}  // namespace

int64_t WallClockMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

JobIdentity JobIdentity::OfProcess(pid_t pid, uid_t uid, gid_t gid) {
  JobIdentity identity;
  identity.uid = uid;
  identity.gid = gid;
  identity.home_pid = pid;
  std::string status = ReadTextFile(fmt::format("/proc/{}/status", pid));
  if (status.empty()) {
    Fail(ErrorKind::kNotFound, "the calling process {} is gone", pid);
  }
  std::istringstream groups(StatusField(status, "Groups"));
  for (gid_t group; groups >> group;) identity.groups.push_back(group);
  std::string umask = StatusField(status, "Umask");
  if (!umask.empty()) identity.umask = static_cast<mode_t>(std::strtoul(umask.c_str(), nullptr, 8));
  identity.home_ppid =
      static_cast<pid_t>(std::strtol(StatusField(status, "PPid").c_str(), nullptr, 10));
  // The caller's limits from /proc: prlimit on another user's process needs
  // CAP_SYS_RESOURCE, which root lacks in some containers, and would then fail for every
  // caller but root. prlimit stays for any limit the file does not list.
  std::vector<bool> listed(RLIM_NLIMITS, false);
  for (const ProcLimit& limit :
       ParseProcLimits(ReadTextFile(fmt::format("/proc/{}/limits", pid)))) {
    if (limit.resource < 0 || limit.resource >= RLIM_NLIMITS || listed[limit.resource]) continue;
    listed[limit.resource] = true;
    identity.limits.push_back({limit.resource, limit.soft, limit.hard});
  }
  for (int resource = 0; resource < RLIM_NLIMITS; ++resource) {
    rlimit limit;
    if (listed[resource]) continue;
    if (::prlimit(pid, static_cast<__rlimit_resource>(resource), nullptr, &limit) == 0) {
      identity.limits.push_back({resource, limit.rlim_cur, limit.rlim_max});
    } else {
      spdlog::warn("limit {} of process {} unknown ({}): the job keeps the daemon's", resource, pid,
                   std::strerror(errno));
    }
  }
  return identity;
}

Job::Job(uv_loop_t* loop, JobLaunch launch, ControlStream relay, Finished finished)
    : loop_(loop),
      launch_(std::move(launch)),
      relay_(std::move(relay)),
      on_finished_(std::move(finished)),
      arrived_ms_(static_cast<int64_t>(uv_now(loop))) {}

Job::~Job() {
  Kill();
}

std::string CommandOf(const std::vector<std::string>& argv) {
  std::string text;
  for (const auto& arg : argv) {
    if (!text.empty()) text += ' ';
    text += arg;
  }
  return text;
}

std::string Job::command() const {
  return CommandOf(launch_.argv);
}

namespace {

// The init runs as root: nothing of the caller's environment may reach it (LD_AUDIT,
// GCONV_PATH, MALLOC_* ...), so it gets only what the daemon writes. The caller's own
// variables travel behind a prefix no loader or library interprets, and the init
// gives them back to the program after switching to the user's ids (as sudo and runc
// apply a user's environment only to the user's process).
std::vector<std::string> InitEnvironment(const JobLaunch& launch) {
  std::vector<std::string> env = {"PATH=/usr/sbin:/usr/bin:/sbin:/bin"};
  for (const auto& entry : launch.env) {
    // mosrun's word that it runs on a terminal goes to the init as it is (job_terminal.h).
    if (entry.rfind(std::string(terminal::kEnvName) + "=", 0) == 0) {
      env.push_back(entry);
      continue;
    }
    if (entry.rfind("HOMEWARD_", 0) == 0) continue;  // ours to set, not the caller's
    env.push_back(kUserEnvPrefix + entry);
  }
  env.push_back("HOMEWARD_HOME=" + launch.home);
  env.push_back(fmt::format("HOMEWARD_HOME_PID={}", launch.identity.home_pid));
  env.push_back(fmt::format("HOMEWARD_HOME_PPID={}", launch.identity.home_ppid));
  env.push_back(fmt::format("HOMEWARD_PID_BASE={}", launch.pid_base));
  if (launch.checkpoint.signal > 0) {
    env.push_back(fmt::format("HOMEWARD_CHECKPOINT_SIGNAL={}", launch.checkpoint.signal));
  }
  return env;
}

}  // namespace

namespace {

// mosjob-init's command line for `launch`: who the job runs as, where, its limits, and
// the program.
std::vector<std::string> InitArguments(const JobLaunch& launch) {
  const JobIdentity& id = launch.identity;
  std::vector<std::string> argv = {launch.init_path,
                                   "--home",
                                   launch.home,
                                   "--uid",
                                   std::to_string(id.uid),
                                   "--gid",
                                   std::to_string(id.gid),
                                   "--umask",
                                   fmt::format("{:o}", id.umask),
                                   "--cwd",
                                   launch.cwd,
                                   "--root",
                                   launch.root};
  if (!id.groups.empty()) {
    std::string groups;
    for (gid_t g : id.groups) groups += (groups.empty() ? "" : ",") + std::to_string(g);
    argv.insert(argv.end(), {"--groups", groups});
  }
  for (const auto& limit : id.limits) {
    auto value = [](rlim_t v) {
      return v == RLIM_INFINITY ? std::string("inf") : std::to_string(v);
    };
    argv.push_back("--rlimit");
    argv.push_back(fmt::format("{}={}:{}", limit.resource, value(limit.soft), value(limit.hard)));
  }
  // A guest gets a network namespace of its own with only its loopback: the node's
  // loopback services and abstract unix sockets are the node's, not its home's. A job at
  // its home keeps the node's network, as the plain program it stands for would.
  if (launch.guest) argv.push_back("--own-network");
  argv.push_back("--");
  argv.insert(argv.end(), launch.argv.begin(), launch.argv.end());

  // The shim goes into the program, not into its init: the init must see the real pids
  // of the job's namespace. The init puts it first in the program's LD_PRELOAD.
  if (!launch.preload_path.empty()) {
    argv.insert(argv.end() - static_cast<long>(launch.argv.size()) - 1,
                {"--preload", launch.preload_path});
  }
  return argv;
}

}  // namespace

void Job::Start() {
  Pipe stdin_pipe = Pipe::Create();
  Pipe stdout_pipe = Pipe::Create();
  Pipe stderr_pipe = Pipe::Create();
  Pipe status_pipe = Pipe::Create();
  // The daemon keeps a copy of the job's stdin's read end: what the job has not read is
  // taken out through it when the job moves.
  Fd stdin_read = Fd::Adopt(
      HW_SYSCALL(::fcntl(stdin_pipe.read.get(), F_DUPFD_CLOEXEC, 3), "keep the job's stdin"));
  DaemonEnds ends{std::move(stdin_pipe.write), std::move(stdin_read), std::move(stdout_pipe.read),
                  std::move(stderr_pipe.read), std::move(status_pipe.read)};
  if (journal_write_) {
    // The keeper holds our ends before the job runs, and the journal names the keeper
    // before the job runs: a daemon killed from here on leaves what the next one needs.
    KeepEnds(ends);
    journal_write_(0, 0, keeper_.pid(), keeper_.start_time(), move::Departure());
  }

  const JobIdentity& id = launch_.identity;
  SpawnOptions options;
  options.argv = InitArguments(launch_);
  options.env = InitEnvironment(launch_);
  options.stdin_fd = stdin_pipe.read.get();
  options.stdout_fd = stdout_pipe.write.get();
  options.stderr_fd = stderr_pipe.write.get();
  options.extra_fds = {status_pipe.write.get()};
  // A time namespace of its own (offsets as the daemon's, so at first the job sees this
  // node's clocks): CRIU dumps the job's CLOCK_MONOTONIC and CLOCK_BOOTTIME with it and
  // sets the offsets of a new one where it is restored, so they go on from where they were
  // on a node that booted at another time. clone3 takes CLONE_NEWTIME; clone does not.
  options.clone_flags = CLONE_NEWPID | CLONE_NEWNS | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWTIME;
  // A signal from mosrun as soon as the job is listed must wait for the init, not be lost.
  options.signals_blocked = true;
  if (launch_.guest) {
    // A guest's network namespace is made, its loopback's connections handed to the
    // carrier and the carrier listening, before the init is started in it: the job's
    // first connection already goes home.
    Fd net_ns = NewGuestNetwork();
    RedirectLoopbackConnections(net_ns.get());
    StartCarrier(net_ns.get());
    InNetworkNamespace(net_ns.get(), [&] { init_.emplace(ChildProcess::Spawn(options)); });
  } else {
    init_.emplace(ChildProcess::Spawn(options));
  }
  if (journal_write_) {
    init_start_ = ProcessStartTime(init_->pid());
    journal_write_(init_->pid(), init_start_, keeper_.pid(), keeper_.start_time(),
                   move::Departure());
  }

  // The job's ends are the job's alone now.
  stdin_pipe.read.Reset();
  stdout_pipe.write.Reset();
  stderr_pipe.write.Reset();
  status_pipe.write.Reset();

  Attach(std::move(ends));
  spdlog::info("job {} started: {} (uid {}, init pid {})", home_pid(), command(), id.uid,
               init_->pid());
}

// Gives the job's streams their spools and a keeper that holds them and our pipes' ends,
// so that they outlive this daemon (see "Daemon restarts" in docs/ARCHITECTURE.md).
void Job::KeepEnds(DaemonEnds& ends) {
  // A guest continued after a freeze comes with its pending output in its spools.
  if (!ends.stdin_spool.valid()) ends.stdin_spool = MakeSpool("stdin");
  if (!ends.stdout_spool.valid()) ends.stdout_spool = MakeSpool("stdout");
  if (!ends.stderr_spool.valid()) ends.stderr_spool = MakeSpool("stderr");
  if (!ends.status_spool.valid()) ends.status_spool = MakeSpool("status");
  keeper_ = FdKeeper::Spawn(KeptFds(ends));
}

void Job::Adopt(ChildProcess init, DaemonEnds ends) {
  init_.emplace(std::move(init));
  if (journal_write_) {
    // As for a job started here: the keeper holds our ends, and the journal names it and
    // the init, before the job runs on here.
    KeepEnds(ends);
    init_start_ = ProcessStartTime(init_->pid());
    journal_write_(init_->pid(), init_start_, keeper_.pid(), keeper_.start_time(),
                   move::Departure());
  }
  Attach(std::move(ends));
  spdlog::info("job {} restored here: {} (init pid {})", home_pid(), command(), init_->pid());
  // What the job had not read at its old place goes into its new pipe first; then mosrun
  // hears where the job's input goes on, and sends again what it holds from there.
  InputCarry carry = std::move(launch_.input);
  launch_.input = {};
  input_written_ = carry.offset;
  HW_SYSCALL(::lseek(stdin_spool_.get(), static_cast<off_t>(input_written_), SEEK_SET),
             "job input position");
  input_queue_ = std::move(carry.data);
  input_end_ = carry.ended;
  size_t carried = input_queue_.size();
  FlushInput();
  capnp::MallocMessageBuilder message;
  auto resume = message.initRoot<schema::ControlReply>().initJobInputResume();
  resume.setOffset(input_received());
  resume.setEnded(input_end_);
  relay_.Send(message);
  spdlog::info("job {}: its input goes on from byte {}{} ({} bytes carried)", home_pid(),
               input_received(), input_end_ ? ", at its end" : "", carried);
}

void Job::StartCarrier(int net_ns, CarrierSockets sockets) {
  try {
    carrier_ = std::make_unique<LoopbackCarrier>(
        net_ns,
        LoopbackHome{
            launch_.home, launch_.home_host, launch_.home_port, *launch_.home_credentials, home_pid(),
            FsIdentity{launch_.identity.uid, launch_.identity.gid, launch_.identity.groups},
            launch_.daemon_ports},
        std::move(sockets));
  } catch (const std::exception& e) {
    // The job runs on; its loopback connections are refused until it moves.
    spdlog::error("job {}: its loopback connections cannot be carried home: {}", home_pid(),
                  e.what());
  }
}

void Job::Attach(DaemonEnds ends) {
  // A guest restored (or recovered by this daemon after a restart) in a namespace whose
  // loopback connections are handed to the carrier already (RestoreHere).
  if (launch_.guest && !carrier_ && !init_status_ && launch_.home_credentials) {
    try {
      StartCarrier(Fd::Open(fmt::format("/proc/{}/ns/net", init_pid()), O_RDONLY | O_CLOEXEC).get(),
                   std::move(ends.carrier));
    } catch (const std::exception& e) {
      spdlog::error("job {}: no network namespace to carry from: {}", home_pid(), e.what());
    }
  }
  if (!init_status_) {
    if (!pidfd_.valid()) {
      pidfd_ = Fd::Adopt(HW_SYSCALL(static_cast<int>(::syscall(SYS_pidfd_open, init_pid(), 0)),
                                    "pidfd_open {}", init_pid()));
    }
    WatchInit();
  }
  pipe_inodes_ = {
      migrate::PipeInode(ends.stdin_write.valid() ? ends.stdin_write.get() : ends.stdin_read.get()),
      migrate::PipeInode(ends.stdout_read.get()), migrate::PipeInode(ends.stderr_read.get()),
      migrate::PipeInode(ends.status_read.get())};

  stdin_write_ = std::move(ends.stdin_write);
  stdin_read_ = std::move(ends.stdin_read);
  stdin_spool_ = ends.stdin_spool.valid() ? std::move(ends.stdin_spool) : MakeSpool("stdin");
  if (stdin_write_.valid()) {
    // Only our write end is made non-blocking: the read end's open file is the job's own
    // stdin, whose flags are the job's.
    int flags = HW_SYSCALL(::fcntl(stdin_write_.get(), F_GETFL), "job stdin");
    HW_SYSCALL(::fcntl(stdin_write_.get(), F_SETFL, flags | O_NONBLOCK), "job stdin");
    CheckUv(uv_poll_init(loop_, stdin_poll_.get(), stdin_write_.get()), "job stdin");
    stdin_poll_.get()->data = this;
  } else {
    input_closed_ = true;  // a daemon before us wrote the end of input
  }
  auto make_stream = [&](int fd, Fd end, Fd spool, const char* name) {
    auto stream = std::make_unique<Stream>();
    stream->job = this;
    stream->fd = fd;
    int flags = HW_SYSCALL(::fcntl(end.get(), F_GETFL), "job output");
    HW_SYSCALL(::fcntl(end.get(), F_SETFL, flags | O_NONBLOCK), "job output");
    stream->pipe = std::move(end);
    stream->spool = spool.valid() ? std::move(spool) : MakeSpool(name);
    struct stat st;
    HW_SYSCALL(::fstat(stream->spool.get(), &st), "job output spool");
    stream->taken = static_cast<uint64_t>(st.st_size);
    // A spool taken back after a restart: what mosrun has is known once it reattaches
    // (Reattach); the status is read again whole.
    stream->sent = fd == 3 ? 0 : stream->taken;
    stream->trimmed = stream->sent;
    // The asks for a checkpoint read again were taken by the daemon before.
    if (fd == 3) status_replayed_ = stream->taken;
    CheckUv(uv_poll_init(loop_, stream->poll.get(), stream->pipe.get()), "job output");
    stream->poll.get()->data = stream.get();
    return stream;
  };
  stdout_ = make_stream(1, std::move(ends.stdout_read), std::move(ends.stdout_spool), "stdout");
  stderr_ = make_stream(2, std::move(ends.stderr_read), std::move(ends.stderr_spool), "stderr");
  status_ = make_stream(3, std::move(ends.status_read), std::move(ends.status_spool), "status");
  for (Stream* stream : {stdout_.get(), stderr_.get(), status_.get()}) Pump(*stream);
  WatchRelayDrain();
}

void Job::WatchInit() {
  CheckUv(uv_poll_init(loop_, exit_watch_.get(), pidfd_.get()), "watch job exit");
  exit_watch_.get()->data = this;
  CheckUv(uv_poll_start(exit_watch_.get(), UV_READABLE,
                        [](uv_poll_t* handle, int, int) {
                          GuardedCall("job exit",
                                      [handle] { static_cast<Job*>(handle->data)->OnInitExit(); });
                        }),
          "watch job exit");
}

void Job::Signal(int signo) {
  if (signo <= 0 || signo >= NSIG) {
    Fail(ErrorKind::kInvalidInput, "{} is not a signal number", signo);
  }
  if (init_pid() > 0 && !init_status_) {
    // SIGKILL and SIGSTOP cannot be caught by the job's init, so they reach the whole
    // job at once; every other signal the init forwards to the job's main process.
    ::syscall(SYS_pidfd_send_signal, pidfd_.get(), signo, nullptr, 0);
  }
}

bool Job::SignalNumbered(int signo, uint32_t number) {
  if (signo <= 0 || signo >= NSIG) {
    Fail(ErrorKind::kInvalidInput, "{} is not a signal number", signo);
  }
  // A job being dumped (a move, a freeze, a checkpoint) may have its signals read by criu
  // already: one queued now could stay with a copy that is about to be killed.
  const char* held = departure_.leaving() ? "it is leaving"
                     : input_held_          ? "its input is held"
                     : finished_            ? "it has finished"
                     : init_pid() <= 0 || init_status_ || !pidfd_.valid()
                         ? "its init is not running"
                         : nullptr;
  if (held) {
    // mosrun sends it again in a second.
    spdlog::debug("job {}: signal {} (number {}) not delivered now: {}", home_pid(), signo,
                  number, held);
    return false;
  }
  siginfo_t info{};
  info.si_signo = job_signals::Carrier();
  info.si_code = SI_QUEUE;
  info.si_pid = ::getpid();
  info.si_uid = ::getuid();
  info.si_value.sival_ptr = reinterpret_cast<void*>(
      static_cast<uintptr_t>(job_signals::Value(signo, home_pid(), number)));
  if (::syscall(SYS_pidfd_send_signal, pidfd_.get(), info.si_signo, &info, 0) != 0) {
    spdlog::warn("job {}: signal {} (number {}) not delivered: {}", home_pid(), signo, number,
                 strerror(errno));
    return false;
  }
  spdlog::debug("job {}: signal {} (number {}) queued to its init", home_pid(), signo, number);
  return true;
}

void Job::RelayLost() {
  if (!finished_ && init_pid() > 0 && !init_status_) {
    spdlog::info("job {}: its mosrun is gone; killing the job", home_pid());
    ::syscall(SYS_pidfd_send_signal, pidfd_.get(), SIGKILL, nullptr, 0);
  }
}

void Job::Kill() {
  if (!init_status_) KillInit();
  Forget();
}

void Job::KillInit() {
  if (init_) {
    init_.reset();  // SIGKILL and reap
  } else if (foreign_init_ > 0 && pidfd_.valid()) {
    // Another daemon's child: whoever adopted it reaps it.
    ::syscall(SYS_pidfd_send_signal, pidfd_.get(), SIGKILL, nullptr, 0);
  }
}

void Job::Forget() {
  keeper_.Stop();
  if (journal_remove_) {
    auto remove = std::move(journal_remove_);
    journal_remove_ = nullptr;
    journal_write_ = nullptr;
    remove();
  }
}

void Job::OnInitExit() {
  if (init_pid() <= 0 || init_status_) return;
  std::optional<ExitStatus> status;
  if (init_) {
    status = init_->TryWait();
  } else {
    // Not our child: how it ended is in the line it wrote on the status pipe; without
    // one it was killed.
    status = ExitStatus{0, SIGKILL, true};
  }
  if (!status) return;
  init_status_ = status;
  uv_poll_stop(exit_watch_.get());
  exit_watch_.Close();
  pidfd_.Reset();
  carrier_.reset();  // the job is gone from here (ended, or moved on)
  MaybeFinish();
}

void Job::MaybeFinish() {
  if (finished_ || !init_status_ || detached_) return;
  for (Stream* stream : {stdout_.get(), stderr_.get(), status_.get()}) {
    // A paused stream resumes when mosrun catches up, and comes back here at its end.
    if (stream && (!stream->eof || stream->sent < stream->taken)) return;
  }
  finished_ = true;
  exit_delivered_ = relay_.open();
  SendExit();
  relay_.Close();
  CloseInput();
  stdin_read_.Reset();
  Forget();
  auto self = shared_from_this();  // on_finished_ drops the registry's reference
  on_finished_(*this);
}

void Job::SendExit() {
  capnp::MallocMessageBuilder message;
  auto exit = message.initRoot<schema::ControlReply>().initJobExited();
  std::string line = status_text_.substr(0, status_text_.find('\n'));
  std::istringstream words(line);
  std::string word;
  words >> word;
  if (word == "exit" || word == "signal") {
    int value = 0;
    words >> value;
    exit.setSignaled(word == "signal");
    exit.setCode(value);
    spdlog::info("job {} ended: {} {}", home_pid(), word, value);
  } else if (word == "error") {
    int err = 0;
    words >> err;
    std::string message;
    std::getline(words, message);
    if (!message.empty() && message[0] == ' ') message.erase(0, 1);
    exit.setCode(err == ENOENT ? 127 : 126);
    exit.setMessage(message);
    spdlog::info("job {} could not start: {}", home_pid(), message);
  } else {
    // The init died without a word: killed from outside (SIGKILL), or it crashed.
    exit.setSignaled(init_status_->signaled);
    exit.setCode(init_status_->signaled ? init_status_->signal : init_status_->code);
    spdlog::info("job {} ended without a report: init {}", home_pid(), init_status_->Describe());
  }
  relay_.Send(message);
}

std::vector<pid_t> Job::Pids() const {
  if (init_pid() <= 0 || init_status_) return {};
  return migrate::JobPids(init_pid());
}

uint64_t Job::cpu_ms() const {
  // Every live process of the job, with the time of the children each has reaped.
  return CpuMs(Pids());
}

void Job::SampleUsage(int64_t now_ms, const std::vector<pid_t>& pids) {
  if (pids.empty()) return;
  usage_.Add(SampleProcesses(pids), now_ms);
}

}  // namespace homeward
