// A job on this node: spawning its init in fresh namespaces, and relaying its stdio,
// signals and exit to its mosrun.
#include "job.h"

#include <dirent.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cstring>
#include <fstream>
#include <set>
#include <sstream>

#include <capnp/message.h>
#include <spdlog/spdlog.h>

#include "c_boundary.h"
#include "checkpoint.h"
#include "error.h"
#include "job_env.h"
#include "job_usage.h"
#include "proc_limits.h"
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

struct Job::Stream {
  Job* job;
  int fd;  // 1 stdout, 2 stderr, 3 status
  UvHandle<uv_pipe_t> pipe;
  bool eof = false;
  char buffer[64 * 1024];
};

Job::Job(uv_loop_t* loop, JobLaunch launch, ControlStream relay, Finished finished)
    : loop_(loop),
      launch_(std::move(launch)),
      relay_(std::move(relay)),
      on_finished_(std::move(finished)),
      arrived_ms_(static_cast<int64_t>(uv_now(loop))) {}

Job::~Job() {
  Kill();
}

std::string Job::command() const {
  std::string text;
  for (const auto& arg : launch_.argv) {
    if (!text.empty()) text += ' ';
    text += arg;
  }
  return text;
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

void Job::Start() {
  Pipe stdin_pipe = Pipe::Create();
  Pipe stdout_pipe = Pipe::Create();
  Pipe stderr_pipe = Pipe::Create();
  Pipe status_pipe = Pipe::Create();

  const JobIdentity& id = launch_.identity;
  SpawnOptions options;
  options.argv = {launch_.init_path,
                  "--home",
                  launch_.home,
                  "--uid",
                  std::to_string(id.uid),
                  "--gid",
                  std::to_string(id.gid),
                  "--umask",
                  fmt::format("{:o}", id.umask),
                  "--cwd",
                  launch_.cwd,
                  "--root",
                  launch_.root};
  if (!id.groups.empty()) {
    std::string groups;
    for (gid_t g : id.groups) groups += (groups.empty() ? "" : ",") + std::to_string(g);
    options.argv.insert(options.argv.end(), {"--groups", groups});
  }
  for (const auto& limit : id.limits) {
    auto value = [](rlim_t v) {
      return v == RLIM_INFINITY ? std::string("inf") : std::to_string(v);
    };
    options.argv.push_back("--rlimit");
    options.argv.push_back(
        fmt::format("{}={}:{}", limit.resource, value(limit.soft), value(limit.hard)));
  }
  // A guest gets a network namespace of its own with only its loopback: the node's
  // loopback services and abstract unix sockets are the node's, not its home's. A job at
  // its home keeps the node's network, as the plain program it stands for would.
  if (launch_.guest) options.argv.push_back("--own-network");
  options.argv.push_back("--");
  options.argv.insert(options.argv.end(), launch_.argv.begin(), launch_.argv.end());

  // The shim goes into the program, not into its init: the init must see the real pids
  // of the job's namespace. The init puts it first in the program's LD_PRELOAD.
  if (!launch_.preload_path.empty()) {
    options.argv.insert(options.argv.end() - static_cast<long>(launch_.argv.size()) - 1,
                        {"--preload", launch_.preload_path});
  }
  options.env = InitEnvironment(launch_);
  options.stdin_fd = stdin_pipe.read.get();
  options.stdout_fd = stdout_pipe.write.get();
  options.stderr_fd = stderr_pipe.write.get();
  options.extra_fds = {status_pipe.write.get()};
  options.clone_flags = CLONE_NEWPID | CLONE_NEWNS | CLONE_NEWUTS | CLONE_NEWIPC;
  if (launch_.guest) options.clone_flags |= CLONE_NEWNET;
  init_.emplace(ChildProcess::Spawn(options));

  // The job's ends are the job's alone now, but for a copy of its stdin's read end: what
  // the job has not read is taken out through it when the job moves.
  Fd stdin_read = Fd::Adopt(
      HW_SYSCALL(::fcntl(stdin_pipe.read.get(), F_DUPFD_CLOEXEC, 3), "keep the job's stdin"));
  stdin_pipe.read.Reset();
  stdout_pipe.write.Reset();
  stderr_pipe.write.Reset();
  status_pipe.write.Reset();

  Attach(DaemonEnds{std::move(stdin_pipe.write), std::move(stdin_read), std::move(stdout_pipe.read),
                    std::move(stderr_pipe.read), std::move(status_pipe.read)});
  spdlog::info("job {} started: {} (uid {}, init pid {})", home_pid(), command(), id.uid,
               init_->pid());
}

void Job::Adopt(ChildProcess init, DaemonEnds ends) {
  init_.emplace(std::move(init));
  Attach(std::move(ends));
  spdlog::info("job {} restored here: {} (init pid {})", home_pid(), command(), init_->pid());
  // What the job had not read at its old place goes into its new pipe first; then mosrun
  // hears where the job's input goes on, and sends again what it holds from there.
  InputCarry carry = std::move(launch_.input);
  launch_.input = {};
  input_written_ = carry.offset;
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

void Job::Attach(DaemonEnds ends) {
  pidfd_ = Fd::Adopt(HW_SYSCALL(static_cast<int>(::syscall(SYS_pidfd_open, init_->pid(), 0)),
                                "pidfd_open {}", init_->pid()));
  CheckUv(uv_poll_init(loop_, exit_watch_.get(), pidfd_.get()), "watch job exit");
  exit_watch_.get()->data = this;
  CheckUv(uv_poll_start(exit_watch_.get(), UV_READABLE,
                        [](uv_poll_t* handle, int, int) {
                          GuardedCall("job exit",
                                      [handle] { static_cast<Job*>(handle->data)->OnInitExit(); });
                        }),
          "watch job exit");
  pipe_inodes_ = {
      migrate::PipeInode(ends.stdin_write.get()), migrate::PipeInode(ends.stdout_read.get()),
      migrate::PipeInode(ends.stderr_read.get()), migrate::PipeInode(ends.status_read.get())};

  stdin_write_ = std::move(ends.stdin_write);
  stdin_read_ = std::move(ends.stdin_read);
  // Only our write end is made non-blocking: the read end's open file is the job's own
  // stdin, whose flags are the job's.
  int flags = HW_SYSCALL(::fcntl(stdin_write_.get(), F_GETFL), "job stdin");
  HW_SYSCALL(::fcntl(stdin_write_.get(), F_SETFL, flags | O_NONBLOCK), "job stdin");
  CheckUv(uv_poll_init(loop_, stdin_poll_.get(), stdin_write_.get()), "job stdin");
  stdin_poll_.get()->data = this;
  auto make_stream = [&](int fd, Fd end) {
    auto stream = std::make_unique<Stream>();
    stream->job = this;
    stream->fd = fd;
    CheckUv(uv_pipe_init(loop_, stream->pipe.get(), 0), "job output");
    CheckUv(uv_pipe_open(stream->pipe.get(), end.Release()), "job output");
    stream->pipe.get()->data = stream.get();
    StartReading(*stream);
    return stream;
  };
  stdout_ = make_stream(1, std::move(ends.stdout_read));
  stderr_ = make_stream(2, std::move(ends.stderr_read));
  status_ = make_stream(3, std::move(ends.status_read));
  relay_.OnDrain([weak = weak_from_this()] {
    if (auto job = weak.lock()) job->PauseOutput(false);
  });
}

void Job::AbandonAfterMove() {
  if (finished_) return;
  finished_ = true;
  // The job is frozen: what it wrote before the dump is still in our pipes. Relay it
  // before the copy here goes, so that no byte of output is lost by the move.
  for (Stream* stream : {stdout_.get(), stderr_.get()}) {
    uv_os_fd_t fd;
    if (!stream || stream->eof || uv_fileno(stream->pipe.base(), &fd) != 0) continue;
    for (;;) {
      ssize_t n = ::read(fd, stream->buffer, sizeof stream->buffer);
      if (n <= 0) break;
      SendOutput(stream->fd, stream->buffer, static_cast<size_t>(n));
    }
  }
  exit_watch_.Close();
  pidfd_.Reset();
  init_.reset();  // SIGKILL and reap the frozen source copy
  // Input still queued for the old copy goes with it: mosrun holds every byte the job's
  // new place has not acknowledged, and sends it again from where the job resumes.
  input_paused_ = false;  // the relay's reading is for its new handlers to decide
  input_held_ = true;
  input_queue_.clear();
  CloseInput();
  stdin_read_.Reset();
  stdout_.reset();
  stderr_.reset();
  status_.reset();
  relay_.OnDrain(nullptr);
}

void Job::StartReading(Stream& stream) {
  int status = uv_read_start(
      stream.pipe.stream(),
      [](uv_handle_t* handle, size_t, uv_buf_t* buf) {
        auto* s = static_cast<Stream*>(handle->data);
        buf->base = s->buffer;
        buf->len = sizeof s->buffer;
      },
      [](uv_stream_t* handle, ssize_t nread, const uv_buf_t* buf) {
        GuardedCall("job output", [&] {
          auto* s = static_cast<Stream*>(handle->data);
          s->job->OnData(*s, nread, buf);
        });
      });
  if (status < 0)
    spdlog::warn("job {}: cannot read its output: {}", home_pid(), uv_strerror(status));
}

void Job::OnData(Stream& stream, ssize_t nread, const uv_buf_t* buf) {
  if (nread == 0) return;
  if (nread < 0) {
    stream.eof = true;
    uv_read_stop(stream.pipe.stream());
    MaybeFinish();
    return;
  }
  if (stream.fd == 3) {
    status_text_.append(buf->base, static_cast<size_t>(nread));
    // "checkpoint" lines before the last: the job asks for one (mosrun -S).
    static constexpr std::string_view kAsk = "checkpoint\n";
    while (status_text_.compare(0, kAsk.size(), kAsk) == 0) {
      status_text_.erase(0, kAsk.size());
      if (on_checkpoint_request_) on_checkpoint_request_();
    }
    if (status_text_.size() > 4096) status_text_.resize(4096);
    return;
  }
  SendOutput(stream.fd, buf->base, static_cast<size_t>(nread));
  // Hold the job's output back while mosrun is slower than the job.
  if (relay_.queued_bytes() > ControlStream::kHighWater) PauseOutput(true);
}

void Job::SendOutput(int fd, const char* data, size_t size) {
  capnp::MallocMessageBuilder message;
  auto output = message.initRoot<schema::ControlReply>().initJobOutput();
  output.setFd(static_cast<uint8_t>(fd));
  output.setData(kj::arrayPtr(reinterpret_cast<const kj::byte*>(data), size));
  relay_.Send(message);
}

std::vector<migrate::PipeRole> Job::pipe_roles() const {
  static const char* const kRoles[] = {"stdin", "stdout", "stderr", "status"};
  std::vector<migrate::PipeRole> roles;
  for (size_t i = 0; i < pipe_inodes_.size(); ++i) roles.push_back({pipe_inodes_[i], kRoles[i]});
  return roles;
}

void Job::PauseOutput(bool pause) {
  if (pause == output_paused_) return;
  output_paused_ = pause;
  UpdateOutputReading();
}

void Job::HoldOutput(bool hold) {
  if (hold == output_held_) return;
  output_held_ = hold;
  UpdateOutputReading();
}

void Job::UpdateOutputReading() {
  bool stop = output_paused_ || output_held_;
  for (Stream* stream : {stdout_.get(), stderr_.get()}) {
    if (!stream || stream->eof) continue;
    if (stop) {
      uv_read_stop(stream->pipe.stream());
    } else {
      StartReading(*stream);
    }
  }
}

void Job::Signal(int signo) {
  if (signo <= 0 || signo >= NSIG) {
    Fail(ErrorKind::kInvalidInput, "{} is not a signal number", signo);
  }
  if (init_ && !init_status_) {
    // SIGKILL and SIGSTOP cannot be caught by the job's init, so they reach the whole
    // job at once; every other signal the init forwards to the job's main process.
    ::kill(init_->pid(), signo);
  }
}

void Job::RelayLost() {
  if (!finished_ && init_ && !init_status_) {
    spdlog::info("job {}: its mosrun is gone; killing the job", home_pid());
    ::kill(init_->pid(), SIGKILL);
  }
}

void Job::Kill() {
  if (init_ && !init_status_) init_.reset();  // SIGKILL and reap
}

void Job::OnInitExit() {
  if (!init_ || init_status_) return;
  auto status = init_->TryWait();
  if (!status) return;
  init_status_ = status;
  uv_poll_stop(exit_watch_.get());
  exit_watch_.Close();
  pidfd_.Reset();
  MaybeFinish();
}

void Job::MaybeFinish() {
  if (finished_ || !init_status_) return;
  for (Stream* stream : {stdout_.get(), stderr_.get(), status_.get()}) {
    // A paused stream resumes when mosrun catches up, and comes back here at its end.
    if (stream && !stream->eof) return;
  }
  finished_ = true;
  SendExit();
  relay_.Close();
  CloseInput();
  stdin_read_.Reset();
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
  if (!init_ || init_status_) return {};
  return migrate::JobPids(init_->pid());
}

uint64_t Job::cpu_ms() const {
  // Every live process of the job, with the time of the children each has reaped.
  return CpuMs(Pids());
}

void Job::SampleUsage(int64_t now_ms, const std::vector<pid_t>& pids) {
  if (pids.empty()) return;
  usage_.Add(SampleProcesses(pids), now_ms);
}

std::string Job::PinnedReason(const std::vector<pid_t>& pids) const {
  if (launch_.keep_home) return "kept at home (mosrun -h)";
  std::set<std::string> sockets;
  for (pid_t pid : pids) {
    // System V shared memory lives in the node's kernel, not in the job.
    std::string maps = ReadTextFile(fmt::format("/proc/{}/maps", pid));
    if (maps.find("/SYSV") != std::string::npos) return "uses System V shared memory";
    std::string fd_dir = fmt::format("/proc/{}/fd", pid);
    if (DIR* fds = ::opendir(fd_dir.c_str())) {
      char link[64];
      while (dirent* entry = ::readdir(fds)) {
        ssize_t n = ::readlinkat(::dirfd(fds), entry->d_name, link, sizeof link);
        std::string_view target(link, n > 0 ? static_cast<size_t>(n) : 0);
        if (target.rfind("socket:[", 0) == 0) {
          sockets.emplace(target.substr(8, target.size() - 9));
        }
      }
      ::closedir(fds);
    }
  }
  if (sockets.empty()) return {};
  // The tables of the daemon's network namespace, which a job at its home shares: a guest's
  // sockets are in a namespace of its own, only the guest reaches them, and they move with
  // it. A listening TCP socket is an address of this node that clients use: it cannot move.
  // Any other TCP or UDP socket talks to the network, which away from home is only the
  // job's own loopback (see "A guest's network" in docs/ARCHITECTURE.md).
  std::string in_use;
  for (const char* table : {"/proc/net/tcp", "/proc/net/tcp6", "/proc/net/udp", "/proc/net/udp6"}) {
    bool tcp = std::string_view(table).find("tcp") != std::string_view::npos;
    std::istringstream lines(ReadTextFile(table));
    std::string line;
    std::getline(lines, line);  // the header
    while (std::getline(lines, line)) {
      std::istringstream fields(line);
      std::string slot, local, remote, state, queues, timer, retransmits, uid, timeout, inode;
      fields >> slot >> local >> remote >> state >> queues >> timer >> retransmits >> uid >>
          timeout >> inode;
      if (!sockets.count(inode)) continue;
      if (tcp && state == "0A") {
        unsigned port = static_cast<unsigned>(
            std::strtoul(local.substr(local.rfind(':') + 1).c_str(), nullptr, 16));
        return fmt::format("holds a listening socket (TCP port {})", port);
      }
      if (in_use.empty()) {
        const char* kind = tcp ? "TCP" : "UDP";
        in_use = fmt::format("uses the network (a {} socket: away from home it has none)", kind);
      }
    }
  }
  return in_use;
}

}  // namespace homeward
