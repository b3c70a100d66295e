// Checkpoint and restore with CRIU: running criu in the right namespace with the right
// descriptors, and turning its failures into errors that quote its log.
#include "checkpoint.h"

#include <dirent.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <fstream>
#include <mutex>
#include <random>
#include <set>
#include <sstream>
#include <string_view>
#include <thread>

#include "child_process.h"
#include "error.h"
#include "fd.h"
#include "homeward_config.h"
#include "install_paths.h"
#include "image_stream.h"

extern char** environ;

namespace homeward::migrate {

namespace {

using Clock = std::chrono::steady_clock;

std::chrono::microseconds Since(Clock::time_point start) {
  return std::chrono::duration_cast<std::chrono::microseconds>(Clock::now() - start);
}

// The environment knobs of this library's CRIU patches (0010, 0011, 0012). Only the
// library sets them: a value inherited from the daemon's own environment is dropped
// from criu's, so that it cannot shadow what a call says (CriuProcess).
enum class CriuKnob { kKdatFd, kScriptActions, kRestoreHugePages };
constexpr std::array<std::string_view, 3> kCriuKnobNames{"CRIU_KDAT_FD", "CRIU_SCRIPT_ACTIONS",
                                                         "CRIU_RESTORE_HUGE_PAGES"};

std::string CriuKnobEntry(CriuKnob knob, std::string_view value) {
  return fmt::format("{}={}", kCriuKnobNames[static_cast<size_t>(knob)], value);
}

// criu probes the kernel at every start (kerndat: dozens of checks, iptables three
// times; 35-40 ms on a virtual machine) and keeps what it found in /run only where /run
// is a tmpfs. This process keeps it for all its criu runs in a memfd (CRIU patch 0010:
// CRIU_KDAT_FD), sealed once a run has filled it: a descriptor a run let slip could
// not change what later runs believe of the kernel. Gone with the process, as /run's
// copy is with a reboot.
class KerndatCache {
 public:
  static KerndatCache& Get() {
    static KerndatCache cache;
    return cache;
  }
  // -1 when the kernel has no memfd (criu then probes each time, as before).
  int fd() const { return fd_.get(); }
  bool sealed() const { return sealed_; }
  void SealOnceFilled() {
    if (sealed_ || !fd_.valid()) return;
    struct stat st;
    if (::fstat(fd_.get(), &st) != 0 || st.st_size == 0) return;
    ::fcntl(fd_.get(), F_ADD_SEALS, F_SEAL_SEAL | F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE);
    // Read back: another thread's run may have sealed it a moment ago (adding then fails).
    int seals = ::fcntl(fd_.get(), F_GET_SEALS);
    if (seals >= 0 && (seals & F_SEAL_WRITE)) sealed_ = true;
  }

