// mosrun: runs a program as a Homeward job whose home is this node. mosrun stays at
// home as the job's deputy: it relays the job's stdin, stdout and stderr, forwards the
// signals it receives, and exits as the job did. Its own pid is the job's home pid.
#include <errno.h>
#include <getopt.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <deque>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include <capnp/message.h>
#include <fmt/format.h>

#include "control_client.h"
#include "elf_info.h"
#include "error.h"
#include "fd.h"
#include "framing.h"
#include "mosrun_terminal.h"

extern char** environ;

namespace homeward {
namespace {

constexpr int kForwarded[] = {SIGHUP,  SIGINT,  SIGQUIT,  SIGTERM, SIGUSR1,
                              SIGUSR2, SIGALRM, SIGWINCH, SIGCONT};
// A signal not acknowledged within this time is sent again (see send_signal in Run).
constexpr int kSignalResendMs = 1000;

struct Options {
  std::string where;
  bool keep_home = false;
  bool best = false;
  bool locked = false;
  bool partners = false;
  uint32_t min_free_mb = 0;
  std::string checkpoint_dir;  // -C, absolute
  uint64_t checkpoint_every_ms = 0;
  uint32_t checkpoint_keep = 0;
  int checkpoint_signal = 0;
  std::string restart_dir;  // -R, absolute
  std::vector<std::string> argv;
};

[[noreturn]] void Usage(int status) {
  fprintf(status ? stderr : stdout,
          "usage: mosrun [-h | -r NODE | -b] [-m MB] [-L | -l] [-G]\n"
          "              [-C DIR [-A MIN] [-N MAX] [-S SIG]] PROGRAM [ARGS...]\n"
          "       mosrun -R DIR [-r NODE | -b] [-A MIN] [-N MAX]\n"
          "Runs PROGRAM as a Homeward job whose home is this node.\n"
          "  -h        keep the job at home (never migrate it)\n"
          "  -r NODE   start the job on NODE\n"
          "  -b        start the job on the node where it gets the most CPU now\n"
          "  -m MB     only on nodes with MB megabytes of free memory, at start and when moved\n"
          "  -L        never move the job automatically (mosmigrate still moves it)\n"
          "  -l        let the balancer move the job (the default)\n"
          "  -G        let the balancer move the job to partner clusters' nodes too (by\n"
          "            default it stays in this cluster; mosmigrate moves it either way)\n"
          "  -C DIR    write the job's checkpoints into DIR (made if missing), each in a new\n"
          "            directory ckpt-N that appears only once complete\n"
          "  -A MIN    take a checkpoint every MIN minutes (a fraction too: -A 0.05 is 3 s)\n"
          "  -N MAX    keep only the newest MAX checkpoints (default: all)\n"
          "  -S SIG    the signal SIG (a number or a name such as USR1), delivered to the\n"
          "            job's main process, takes a checkpoint instead\n"
          "  -R DIR    restart the job from the newest good checkpoint in DIR, at home (then\n"
          "            on NODE with -r, on the best node with -b), its output to this\n"
          "            mosrun; it goes on checkpointing into DIR\n"
          "  --help    show this help\n");
  exit(status);
}

// `path` made absolute against the current directory (the daemon has its own).
std::string AbsolutePath(const char* path) {
  std::string text = path;
  if (text.empty()) {
    fprintf(stderr, "mosrun: an empty directory name\n");
    exit(2);
  }
  if (text[0] == '/') return text;
  char cwd[PATH_MAX];
  if (!getcwd(cwd, sizeof cwd)) {
    fprintf(stderr, "mosrun: cannot tell the current directory: %s\n", strerror(errno));
    exit(2);
  }
  return std::string(cwd) + "/" + text;
}

// A signal by number or name (USR1, SIGUSR1).
int SignalNumber(const char* text) {
  char* end = nullptr;
  long number = strtol(text, &end, 10);
  if (end != text && !*end && number > 0 && number < NSIG && number != SIGKILL &&
      number != SIGSTOP) {
    return static_cast<int>(number);
  }
  std::string name = text;
  if (name.rfind("SIG", 0) == 0) name = name.substr(3);
  for (int sig = 1; sig < NSIG; ++sig) {
    const char* abbrev = sigabbrev_np(sig);
    if (abbrev && name == abbrev && sig != SIGKILL && sig != SIGSTOP) return sig;
  }
  fprintf(stderr, "mosrun: -S takes a signal a program can catch, not '%s'\n", text);
  exit(2);
}

Options Parse(int argc, char** argv) {
  Options options;
  static const option kLong[] = {{"help", no_argument, nullptr, 'H'}, {}};
  int c;
  while ((c = getopt_long(argc, argv, "+hr:bm:LlGC:A:N:S:R:", kLong, nullptr)) != -1) {
    switch (c) {
      case 'C':
        options.checkpoint_dir = AbsolutePath(optarg);
        break;
      case 'R':
        options.restart_dir = AbsolutePath(optarg);
        break;
      case 'A': {
        char* end = nullptr;
        double minutes = strtod(optarg, &end);
        if (end == optarg || *end || !(minutes > 0) || minutes * 60000 < 1000 || minutes > 1e9) {
          fprintf(stderr, "mosrun: -A takes minutes (a second or more), not '%s'\n", optarg);
          exit(2);
        }
        options.checkpoint_every_ms = static_cast<uint64_t>(minutes * 60000 + 0.5);
        break;
      }
      case 'N': {
        char* end = nullptr;
        errno = 0;
        unsigned long keep = strtoul(optarg, &end, 10);
        if (errno || end == optarg || *end || keep == 0 || keep > UINT32_MAX || optarg[0] == '-') {
          fprintf(stderr, "mosrun: -N takes a positive number of checkpoints, not '%s'\n", optarg);
          exit(2);
        }
        options.checkpoint_keep = static_cast<uint32_t>(keep);
        break;
      }
      case 'S':
        options.checkpoint_signal = SignalNumber(optarg);
        break;
      case 'h':
        options.keep_home = true;
        break;
      case 'r':
        options.where = optarg;
        break;
      case 'b':
        options.best = true;
        break;
      case 'm': {
        char* end = nullptr;
        errno = 0;
        unsigned long mb = strtoul(optarg, &end, 10);
        if (errno || end == optarg || *end || mb == 0 || mb > UINT32_MAX || optarg[0] == '-') {
          fprintf(stderr, "mosrun: -m takes a positive number of megabytes, not '%s'\n", optarg);
          exit(2);
        }
        options.min_free_mb = static_cast<uint32_t>(mb);
        break;
      }
      case 'L':
        options.locked = true;
        break;
      case 'l':
        options.locked = false;
        break;
      case 'G':
        options.partners = true;
        break;
      case 'H':
        Usage(0);
      default:
        Usage(2);
    }
  }
  if (options.keep_home + !options.where.empty() + options.best > 1) {
    fprintf(stderr, "mosrun: -h, -r and -b each say where the job starts: give one\n");
    exit(2);
  }
  for (int i = optind; i < argc; ++i) options.argv.emplace_back(argv[i]);
  if (!options.restart_dir.empty()) {
    if (!options.argv.empty() || !options.checkpoint_dir.empty() || options.checkpoint_signal ||
        options.keep_home) {
      fprintf(stderr,
              "mosrun: -R restarts the job its checkpoints hold: it takes no program and no "
              "-C, -S or -h\n");
      exit(2);
    }
    return options;
  }
  if (options.checkpoint_dir.empty() &&
      (options.checkpoint_every_ms || options.checkpoint_keep || options.checkpoint_signal)) {
    fprintf(stderr, "mosrun: -A, -N and -S need a checkpoint directory: -C DIR\n");
    exit(2);
  }
  if (options.argv.empty()) Usage(2);
  return options;
}

void Send(int fd, const std::function<void(schema::ControlRequest::Builder)>& fill) {
  capnp::MallocMessageBuilder message;
  auto request = message.initRoot<schema::ControlRequest>();
  request.setVersion(schema::CONTROL_VERSION);
  fill(request);
  WriteFrame(fd, message);
}

// Ends mosrun the way the job ended, so that a shell reports the same status.
[[noreturn]] void ExitLike(bool signaled, int code) {
  if (!signaled) exit(code & 0xff);
  rlimit no_core{0, 0};
  setrlimit(RLIMIT_CORE, &no_core);  // the job's death, not ours, is what is reported
  signal(code, SIG_DFL);
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, code);
  sigprocmask(SIG_UNBLOCK, &set, nullptr);
  kill(getpid(), code);
  exit(128 + code);  // for signals that do not terminate
}

// The program as exec would find it on PATH, or nothing (then the job reports the error).
std::string FindProgram(const std::string& name) {
  if (name.find('/') != std::string::npos) return name;
  const char* path = getenv("PATH");
  std::string dirs = path ? path : "/usr/local/bin:/usr/bin:/bin";
  size_t start = 0;
  while (start <= dirs.size()) {
    size_t end = dirs.find(':', start);
    if (end == std::string::npos) end = dirs.size();
    std::string candidate = (end > start ? dirs.substr(start, end - start) : ".") + "/" + name;
    if (access(candidate.c_str(), X_OK) == 0) return candidate;
    start = end + 1;
  }
  return {};
}

// A statically linked program never loads the shim, so away from home it would see the
// node it runs on instead of its home: it may run only when kept at home.
void RefuseStaticAway(const Options& options) {
  if (options.keep_home) return;
  std::string program = FindProgram(options.argv[0]);
  if (program.empty()) return;
  ExecutableKind kind;
  try {
    kind = ReadExecutableInfo(program).kind;
  } catch (const Error&) {
    return;  // unreadable or not a program: the job itself reports why it cannot run
  }
  if (kind == ExecutableKind::kStatic) {
    Fail(ErrorKind::kInvalidInput,
         "{} is statically linked: it cannot be given its home's "
         "view away from home; run it with mosrun -h to keep it at home",
         program);
  }
}

// How long mosrun waits for its daemon to come back: $HOMEWARD_DAEMON_WAIT_S seconds,
// 300 by default.
int DaemonWaitSeconds() {
  const char* text = getenv("HOMEWARD_DAEMON_WAIT_S");
  if (!text || !*text) return 300;
  char* end = nullptr;
  long value = strtol(text, &end, 10);
  return *end || value < 0 ? 300 : static_cast<int>(std::min(value, 86400L));
}

// The daemon went away with the job unfinished: says so once, waits for a daemon to listen
// again (with back-off), and presents the job to it. Nothing when none came in time, or
// the new daemon does not have the job.
// `signals` is mosrun's signalfd: signals that come meanwhile are read into `pending`, in
// the order they came, to be delivered once the job is taken back (a signalfd would keep
// only one of each while they wait there).
std::optional<ControlClient> ReconnectToDaemon(const std::string& socket, uint64_t stdout_had,
                                               uint64_t stderr_had, int signals,
                                               std::vector<int>& pending) {
  static bool said = false;
  if (!said) {
    fprintf(stderr, "mosrun: waiting for the node daemon to return\n");
    said = true;
  }
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(DaemonWaitSeconds());
  auto pause = std::chrono::milliseconds(20);
  for (;;) {
    try {
      ControlClient client = ControlClient::Connect(socket);
      Send(client.fd(), [&](auto request) {
        auto resume = request.initResumeJob();
        resume.setStdoutOffset(stdout_had);
        resume.setStderrOffset(stderr_had);
      });
      return client;
    } catch (const Error& e) {
      if (std::chrono::steady_clock::now() >= deadline) {
        fprintf(stderr, "mosrun: the node daemon did not return: %s\n", e.what());
        return std::nullopt;
      }
    }
    // Client back-off while the daemon restarts, not a wait for a test; signals that come
    // meanwhile are read at once, so that none is merged with an earlier one of its kind.
    auto until = std::chrono::steady_clock::now() + pause;
    for (auto now = std::chrono::steady_clock::now(); now < until;
         now = std::chrono::steady_clock::now()) {
      pollfd wait = {signals, POLLIN, 0};
      auto left = std::chrono::duration_cast<std::chrono::milliseconds>(until - now).count();
      if (poll(&wait, 1, static_cast<int>(std::max<int64_t>(left, 1))) <= 0) continue;
      signalfd_siginfo info;
      if (read(signals, &info, sizeof info) == sizeof info) {
        pending.push_back(static_cast<int>(info.ssi_signo));
      }
    }
    pause = std::min(pause * 2, std::chrono::milliseconds(1000));
  }
}

int Run(const Options& options) {
  if (options.restart_dir.empty()) RefuseStaticAway(options);
  if (!options.checkpoint_dir.empty() && mkdir(options.checkpoint_dir.c_str(), 0700) != 0 &&
      errno != EEXIST) {
    throw SystemError(errno, fmt::format("cannot create {}", options.checkpoint_dir));
  }
  char cwd[PATH_MAX];
  if (!getcwd(cwd, sizeof cwd)) {
    throw SystemError(errno, "cannot tell the current directory");
  }
  sigset_t forwarded;
  sigemptyset(&forwarded);
  for (int sig : kForwarded) sigaddset(&forwarded, sig);
  sigprocmask(SIG_BLOCK, &forwarded, nullptr);
  Fd signals = Fd::Adopt(HW_SYSCALL(signalfd(-1, &forwarded, SFD_CLOEXEC), "signalfd"));
  signal(SIGPIPE, SIG_IGN);

  // On a terminal, the job gets a pseudo-terminal of its own that follows this one. A
  // restarted job has the stdio it was checkpointed with: the terminal is held aside until
  // the daemon says the job has one (jobStarted), and let go if it has pipes.
  std::optional<UserTerminal> terminal =
      options.restart_dir.empty() ? UserTerminal::Open() : std::nullopt;
  std::optional<UserTerminal> restart_terminal =
      options.restart_dir.empty() ? std::nullopt : UserTerminal::Open();
  // A restarted job's terminal takes this terminal's window size once its input is placed.
  bool window_owed = false;

  // The connection to the daemon is mosrun's own; the job never inherits it.
  std::string socket = ControlSocketPath();
  std::optional<ControlClient> client = ControlClient::Connect(socket);
  int fd = client->fd();
  if (!options.restart_dir.empty()) {
    Send(fd, [&](auto request) {
      auto spec = request.initRestartJob();
      spec.setDir(options.restart_dir);
      spec.setCheckpointEveryMs(options.checkpoint_every_ms);
      spec.setCheckpointKeep(options.checkpoint_keep);
      spec.setWhere(options.where);
      spec.setPlaceBest(options.best);
    });
  } else {
    Send(fd, [&](auto request) {
      auto spec = request.initStartJob();
      auto argv = spec.initArgv(static_cast<unsigned>(options.argv.size()));
      for (unsigned i = 0; i < options.argv.size(); ++i) argv.set(i, options.argv[i]);
      std::vector<std::string> env;
      for (char** e = environ; *e; ++e) {
        // Whether the job has a terminal is mosrun's to say, not the caller's environment's.
        if (strncmp(*e, terminal::kEnvName, strlen(terminal::kEnvName)) == 0 &&
            (*e)[strlen(terminal::kEnvName)] == '=') {
          continue;
        }
        env.emplace_back(*e);
      }
      if (terminal) env.push_back(terminal->EnvEntry());
      auto env_list = spec.initEnv(static_cast<unsigned>(env.size()));
      for (unsigned i = 0; i < env.size(); ++i) env_list.set(i, env[i]);
      spec.setCwd(cwd);
      spec.setWhere(options.where);
      spec.setKeepHome(options.keep_home);
      spec.setPlaceBest(options.best);
      spec.setMinFreeMb(options.min_free_mb);
      spec.setLocked(options.locked);
      spec.setPartners(options.partners);
      spec.setCheckpointDir(options.checkpoint_dir);
      spec.setCheckpointEveryMs(options.checkpoint_every_ms);
      spec.setCheckpointKeep(options.checkpoint_keep);
      spec.setCheckpointSignal(options.checkpoint_signal);
    });
  }

  FrameDecoder decoder(kMaxControlFrameBytes);
  // How much of the job's stdout and stderr has come: after a restart of the daemon, the
  // new one sends again from there (see "Daemon restarts" in docs/ARCHITECTURE.md).
  uint64_t output_had[3] = {0, 0, 0};
  bool stdin_open = true;
  bool stdout_broken = false;
  char buffer[64 * 1024];
  // Input is a stream of bytes with offsets. mosrun keeps every byte the job's node has
  // not yet written into the job's stdin (from offset input_acked on): at most the input
  // window, so that no daemon holds more of it and a signal never waits behind a flood of
  // input; and when the job moves, its new node says where its input goes on and mosrun
  // sends again from there what was lost with the old node.
  std::string input_kept;
  uint64_t input_acked = 0;
  bool input_end_sent = false;
  // A job restarted from a checkpoint is given again the input it had after it (see
  // "Checkpoints and recovery"): this mosrun's input comes after that, from the offset its
  // first jobInputResume names; nothing is read before.
  bool input_placed = options.restart_dir.empty();
  // The daemon closes its end right after the job's exit: input or a signal sent at that
  // moment meets a closed socket, and the exit is still there to read.
  bool daemon_hung_up = false;
  auto deliver = [&](const std::function<void(schema::ControlRequest::Builder)>& fill) {
    if (daemon_hung_up) return;
    try {
      Send(fd, fill);
    } catch (const Error& e) {
      if (e.sys_errno() != EPIPE && e.sys_errno() != ECONNRESET) throw;
      daemon_hung_up = true;
      stdin_open = false;
    }
  };
  // Signals read while mosrun waits for its daemon, queued once it is back.
  std::vector<int> signals_pending;
  // Every signal for the job is numbered and kept, in order, until the job's node says it
  // was delivered (jobSignalDelivered): the daemon, or the job's node, may die or the job
  // move after reading one and before delivering it. One is in flight at a time, so they
  // arrive in order and the job's init can drop a number it had already; the first kept
  // is sent again after a reconnect, when the job arrives on a node, and each second
  // without an answer.
  std::deque<std::pair<uint32_t, int>> signals_kept;
  uint32_t signals_numbered = 0;
  auto signal_sent = std::chrono::steady_clock::time_point{};
  auto send_first_signal = [&] {
    if (signals_kept.empty()) return;
    auto [number, sig] = signals_kept.front();
    signal_sent = std::chrono::steady_clock::now();
    deliver([&](auto request) {
      auto numbered = request.initJobSignalNumbered();
      numbered.setNumber(number);
      numbered.setSignal(sig);
    });
  };
  auto send_signal = [&](int sig) {
    signals_kept.emplace_back(++signals_numbered, sig);
    if (signals_kept.size() == 1) send_first_signal();
  };
  auto signal_delivered = [&](uint32_t number) {
    if (signals_kept.empty() || signals_kept.front().first != number) return;
    signals_kept.pop_front();
    send_first_signal();
  };
  auto send_input = [&](uint64_t offset, const char* data, size_t size) {
    deliver([&](auto request) {
      auto chunk = request.initJobInputAt();
      chunk.setOffset(offset);
      chunk.setData(kj::arrayPtr(reinterpret_cast<const kj::byte*>(data), size));
    });
  };
  auto send_input_end = [&] {
    uint64_t end = input_acked + input_kept.size();
    deliver([&](auto request) { request.setJobInputEndAt(end); });
  };
  // The job's node has every byte before `offset`: those need not be kept any longer.
  auto input_written = [&](uint64_t offset) {
    if (offset <= input_acked) return;
    size_t drop = static_cast<size_t>(std::min<uint64_t>(offset - input_acked, input_kept.size()));
    input_kept.erase(0, drop);
    input_acked += drop;
  };
  // Bytes of the terminal stream for the job (an interactive job's input), sent as input.
  auto send_stream = [&](const std::string& bytes) {
    if (bytes.empty() || input_end_sent) return;
    uint64_t offset = input_acked + input_kept.size();
    input_kept.append(bytes);
    send_input(offset, bytes.data(), bytes.size());
  };
  // mosrun was continued (fg or bg at home): the terminal is raw again if it is ours, and
  // the job goes on.
  auto continued = [&] {
    terminal->EnterRaw();
    send_signal(SIGCONT);
  };
  if (terminal) {
    send_stream(terminal->InitialFrames());
    terminal->EnterRaw();
  }
  for (;;) {
    pollfd fds[3] = {{fd, POLLIN, 0}, {signals.get(), POLLIN, 0}, {0, POLLIN, 0}};
    bool may_send = input_kept.size() + sizeof buffer <= schema::INPUT_WINDOW;
    // An interactive job's input is read only while mosrun has the terminal's foreground.
    // A shell's `fg` of a job running in the background gives it the terminal without a
    // signal: in the background, mosrun looks again every 200 ms, and takes raw mode once
    // the terminal is its own.
    bool foreground = !terminal || terminal->Foreground();
    if (terminal && foreground) terminal->EnterRaw();
    nfds_t count = stdin_open && may_send && foreground && input_placed ? 3 : 2;
    int timeout = foreground ? -1 : 200;
    if (!signals_kept.empty()) {
      timeout = timeout < 0 ? kSignalResendMs : std::min(timeout, kSignalResendMs);
    }
    if (poll(fds, count, timeout) < 0) {
      if (errno == EINTR) continue;
      throw SystemError(errno, "poll");
    }
    if (!signals_kept.empty() && std::chrono::steady_clock::now() - signal_sent >=
                                     std::chrono::milliseconds(kSignalResendMs)) {
      send_first_signal();  // no answer: the job was moving, or the message was lost
    }
    if (fds[1].revents & POLLIN) {
      signalfd_siginfo info;
      if (read(signals.get(), &info, sizeof info) == sizeof info) {
        int sig = static_cast<int>(info.ssi_signo);
        if (terminal && sig == SIGWINCH) {
          send_stream(terminal->WindowFrame());  // the job's terminal takes the new size
        } else if (restart_terminal && sig == SIGWINCH) {
          // Not yet known whether the restarted job has a terminal: if it has, it takes
          // the size once jobStarted says so.
        } else if (terminal && sig == SIGCONT) {
          continued();
        } else {
          send_signal(sig);
        }
      }
    }
    if (count == 3 && (fds[2].revents & (POLLIN | POLLHUP | POLLERR))) {
      // An interactive job's keys go as data frames of the terminal stream.
      size_t room = terminal ? sizeof buffer - terminal::kHeaderBytes : sizeof buffer;
      ssize_t n = read(0, buffer, room);
      if (n > 0 && terminal) {
        send_stream(UserTerminal::DataFrame(buffer, static_cast<size_t>(n)));
      } else if (n > 0) {
        uint64_t offset = input_acked + input_kept.size();
        input_kept.append(buffer, static_cast<size_t>(n));
        send_input(offset, buffer, static_cast<size_t>(n));
      } else if (n == 0 || (errno != EINTR && errno != EAGAIN)) {
        stdin_open = false;
        input_end_sent = true;
        send_input_end();
      }
    }
    if (fds[0].revents & (POLLIN | POLLHUP | POLLERR)) {
      ssize_t n = read(fd, buffer, sizeof buffer);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) {
        // The daemon died (or was restarted): the job runs on; its next daemon takes it
        // back, and this mosrun with it.
        auto reconnected = ReconnectToDaemon(socket, output_had[1], output_had[2],
                                             signals.get(), signals_pending);
        if (!reconnected) {
          fprintf(stderr,
                  "mosrun: lost the connection to the node daemon at %s; the job "
                  "is gone\n",
                  socket.c_str());
          return 255;
        }
        client = std::move(reconnected);
        fd = client->fd();
        decoder = FrameDecoder(kMaxControlFrameBytes);
        daemon_hung_up = false;
        stdin_open = !input_end_sent;
        // After resumeJob: the daemon gives the job this connection, then its signals: the
        // one it may have read and not delivered first, then those read meanwhile.
        std::vector<int> held = std::move(signals_pending);
        signals_pending.clear();
        send_first_signal();
        for (int sig : held) send_signal(sig);
        continue;
      }
      decoder.Feed(buffer, static_cast<size_t>(n));
      while (auto message = decoder.Next()) {
        auto reply = message->Root<schema::ControlReply>();
        switch (reply.which()) {
          case schema::ControlReply::JOB_OUTPUT: {
            auto output = reply.getJobOutput();
            int target = output.getFd() == 2 ? 2 : 1;
            auto data = output.getData();
            output_had[target] += data.size();
            if (target == 1 && stdout_broken) break;
            try {
              if (target == 1 && terminal) {
                terminal->Output(
                    reinterpret_cast<const char*>(data.begin()), data.size(),
                    [](const char* bytes, size_t size) { WriteAll(1, bytes, size, "stdout"); },
                    [&](int sig) {
                      StopForJobControl(*terminal, sig);
                      continued();
                    });
                break;
              }
              WriteAll(target, data.begin(), data.size(), target == 1 ? "stdout" : "stderr");
            } catch (const Error& e) {
              if (e.sys_errno() != EPIPE) throw;
              // Our reader is gone: the job gets the SIGPIPE it would have had at home.
              stdout_broken = true;
              send_signal(SIGPIPE);
            }
            break;
          }
          case schema::ControlReply::JOB_INPUT_WRITTEN:
            input_written(reply.getJobInputWritten());
            break;
          case schema::ControlReply::JOB_INPUT_RESUME: {
            // The job arrived on a node (moved, or continued): what it does not have yet
            // goes again, from where its input goes on, and so does the end of input.
            auto resume = reply.getJobInputResume();
            if (!input_placed) {
              input_acked = resume.getOffset();
              input_placed = true;
              if (window_owed) send_stream(terminal->WindowFrame());
              window_owed = false;
            }
            input_written(resume.getOffset());
            uint64_t from = std::max(resume.getOffset(), input_acked);
            for (uint64_t at = from; at < input_acked + input_kept.size();) {
              size_t size = static_cast<size_t>(
                  std::min<uint64_t>(input_acked + input_kept.size() - at, sizeof buffer));
              send_input(at, input_kept.data() + (at - input_acked), size);
              at += size;
            }
            if (input_end_sent && !resume.getEnded()) send_input_end();
            send_first_signal();  // a signal the old node did not deliver goes here now
            break;
          }
          case schema::ControlReply::JOB_SIGNAL_DELIVERED:
            signal_delivered(reply.getJobSignalDelivered());
            break;
          case schema::ControlReply::JOB_EXITED: {
            auto exit = reply.getJobExited();
            if (terminal) terminal->Restore();
            if (exit.hasMessage() && exit.getMessage().size() > 0) {
              fprintf(stderr, "mosrun: %s\n", exit.getMessage().cStr());
            }
            ExitLike(exit.getSignaled(), exit.getCode());
          }
          case schema::ControlReply::ERROR: {
            auto error = reply.getError();
            fprintf(stderr, "mosrun: %s\n", error.getMessage().cStr());
            return 255;
          }
          case schema::ControlReply::JOB_STARTED: {
            auto started = reply.getJobStarted();
            if (started.hasRestartedFrom() && started.getRestartedFrom().size() > 0) {
              fprintf(stderr, "mosrun: job restarted from %s\n", started.getRestartedFrom().cStr());
            }
            if (restart_terminal && started.getTerminal().size() > 0) {
              // The restored job's terminal follows this one from here on: its modes are
              // the job's own (an editor's raw mode stays), its window size this one's.
              terminal.emplace(std::move(*restart_terminal));
              if (input_placed) {
                send_stream(terminal->WindowFrame());
              } else {
                window_owed = true;
              }
              terminal->EnterRaw();
            } else if (!options.restart_dir.empty() && !terminal &&
                       started.getTerminal().size() > 0) {
              fprintf(stderr,
                      "mosrun: the job was checkpointed on a terminal: restart it from one "
                      "(its output comes as the terminal stream)\n");
            }
            restart_terminal.reset();
            break;
          }
          default:
            break;  // what later versions add
        }
      }
    }
  }
}

}  // namespace
}  // namespace homeward

int main(int argc, char** argv) {
  auto options = homeward::Parse(argc, argv);
  try {
    return homeward::Run(options);
  } catch (const homeward::Error& e) {
    fprintf(stderr, "mosrun: %s\n", e.what());
    return 255;
  }
}