 private:
  KerndatCache()
      : fd_(Fd::Adopt(::memfd_create("criu-kerndat", MFD_CLOEXEC | MFD_ALLOW_SEALING))) {}
  Fd fd_;
  std::atomic<bool> sealed_{false};
};

struct CriuRun {
  ExitStatus status;
  std::string output;  // criu's stdout and stderr
  std::chrono::microseconds time{0};
};

struct CriuCall {
  std::string criu_path;
  std::vector<std::string> args;  // after argv[0]
  int net_namespace_fd = -1;      // setns() into it before exec; -1: stay
  int mount_namespace_fd = -1;    // setns() into it before exec; -1: stay
  std::vector<int> keep_fds;      // passed to criu under their own numbers
  std::vector<std::string> extra_env;
};

// A criu started and not yet waited for. criu is opened before entering the namespace
// and run with execveat, so it need not exist at the same path inside the job's mount
// namespace.
class CriuProcess {
 public:
  explicit CriuProcess(const CriuCall& call);
  CriuProcess(const CriuProcess&) = delete;
  CriuProcess& operator=(const CriuProcess&) = delete;
  // A criu never waited for is killed (its job is then as criu leaves it on SIGKILL).
  ~CriuProcess() {
    if (pid_ <= 0) return;
    ::kill(pid_, SIGKILL);
    int status;
    while (::waitpid(pid_, &status, 0) < 0 && errno == EINTR) {
    }
    DisownChild(pid_);
  }
  // Reads criu's output to its end and waits for it to exit.
  CriuRun Wait();
  // Waits at most `limit` for criu to exit on its own (and reaps it); one still running
  // is left to the destructor, which kills it.
  void StopWithin(std::chrono::milliseconds limit) {
    auto deadline = Clock::now() + limit;
    int status;
    while (pid_ > 0 && Clock::now() < deadline) {
      if (::waitpid(pid_, &status, WNOHANG) == pid_) DisownChild(std::exchange(pid_, -1));
      if (pid_ > 0) std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
  }

 private:
  pid_t pid_ = -1;
  Fd output_;
  Clock::time_point start_;
};

CriuProcess::CriuProcess(const CriuCall& call) {
  Fd binary = Fd::Open(call.criu_path, O_PATH);
  Fd null = Fd::Open("/dev/null", O_RDWR);
  std::vector<std::string> argv_strings{"criu"};
  argv_strings.insert(argv_strings.end(), call.args.begin(), call.args.end());
  std::vector<char*> argv;
  for (auto& s : argv_strings) argv.push_back(s.data());
  argv.push_back(nullptr);
  std::vector<std::string> ours = call.extra_env;
  std::vector<int> keep_fds = call.keep_fds;
  if (int cache = KerndatCache::Get().fd(); cache >= 0) {
    ours.push_back(CriuKnobEntry(CriuKnob::kKdatFd, std::to_string(cache)));
    keep_fds.push_back(cache);
  }
  // criu reads the first of a name: a value of ours, or of a knob only this library sets,
  // inherited from the daemon's own environment must not shadow what the call says.
  auto set_here = [&](std::string_view entry) {
    size_t equals = entry.find('=');
    if (equals == std::string_view::npos) return false;
    if (std::ranges::find(kCriuKnobNames, entry.substr(0, equals)) != kCriuKnobNames.end()) {
      return true;
    }
    std::string_view name = entry.substr(0, equals + 1);
    return std::any_of(ours.begin(), ours.end(),
                       [&](const std::string& mine) { return mine.starts_with(name); });
  };
  std::vector<std::string> env_strings;
  for (char** e = environ; *e; ++e) {
    if (!set_here(*e)) env_strings.emplace_back(*e);
  }
  env_strings.insert(env_strings.end(), ours.begin(), ours.end());
  std::vector<char*> envp;
  for (auto& s : env_strings) envp.push_back(s.data());
  envp.push_back(nullptr);
  Pipe output = Pipe::Create();
  Pipe errors = Pipe::Create();

  // What the child needs, ready before it starts: it runs in our memory until criu's
  // exec (SpawnSharingMemory), and may only make async-signal-safe calls.
  struct Exec {
    const CriuCall* call;
    const std::vector<int>* keep_fds;
    int binary, null, output, err_fd;
    char** argv;
    char** envp;
  } exec{&call, &keep_fds, binary.get(), null.get(), output.write.get(), errors.write.get(),
         argv.data(), envp.data()};
  start_ = Clock::now();
  pid_t pid = SpawnSharingMemory(
      [](void* data) {
        auto* e = static_cast<Exec*>(data);
        sigset_t all;
        sigemptyset(&all);
        sigprocmask(SIG_SETMASK, &all, nullptr);
        if (e->call->net_namespace_fd >= 0 && setns(e->call->net_namespace_fd, CLONE_NEWNET) < 0) {
          goto fail;
        }
        if (e->call->mount_namespace_fd >= 0 &&
            setns(e->call->mount_namespace_fd, CLONE_NEWNS) < 0) {
          goto fail;
        }
        if (dup2(e->null, 0) < 0 || dup2(e->output, 1) < 0 || dup2(e->output, 2) < 0) goto fail;
        for (int fd : *e->keep_fds) {
          int flags = fcntl(fd, F_GETFD);
          if (flags < 0 || fcntl(fd, F_SETFD, flags & ~FD_CLOEXEC) < 0) goto fail;
        }
        syscall(SYS_execveat, e->binary, "", e->argv, e->envp, AT_EMPTY_PATH);
      fail:
        int err = errno;
        (void)!write(e->err_fd, &err, sizeof err);
        _exit(127);
      },
      &exec);
  pid_ = pid;
  OwnChild(pid_);
  errors.write.Reset();
  output.write.Reset();
  int child_errno = 0;
  bool exec_failed =
      ReadSome(errors.read.get(), &child_errno, sizeof child_errno, "criu exec status") > 0;
  if (exec_failed) {
    int status;
    ::waitpid(pid_, &status, 0);
    DisownChild(std::exchange(pid_, -1));
    throw SystemError(child_errno,
                      fmt::format("cannot run {} (in the job's mount namespace)", call.criu_path));
  }
  output_ = std::move(output.read);
}

CriuRun CriuProcess::Wait() {
  CriuRun run;
  char buffer[4096];
  while (size_t n = ReadSome(output_.get(), buffer, sizeof buffer, "criu output")) {
    if (run.output.size() < (1 << 16)) run.output.append(buffer, n);
  }
  int status = 0;
  HW_SYSCALL(::waitpid(pid_, &status, 0), "wait for criu");
  DisownChild(std::exchange(pid_, -1));
  run.status = ExitStatus::FromWaitStatus(status);
  run.time = Since(start_);
  KerndatCache::Get().SealOnceFilled();
  return run;
}

// Runs criu to completion.
CriuRun RunCriu(const CriuCall& call) { return CriuProcess(call).Wait(); }

// A pipe for criu's --status-fd: criu writes one byte and closes it once it is ready to
// serve (a lazy dump: its images are written; lazy-pages: its socket is listening).
struct StatusPipe {
  Pipe pipe = Pipe::Create();
  // Adds the option; the write end goes to criu only.
  void Pass(CriuCall& call) {
    call.keep_fds.push_back(pipe.write.get());
    call.args.push_back("--status-fd");
    call.args.push_back(std::to_string(pipe.write.get()));
  }
  // After criu started: true once it is ready, false when it exited first.
  bool Ready() {
    pipe.write.Reset();
    char byte;
    return ReadSome(pipe.read.get(), &byte, 1, "criu's status") == 1;
  }
};

// The lines of criu's log (or output) that say what went wrong: its errors, else its end.
std::string QuoteLog(const std::string& log_path, const std::string& output) {
  std::ifstream in(log_path);
  std::vector<std::string> errors, tail;
  std::string line;
  while (std::getline(in, line)) {
    if (line.find("Error") != std::string::npos) errors.push_back(line);
    tail.push_back(line);
    if (tail.size() > 4) tail.erase(tail.begin());
  }
  std::istringstream out(output);
  while (std::getline(out, line)) {
    if (!line.empty()) errors.push_back(line);
  }
  const auto& chosen = errors.empty() ? tail : errors;
  size_t first = chosen.size() > 8 ? chosen.size() - 8 : 0;
  std::string quote;
  for (size_t i = first; i < chosen.size(); ++i) {
    // criu prefixes "(00.012345) " timestamps; keep them, they show where time went.
    quote += "\n  " + chosen[i];
  }
  return quote.empty() ? " (criu wrote no log)" : quote;
}

// A scratch directory for criu's log and pid file, removed when done.
class WorkDir {
 public:
  WorkDir(const std::string& image_dir, const std::string& requested) {
    if (!requested.empty()) {
      path_ = requested;
      return;
    }
    path_ = image_dir + ".work";
    HW_SYSCALL(::mkdir(path_.c_str(), 0700), "create criu work directory {}", path_);
    owned_ = true;
  }
  WorkDir(const WorkDir&) = delete;
  WorkDir& operator=(const WorkDir&) = delete;
  ~WorkDir() {
    if (!owned_) return;
    try {
      RemoveImageDir(path_);
    } catch (...) {
      // Best effort: a leftover scratch directory is reported nowhere but harms nothing.
    }
  }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  bool owned_ = false;
};

uint64_t NsInode(const std::string& path) {
  struct stat st;
  HW_SYSCALL(::stat(path.c_str(), &st), "stat {}", path);
  return st.st_ino;
}

std::string FdPath(const Fd& fd) {
  return fmt::format("/proc/self/fd/{}", fd.get());
}

uint64_t DirBytes(const std::string& dir) {
  std::unique_ptr<DIR, int (*)(DIR*)> handle(::opendir(dir.c_str()), ::closedir);
  if (!handle) return 0;
  uint64_t total = 0;
  while (dirent* entry = ::readdir(handle.get())) {
    struct stat st;
    if (::fstatat(::dirfd(handle.get()), entry->d_name, &st, AT_SYMLINK_NOFOLLOW) == 0 &&
        S_ISREG(st.st_mode)) {
      total += static_cast<uint64_t>(st.st_size);
    }
  }
  return total;
}

// Reads criu's stats-dump image: two magic words, a length, then a protobuf StatsEntry
// whose field 1 is DumpStatsEntry {1 freezing_time, 2 frozen_time, 3 memdump_time,
// 4 memwrite_time, 7 pages_written}. A tiny decoder spares a protobuf dependency.
bool ReadVarint(const uint8_t*& p, const uint8_t* end, uint64_t& value) {
  value = 0;
  for (int shift = 0; p < end && shift < 64; shift += 7) {
    uint8_t byte = *p++;
    value |= uint64_t{byte & 0x7fu} << shift;
    if (!(byte & 0x80)) return true;
  }
  return false;
}

void ReadDumpStats(const std::string& work_dir, DumpResult& result) {
  std::ifstream in(work_dir + "/stats-dump", std::ios::binary);
  std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (bytes.size() < 12) return;
  const auto* p = reinterpret_cast<const uint8_t*>(bytes.data()) + 12;
  const auto* end = reinterpret_cast<const uint8_t*>(bytes.data()) + bytes.size();
  uint64_t key, length;
  if (!ReadVarint(p, end, key) || key != ((1 << 3) | 2) || !ReadVarint(p, end, length)) return;
  end = std::min(end, p + length);
  while (p < end) {
    uint64_t value;
    if (!ReadVarint(p, end, key) || (key & 7) != 0 || !ReadVarint(p, end, value)) return;
    switch (key >> 3) {
      case 2:
        result.frozen_time = std::chrono::microseconds(value);
        break;
      case 3:
        result.memdump_time = std::chrono::microseconds(value);
        break;
      case 7:
        result.pages_written = value;
        break;
      default:
        break;
    }
  }
}

// Fails the restore with the outcome the fault point "restore-criu" asks criu for:
// a post-restore action script that fails makes criu undo the restore it just did.
// The action script of a fault point that fails criu at its step `action`. criu runs an
// action script by path (execvp, no shell), for every step: so it is a file of its own, in
// criu's work directory, that fails at that step alone. criu works in that directory (it
// chdirs there at start), so the relative path finds it wherever criu runs, the job's
// mount namespace included.
std::string FailAtStepScript(const std::string& work_dir, std::string_view action) {
  std::string name = fmt::format("fault-{}", action);
  std::string path = work_dir + "/" + name;
  {
    std::ofstream out(path, std::ios::trunc);
    out << "#!/bin/sh\n# HOMEWARD_FAULT: criu fails at its " << action << " step\n"
        << "test \"$CRTOOLS_SCRIPT_ACTION\" != " << action << "\n";
    if (!out.flush()) Fail(ErrorKind::kFailed, "cannot write the fault script {}", path);
  }
  HW_SYSCALL(::chmod(path.c_str(), 0700), "chmod {}", path);
  return "./" + name;
}

// A script for criu's action hook that holds the restore at `action` for `seconds`: the
// restored job exists, criu has not finished (HOMEWARD_FAULT restore-hold).
std::string HoldAtStepScript(const std::string& work_dir, std::string_view action, int seconds) {
  std::string name = fmt::format("hold-{}", action);
  std::string path = work_dir + "/" + name;
  {
    std::ofstream out(path, std::ios::trunc);
    out << "#!/bin/sh\n# HOMEWARD_FAULT: criu holds at its " << action << " step\n"
        << "if [ \"$CRTOOLS_SCRIPT_ACTION\" = " << action << " ]; then sleep " << seconds
        << "; fi\nexit 0\n";
    if (!out.flush()) Fail(ErrorKind::kFailed, "cannot write the fault script {}", path);
  }
  HW_SYSCALL(::chmod(path.c_str(), 0700), "chmod {}", path);
  return "./" + name;
}

// Whether this kernel gives processes huge pages at all: the administrator's "never"
// holds for the pages a restore reads too.
bool HugePagesAllowed() {
  std::ifstream in("/sys/kernel/mm/transparent_hugepage/enabled");
  std::string modes;
  std::getline(in, modes);
  return in && modes.find("[never]") == std::string::npos;
}

// criu runs each script at only the steps some script names (CRIU patch 0011), and every
// script still checks CRTOOLS_SCRIPT_ACTION itself.
void AddActionScripts(CriuCall& call, const std::vector<ActionScript>& scripts) {
  std::set<std::string> actions;
  for (const ActionScript& script : scripts) {
    call.args.push_back("--action-script");
    call.args.push_back(script.path);
    actions.insert(script.action);
  }
  if (!actions.empty()) {
    call.extra_env.push_back(
        CriuKnobEntry(CriuKnob::kScriptActions, fmt::format("{}", fmt::join(actions, ","))));
  }
}

// One criu dump run, with a session of the page server `pages` when there is one:
// `pages_error` says how that session failed, or is empty.
CriuRun RunPagedCriu(CriuCall call, PageSessions* pages, std::string& pages_error) {
  pages_error.clear();
  if (!pages) return RunCriu(call);
  int socket = pages->Begin();
  call.keep_fds.push_back(socket);
  call.args.push_back("--ps-socket");
  call.args.push_back(std::to_string(socket));
  CriuRun run;
  try {
    run = RunCriu(call);
  } catch (...) {
    try {
      pages->End();
    } catch (const std::exception&) {
      // criu could not run: that is the error to report.
    }
    throw;
  }
  try {
    pages->End();
  } catch (const std::exception& e) {
    pages_error = e.what();
  }
  return run;
}

// Starts a lazy dump's criu with a session of `pages`. Returns it once its images are
// written and it serves the job's memory; nullptr when it exited first (`run` and
// `pages_error` then say how, as for RunPagedCriu).
std::unique_ptr<CriuProcess> StartLazyCriu(CriuCall call, PageSessions& pages, CriuRun& run,
                                           std::string& pages_error) {
  pages_error.clear();
  int socket = pages.Begin();
  call.keep_fds.push_back(socket);
  call.args.push_back("--ps-socket");
  call.args.push_back(std::to_string(socket));
  StatusPipe status;
  status.Pass(call);
  std::unique_ptr<CriuProcess> criu;
  try {
    criu = std::make_unique<CriuProcess>(call);
  } catch (...) {
    try {
      pages.End();
    } catch (const std::exception&) {
      // criu could not run: that is the error to report.
    }
    throw;
  }
  if (status.Ready()) return criu;
  run = criu->Wait();
  try {
    pages.End();
  } catch (const std::exception& e) {
    pages_error = e.what();
  }
  return nullptr;
}

// A lazy dump past its images (see LazyDump).
class LazyDumpRun final : public LazyDump {
 public:
  LazyDumpRun(std::unique_ptr<CriuProcess> criu, std::unique_ptr<WorkDir> work,
              PageSessions& pages, pid_t init_pid, AfterDump after)
      : criu_(std::move(criu)), work_(std::move(work)), pages_(pages), init_pid_(init_pid),
        after_(after) {}
  ~LazyDumpRun() override {
    if (!criu_) return;
    // Given up: with its connection ended, criu fails the dump and lets the job run on
    // here (the same as a target that left); one that does not stop is killed, and the
    // job continued for it.
    pages_.Abort();
    criu_->StopWithin(std::chrono::seconds(10));
    criu_.reset();
    try {
      pages_.End();
    } catch (const std::exception&) {
    }
    ContinueJob(init_pid_);
  }

  void Finish() override {
    CriuRun run = criu_->Wait();
    criu_.reset();
    std::string pages_error;
    try {
      pages_.End();
    } catch (const std::exception& e) {
      pages_error = e.what();
    }
    if (run.status.signaled || run.status.code != 0) {
      if (run.status.signaled) ContinueJob(init_pid_);
      Fail(ErrorKind::kFailed, "the target did not take all of job {}'s memory ({}):{}{}",
           init_pid_, run.status.Describe(), QuoteLog(work_->path() + "/dump.log", run.output),
           pages_error.empty() ? "" : "\n  the page relay: " + pages_error);
    }
    if (!pages_error.empty()) {
      if (after_ == AfterDump::kStop) ContinueJob(init_pid_);
      Fail(ErrorKind::kFailed, "the page relay of job {}'s lazy dump failed: {}", init_pid_,
           pages_error);
    }
  }

 private:
  std::unique_ptr<CriuProcess> criu_;
  std::unique_ptr<WorkDir> work_;
  PageSessions& pages_;
  pid_t init_pid_;
  AfterDump after_;
};

// A lazy restore's criu lazy-pages (see LazyPages).
class LazyPagesRun final : public LazyPages {
 public:
  LazyPagesRun(std::unique_ptr<CriuProcess> criu, std::unique_ptr<WorkDir> work)
      : criu_(std::move(criu)), work_(std::move(work)) {}
  void Finish() override {
    CriuRun run = criu_->Wait();
    criu_.reset();
    if (run.status.signaled || run.status.code != 0) {
      Fail(ErrorKind::kFailed,
           "criu lazy-pages failed ({}), and killed the job rather than let it run with part "
           "of its memory:{}",
           run.status.Describe(), QuoteLog(work_->path() + "/lazy-pages.log", run.output));
    }
  }

 private:
  std::unique_ptr<CriuProcess> criu_;
  std::unique_ptr<WorkDir> work_;
};

// criu's parasite in a job's init makes a directory "proc.crtools" in the init's working
// directory to mount the job's /proc on. Inits of one home share that directory (their
// root), so two dumps at the same moment, on this node or another, can collide on it.
// Dumps here take turns; a collision with another node's dump is tried again, and so is
// a task that a signal interrupted while criu was infecting it: criu has let the job run
// on in both cases. The interruption seen here was a seccomp trap's SIGSYS pending at the
// seize (the job shim traps a shell's every fork), which criu then dropped, skipping the
// trapped call; patch 0015 has the task take it first, so that no longer happens.
std::mutex dump_turn;
constexpr int kDumpAttempts = 6;

bool WorthAnotherTry(const std::string& log_path) {
  std::string log = ReadTextFile(log_path);
  return log.find("Can't create a directory (-17)") != std::string::npos ||
         log.find("task interruption, aborting") != std::string::npos;
}


}  // namespace

DumpResult Dump(pid_t init_pid, const std::string& image_dir, const DumpOptions& options) {
  options.faults.Check(Fault::kDumpBeforeCriu);
  if (options.lazy && !options.pages) {
    Fail(ErrorKind::kInvalidInput, "a lazy dump needs a page server to serve the memory to");
  }
  Fd images = Fd::Open(image_dir, O_RDONLY | O_DIRECTORY);
  auto work_owner = std::make_unique<WorkDir>(image_dir, options.work_dir);
  WorkDir& work = *work_owner;
  Fd work_fd = Fd::Open(work.path(), O_RDONLY | O_DIRECTORY);
  std::string ns_path = fmt::format("/proc/{}/ns/mnt", init_pid);
  std::string net_path = fmt::format("/proc/{}/ns/net", init_pid);
  Fd mount_ns, net_ns;
  try {
    mount_ns = Fd::Open(ns_path, O_RDONLY);
    net_ns = Fd::Open(net_path, O_RDONLY);
  } catch (const Error& e) {
    Fail(e.kind(), "checkpoint of job {}: its namespaces: {}", init_pid, e.what());
  }
  // Entering our own namespace is pointless, and setns needs a single-threaded caller's
  // privileges anyway; only a job in a namespace of its own needs it.
  bool enter = NsInode(ns_path) != NsInode("/proc/self/ns/mnt");
  // criu runs in the job's network namespace too: a namespace criu shares is not put in
  // the images (criu would otherwise dump its devices, addresses, routes and firewall
  // with `ip` and `iptables-save`, and recreate them on restore), only the job's sockets
  // in it are. Where the job lands is then where the restoring criu runs: a fresh
  // namespace with its own loopback for a guest, the node's own at home.
  bool enter_net = NsInode(net_path) != NsInode("/proc/self/ns/net");

  CriuCall call;
  call.criu_path = options.criu_path;
  call.mount_namespace_fd = enter ? mount_ns.get() : -1;
  call.net_namespace_fd = enter_net ? net_ns.get() : -1;
  call.keep_fds = {images.get(), work_fd.get()};
  call.args = {"dump", "--tree", std::to_string(init_pid), "--images-dir", FdPath(images),
               "--work-dir", FdPath(work_fd), "--log-file", "dump.log", "-v2",
               // The job lives in the node's cgroup: leave cgroups to the daemon.
               "--manage-cgroups=ignore",
               // Jobs may hold flock/fcntl locks; without this criu refuses them.
               "--file-locks"};
  switch (options.after) {
    case AfterDump::kStop:
      call.args.push_back("--leave-stopped");
      break;
    case AfterDump::kRun:
      call.args.push_back("--leave-running");
      break;
    case AfterDump::kKill:
      break;
  }
  for (uint64_t inode : options.external_pipes) {
    call.args.push_back("--external");
    call.args.push_back(fmt::format("pipe:[{}]", inode));
  }
  if (options.faults.Hit(Fault::kDumpCriu)) {
    AddActionScripts(call, {{FailAtStepScript(work.path(), "post-dump"), "post-dump"}});
  }
  if (options.lazy) {
    // The descriptor is added for each run (StartLazyCriu): criu serves the memory on it.
    call.args.push_back("--lazy-pages");
  } else if (options.pages) {
    // The descriptor is added for each run (RunPagedCriu): pages go to the page server.
    call.args.push_back("--page-server");
  }
  std::optional<CriuActingAs> acting;
  if (enter && options.as_user) acting.emplace(*options.as_user, mount_ns.get());
  CriuRun run;
  std::string pages_error;
  std::unique_ptr<CriuProcess> serving;  // a lazy dump's criu, past its images
  {
    std::lock_guard turn(dump_turn);
    std::minstd_rand jitter(static_cast<unsigned>(init_pid));
    for (int attempt = 1;; ++attempt) {
      if (options.lazy) {
        serving = StartLazyCriu(call, *options.pages, run, pages_error);
        if (serving) break;
      } else {
        run = RunPagedCriu(call, options.pages, pages_error);
      }
      bool failed = run.status.signaled || run.status.code != 0;
      if (!failed || run.status.signaled || attempt == kDumpAttempts ||
          !WorthAnotherTry(work.path() + "/dump.log")) {
        break;
      }
      EmptyDirectory(image_dir);
      std::this_thread::sleep_for(std::chrono::milliseconds(50 + jitter() % 200));
    }
  }
  if (serving) {
    // The stats and the run's time come at criu's end, with the memory served.
    DumpResult result;
    result.image_bytes = DirBytes(image_dir);
    result.lazy = std::make_unique<LazyDumpRun>(std::move(serving), std::move(work_owner),
                                                *options.pages, init_pid, options.after);
    return result;
  }
  if (run.status.signaled || run.status.code != 0) {
    // criu thaws the job when it fails; a criu that was killed cannot, so do it for it.
    if (run.status.signaled) ContinueJob(init_pid);
    Fail(ErrorKind::kFailed, "criu dump of job {} failed ({}):{}{}", init_pid,
         run.status.Describe(), QuoteLog(work.path() + "/dump.log", run.output),
         pages_error.empty() ? "" : "\n  the page server: " + pages_error);
  }
  if (!pages_error.empty()) {
    // criu's side of the session went well, the page server's did not: the pages are not
    // all where they must be. The job is left as criu left it, so thaw it as on failure.
    if (options.after == AfterDump::kStop) ContinueJob(init_pid);
    Fail(ErrorKind::kFailed, "the page server of job {}'s dump failed: {}", init_pid, pages_error);
  }
  DumpResult result;
  result.criu_time = run.time;
  ReadDumpStats(work.path(), result);  // criu writes its stats where it works
  result.image_bytes = DirBytes(image_dir);
  return result;
}

void ServePages(int socket, const std::string& image_dir, const std::string& criu_path) {
  Fd images = Fd::Open(image_dir, O_RDONLY | O_DIRECTORY);
  WorkDir work(image_dir, {});
  Fd work_fd = Fd::Open(work.path(), O_RDONLY | O_DIRECTORY);
  CriuCall call;
  call.criu_path = criu_path;
  call.keep_fds = {images.get(), work_fd.get(), socket};
  call.args = {"page-server", "--images-dir", FdPath(images), "--work-dir", FdPath(work_fd),
               "--log-file", "page-server.log", "-v2", "--ps-socket", std::to_string(socket)};
  CriuRun run = RunCriu(call);
  if (run.status.signaled || run.status.code != 0) {
    Fail(ErrorKind::kFailed, "criu page-server failed ({}):{}", run.status.Describe(),
         QuoteLog(work.path() + "/page-server.log", run.output));
  }
}

namespace {

std::unique_ptr<CriuProcess> StartLazyPages(const RestoreOptions& options, const Fd& images,
                                            const Fd& work_fd, const std::string& work_path) {
  CriuCall call;
  call.criu_path = options.criu_path;
  call.keep_fds = {images.get(), work_fd.get(), options.lazy_pages_socket};
  call.args = {"lazy-pages", "--images-dir", FdPath(images), "--work-dir", FdPath(work_fd),
               "--log-file", "lazy-pages.log", "-v2", "--page-server", "--ps-socket",
               std::to_string(options.lazy_pages_socket)};
  StatusPipe status;
  status.Pass(call);
  auto criu = std::make_unique<CriuProcess>(call);
  if (!status.Ready()) {
    CriuRun run = criu->Wait();
    Fail(ErrorKind::kFailed, "criu lazy-pages did not start ({}):{}", run.status.Describe(),
         QuoteLog(work_path + "/lazy-pages.log", run.output));
  }
  return criu;
}

}  // namespace

RestoreResult Restore(const std::string& image_dir, const RestoreOptions& options) {
  int subreaper = 0;
  HW_SYSCALL(::prctl(PR_GET_CHILD_SUBREAPER, &subreaper), "prctl PR_GET_CHILD_SUBREAPER");
  if (!subreaper) {
    Fail(ErrorKind::kInvalidInput,
         "restore needs a child subreaper (PR_SET_CHILD_SUBREAPER) to adopt the job");
  }
  options.faults.Check(Fault::kRestoreBeforeCriu);
  Fd images = Fd::Open(image_dir, O_RDONLY | O_DIRECTORY);
  auto work_owner = std::make_unique<WorkDir>(image_dir, options.work_dir);
  WorkDir& work = *work_owner;
  Fd work_fd = Fd::Open(work.path(), O_RDONLY | O_DIRECTORY);
  std::string pid_file = work.path() + "/restore.pid";
  ::unlink(pid_file.c_str());

  CriuCall call;
  call.criu_path = options.criu_path;
  call.mount_namespace_fd = options.mount_namespace_fd;
  call.net_namespace_fd = options.net_namespace_fd;
  call.keep_fds = {images.get(), work_fd.get()};
  call.args = {"restore",
               "--images-dir",
               FdPath(images),
               "--work-dir",
               FdPath(work_fd),
               "--log-file",
               "restore.log",
               "-v2",
               "--restore-detached",
               "--manage-cgroups=ignore",
               "--file-locks",
               "--pidfile",
               FdPath(work_fd) + "/restore.pid"};
  for (const auto& pipe : options.pipes) {
    call.keep_fds.push_back(pipe.fd);
    call.args.push_back("--inherit-fd");
    call.args.push_back(fmt::format("fd[{}]:pipe:[{}]", pipe.fd, pipe.inode));
  }
  std::vector<ActionScript> scripts = options.action_scripts;
  if (options.faults.Hit(Fault::kRestoreCriu)) {
    scripts.push_back({FailAtStepScript(work.path(), "post-restore"), "post-restore"});
  }
  if (options.faults.Hit(Fault::kRestoreHold)) {
    scripts.push_back(
        {HoldAtStepScript(work.path(), "post-restore", kRestoreHoldSeconds), "post-restore"});
  }
  AddActionScripts(call, scripts);
  if (options.huge_pages && HugePagesAllowed()) {
    call.extra_env.push_back(CriuKnobEntry(CriuKnob::kRestoreHugePages, "1"));
  }
  // A lazy restore: criu lazy-pages listens in the work directory, where the restore
  // finds it, before the restore starts.
  std::unique_ptr<CriuProcess> lazy_pages;
  if (options.lazy_pages_socket >= 0) {
    lazy_pages = StartLazyPages(options, images, work_fd, work.path());
    call.args.push_back("--lazy-pages");
  }
  std::optional<CriuActingAs> acting;
  if (options.mount_namespace_fd >= 0 && options.as_user) {
    acting.emplace(*options.as_user, options.mount_namespace_fd);
  }
  pid_t init_pid = -1;
  CriuRun run;
  {
    // The init is our child once criu has made it, owned once we read its pid.
    AdoptionPending adopting;
    run = RunCriu(call);
    acting.reset();
    std::ifstream in(pid_file);
    in >> init_pid;
    if (!in) init_pid = -1;
    if (init_pid > 0) OwnChild(init_pid);
  }
  if (run.status.signaled || run.status.code != 0) {
    // criu kills what it restored when it fails; a criu that was killed itself may have
    // left the init behind, adopted by us: end it so nothing is half alive.
    if (init_pid > 0) KillJob(init_pid);
    // A lazy restore's lazy-pages may be why (it kills tasks it cannot complete).
    std::string lazy_log;
    if (lazy_pages) {
      lazy_pages.reset();
      lazy_log = "\n  criu lazy-pages:" + QuoteLog(work.path() + "/lazy-pages.log", "");
    }
    Fail(ErrorKind::kFailed, "criu restore from {} failed ({}):{}{}", image_dir,
         run.status.Describe(), QuoteLog(work.path() + "/restore.log", run.output), lazy_log);
  }
  if (init_pid <= 0) {
    Fail(ErrorKind::kFailed, "criu restore from {} wrote no pid file", image_dir);
  }
  if (options.faults.Hit(Fault::kRestoreAfterCriu)) {
    KillJob(init_pid);
    Fail(ErrorKind::kFailed, "fault point restore-after-criu hit (job {} killed again)", init_pid);
  }
  RestoreResult result{init_pid, run.time, nullptr};
  if (lazy_pages) {
    result.lazy = std::make_unique<LazyPagesRun>(std::move(lazy_pages), std::move(work_owner));
  }
  return result;
}

const std::string& DefaultCriuPath() {
  static const std::string path = [] {
    std::string installed = FindBesideExecutable({"../libexec/homeward/criu"});
    return installed.empty() ? std::string(HOMEWARD_CRIU_PATH) : installed;
  }();
  return path;
}

std::vector<pid_t> JobPids(pid_t init_pid) {
  if (init_pid <= 0) return {};  // never let a pid of 0 or -1 reach kill()
  std::vector<pid_t> pids{init_pid};
  for (size_t i = 0; i < pids.size(); ++i) {
    std::string task_dir = fmt::format("/proc/{}/task", pids[i]);
    std::unique_ptr<DIR, int (*)(DIR*)> tasks(::opendir(task_dir.c_str()), ::closedir);
    if (!tasks) continue;  // exited meanwhile
    while (dirent* entry = ::readdir(tasks.get())) {
      if (entry->d_name[0] == '.') continue;
      std::ifstream children(task_dir + "/" + entry->d_name + "/children");
      pid_t child;
      while (children >> child) pids.push_back(child);
    }
  }
  return pids;
}

void ContinueJob(pid_t init_pid) {
  for (pid_t pid : JobPids(init_pid)) ::kill(pid, SIGCONT);
}

void KillJob(pid_t init_pid) {
  if (init_pid <= 0) return;
  ::kill(init_pid, SIGKILL);
  int status;
  while (::waitpid(init_pid, &status, 0) < 0 && errno == EINTR) {
  }
  DisownChild(init_pid);
}

uint64_t PipeInode(int fd) {
  struct stat st;
  HW_SYSCALL(::fstat(fd, &st), "fstat pipe {}", fd);
  if (!S_ISFIFO(st.st_mode)) Fail(ErrorKind::kInvalidInput, "descriptor {} is not a pipe", fd);
  return st.st_ino;
}

CriuCheckResult CriuCheck(const std::string& criu_path, const std::vector<std::string>& features) {
  CriuCheckResult result;
  auto run = [&](std::vector<std::string> args) {
    CriuCall call;
    call.criu_path = criu_path;
    call.args = std::move(args);
    return RunCriu(call);
  };
  try {
    CriuRun version = run({"--version"});
    auto at = version.output.find("Version: ");
    if (at != std::string::npos) {
      result.version = version.output.substr(at + 9, version.output.find('\n', at) - at - 9);
    }
    CriuRun check = run({"check"});
    result.usable = !check.status.signaled && check.status.code == 0;
    if (!result.usable) result.message = check.output;
    if (!result.usable) return result;
    for (const std::string& feature : features) {
      CriuRun probe = run({"check", "--feature", feature});
      result.features.push_back({feature, !probe.status.signaled && probe.status.code == 0});
    }
  } catch (const Error& e) {
    result.usable = false;
    result.message = e.what();
  }
  return result;
}

bool CriuProbesKept() { return KerndatCache::Get().sealed(); }

}  // namespace homeward::migrate
