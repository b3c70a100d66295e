// The blocking halves of a move.
#include "migration.h"

#include <dirent.h>
#include <fcntl.h>
#include <linux/kcmp.h>
#include <sys/syscall.h>
#include <poll.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <atomic>
#include <condition_variable>
#include <future>
#include <fstream>
#include <map>
#include <mutex>
#include <optional>
#include <sstream>
#include <thread>
#include <utility>

#include <capnp/serialize.h>
#include <spdlog/spdlog.h>

#include "checkpoint.h"
#include "child_process.h"
#include "error.h"
#include "job_journal.h"
#include "job_replies.h"
#include "loopback_carrier.h"
#include "node_metrics.h"
#include "page_relay.h"
#include "peer_auth.h"
#include "secure_channel.h"

namespace homeward {

namespace {

constexpr auto kConnectTimeout = std::chrono::seconds(5);
// How long a target waits for the figures of a move from a source that is not the job's
// home (they follow the target's word at once, unless the source died).
constexpr int kFiguresTimeoutMs = 5000;
constexpr size_t kMaxReplyWords = 1 << 20;
std::atomic<uint64_t> next_move{0};

capnp::ReaderOptions PeerReaderOptions() {
  capnp::ReaderOptions options;
  options.traversalLimitInWords = kMaxReplyWords;
  return options;
}

std::string FreshImageDir(const std::string& state_dir, const std::string& what) {
  std::string parent = state_dir + "/images";
  ::mkdir(parent.c_str(), 0700);
  return fmt::format("{}/{}-{}-{}", parent, what, ::getpid(), next_move++);
}

// One message on the stream, in the standard framing (what the fd readers read).
void WriteMessageTo(SecureStream& stream, capnp::MessageBuilder& message) {
  auto words = capnp::messageToFlatArray(message);
  auto bytes = words.asBytes();
  stream.Write(bytes.begin(), bytes.size());
}

// Reads exactly what capnp asks for, so that nothing after the message is taken from
// the stream (the images follow it).
class StreamInput : public kj::InputStream {
 public:
  explicit StreamInput(SecureStream& stream) : stream_(stream) {}
  size_t tryRead(void* buffer, size_t min_bytes, size_t max_bytes) override {
    auto* at = static_cast<char*>(buffer);
    size_t got = 0;
    while (got < min_bytes) {
      size_t n = stream_.Read(at + got, max_bytes - got);
      if (n == 0) break;
      got += n;
    }
    return got;
  }

 private:
  SecureStream& stream_;
};

void ReplyError(int fd, const std::string& why) {
  try {
    capnp::MallocMessageBuilder message;
    auto error = message.initRoot<schema::ControlReply>().initError();
    error.setKind("failed");
    error.setMessage(why);
    capnp::writeMessageToFd(fd, message);
  } catch (const std::exception&) {
    // The sender is gone; it learns of the failure from the closed connection.
  }
}

// The error a peer answered before closing, if one is waiting on `fd`.
std::optional<std::string> Refusal(int fd) {
  pollfd readable{fd, POLLIN, 0};
  if (::poll(&readable, 1, 500) != 1) return std::nullopt;
  try {
    capnp::StreamFdMessageReader reader(fd, PeerReaderOptions());
    auto reply = reader.getRoot<schema::ControlReply>();
    if (reply.isError()) return std::string(reply.getError().getMessage().cStr());
  } catch (const std::exception&) {
  }
  return std::nullopt;
}

// Tells the target how the move went (the guest's home hears it with the target's
// attach), once it said the job runs there. A target that is gone meanwhile hears
// nothing: the job's home answers the move without figures.
void TellTarget(const MoveOut& move) {
  try {
    capnp::MallocMessageBuilder message;
    BuildMigrated(message, OutcomeOf(move));
    capnp::writeMessageToFd(move.connection.get(), message);
  } catch (const std::exception& e) {
    spdlog::warn("job {}: cannot tell {} how the move went: {}", move.metadata.home_pid,
                 move.target_name, e.what());
  }
}

// The figures a source that is not the job's home sends after the target's word.
std::optional<MoveOutcome> ReadFigures(int fd) {
  pollfd readable{fd, POLLIN, 0};
  if (::poll(&readable, 1, kFiguresTimeoutMs) != 1) return std::nullopt;
  try {
    capnp::StreamFdMessageReader reader(fd, PeerReaderOptions());
    auto reply = reader.getRoot<schema::ControlReply>();
    if (reply.isMigrated()) return MigratedFigures(reply.getMigrated());
  } catch (const std::exception&) {
  }
  return std::nullopt;
}

// Asks the homefs mounted at `mount` for `what` (a setxattr of trusted.homeward.WHAT on
// its root, which homefs takes for itself from root alone). Returns 0 or the errno.
int AskHomefs(const std::string& mount, const std::string& what, const std::string& value) {
  std::string name = "trusted.homeward." + what;
  return ::setxattr(mount.c_str(), name.c_str(), value.data(), value.size(), 0) == 0 ? 0 : errno;
}

// Asks the homefs at `mount` to park, unpark or claim a moving job's locks.
bool CarryLocks(const std::string& mount, const std::string& what, const std::string& value) {
  int err = AskHomefs(mount, what, value);
  if (err == 0) return true;
  spdlog::warn("cannot {} the moving job's locks at {}: {} (they are not carried)", what, mount,
               std::strerror(err));
  return false;
}

// Waits until the writes the frozen job made through the homefs at `mount` are at its
// home: homefs acknowledges a write before the home has it (write-behind), and the job,
// running elsewhere next, must read what it wrote. Fails the move when the home is
// silent (the writes wait there for it) or one of them failed unheard (the job stays to
// hear it at its next write or close).
void DrainWrites(const std::string& mount) {
  int err = AskHomefs(mount, "drain", "");
  if (err == 0) return;
  if (err == ETIMEDOUT) {
    Fail(ErrorKind::kDisconnected, "its home is silent and has not yet got the writes it made");
  }
  if (err == EIO) {
    Fail(ErrorKind::kFailed, "a write it made failed at its home, and it has not heard yet");
  }
  Fail(ErrorKind::kFailed, "cannot see its writes at its home through {}: {}", mount,
       std::strerror(err));
}

// When criu stopped the job: a lazy dump's stats come at its end and do not time the
// freeze (criu's page server starts its timers again), so a lazy move watches the job's
// init until criu's ptrace stops it ('t' in /proc/PID/stat), every millisecond.
class FreezeWatch {
 public:
  explicit FreezeWatch(pid_t pid) : thread_([this, pid] { Watch(pid); }) {}
  FreezeWatch(const FreezeWatch&) = delete;
  FreezeWatch& operator=(const FreezeWatch&) = delete;
  ~FreezeWatch() { Stop(); }
  // When the job was first seen stopped, if it was.
  std::optional<std::chrono::steady_clock::time_point> Stopped() {
    Stop();
    return stopped_;
  }

 private:
  void Stop() {
    done_ = true;
    if (thread_.joinable()) thread_.join();
  }
  void Watch(pid_t pid) {
    std::string path = fmt::format("/proc/{}/stat", pid);
    while (!done_) {
      std::ifstream in(path);
      std::string stat((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
      auto end = stat.rfind(')');
      if (end == std::string::npos || end + 2 >= stat.size()) return;  // gone
      if (stat[end + 2] == 't') {
        stopped_ = std::chrono::steady_clock::now();
        return;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
  }
  std::atomic<bool> done_{false};
  std::optional<std::chrono::steady_clock::time_point> stopped_;
  std::thread thread_;
};

// The descriptions through which the frozen job's processes hold locks of their own
// description (a flock, an OFD lock: the shim takes a job's POSIX locks as these), each
// once, with a descriptor of ours (pidfd_getfd): the home's file service keeps them for
// the job while it moves. Their own "lock:" lines in /proc/PID/fdinfo/FD name them.
struct HeldAtHome {
  std::vector<Fd> fds;
  std::vector<HomeJobLock> locks;
};

HeldAtHome LocksHeldAtHome(pid_t init_pid) {
  HeldAtHome held;
  for (pid_t pid : migrate::JobPids(init_pid)) {
    int32_t inner = 0;  // its pid in the job's namespace (NStgid's last field)
    {
      std::istringstream status(ReadTextFile(fmt::format("/proc/{}/status", pid)));
      std::string line;
      while (std::getline(status, line)) {
        if (line.rfind("NStgid:", 0) != 0) continue;
        std::istringstream ids(line.substr(7));
        for (int32_t id; ids >> id;) inner = id;
      }
    }
    std::string fdinfo_dir = fmt::format("/proc/{}/fdinfo", pid);
    DIR* dir = ::opendir(fdinfo_dir.c_str());
    if (!dir) continue;
    Fd pidfd;
    while (dirent* entry = ::readdir(dir)) {
      if (entry->d_name[0] == '.') continue;
      std::istringstream info(ReadTextFile(fdinfo_dir + "/" + entry->d_name));
      std::string line;
      bool flock = false, ofd = false;
      while (std::getline(info, line)) {
        if (line.rfind("lock:", 0) != 0 || line.find("->") != std::string::npos) continue;
        flock = flock || line.find(" FLOCK ") != std::string::npos;
        ofd = ofd || line.find(" OFDLCK ") != std::string::npos;
      }
      if (!flock && !ofd) continue;
      if (pidfd.get() < 0) {
        int fd = static_cast<int>(::syscall(SYS_pidfd_open, pid, 0));
        if (fd < 0) break;
        pidfd = Fd::Adopt(fd);
      }
      int fd = static_cast<int>(
          ::syscall(SYS_pidfd_getfd, pidfd.get(), std::atoi(entry->d_name), 0));
      if (fd < 0) {
        spdlog::warn("cannot take a locked file of job process {} ({}): its lock is not kept",
                     pid, std::strerror(errno));
        continue;
      }
      Fd copy = Fd::Adopt(fd);
      bool seen = false;  // the same description through another descriptor or process
      for (const Fd& other : held.fds) {
        if (::syscall(SYS_kcmp, ::getpid(), ::getpid(), KCMP_FILE, other.get(), copy.get()) == 0) {
          seen = true;
        }
      }
      if (seen) continue;
      // A description with a flock is carried as a flock (bound at the restore's open of
      // the file); one with OFD locks only, as a lock owner of its process.
      held.locks.push_back({copy.get(), flock, inner});
      held.fds.push_back(std::move(copy));
    }
    ::closedir(dir);
  }
  return held;
}

uint64_t NamespaceInode(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0 ? st.st_ino : 0;
}

// Lazy moves' page connections, waiting for their incoming moves (by token). One that no
// move claims within kLazyClaimTimeout (its move failed first) is dropped, and no more
// than kMaxLazyWaiting wait at once.
constexpr auto kLazyClaimTimeout = std::chrono::seconds(60);
constexpr size_t kMaxLazyWaiting = 64;
struct WaitingPages {
  std::unique_ptr<SecureStream> stream;
  std::chrono::steady_clock::time_point since;
};
std::mutex lazy_mutex;
std::condition_variable lazy_arrived;
std::map<uint64_t, WaitingPages> lazy_waiting;

void DropUnclaimed() {
  auto now = std::chrono::steady_clock::now();
  std::erase_if(lazy_waiting, [&](const auto& entry) {
    return now - entry.second.since > kLazyClaimTimeout;
  });
}

std::unique_ptr<SecureStream> ClaimLazyPageConnection(uint64_t token) {
  std::unique_lock lock(lazy_mutex);
  auto deadline = std::chrono::steady_clock::now() + kConnectTimeout * 2;
  while (!lazy_waiting.count(token)) {
    if (lazy_arrived.wait_until(lock, deadline) == std::cv_status::timeout &&
        !lazy_waiting.count(token)) {
      Fail(ErrorKind::kDisconnected, "the lazy move's page connection did not come");
    }
  }
  auto stream = std::move(lazy_waiting[token].stream);
  lazy_waiting.erase(token);
  return stream;
}

}  // namespace

void DepositLazyPageConnection(std::unique_ptr<SecureStream> stream) {
  uint64_t token = migrate::ReceiveLazyToken(*stream);
  std::lock_guard lock(lazy_mutex);
  DropUnclaimed();
  if (lazy_waiting.size() >= kMaxLazyWaiting) {
    Fail(ErrorKind::kOverloaded, "{} lazy page connections wait already", lazy_waiting.size());
  }
  lazy_waiting[token] = {std::move(stream), std::chrono::steady_clock::now()};
  lazy_arrived.notify_all();
}

LandingNamespaces PrepareLanding(const std::string& root, const std::string& init_path,
                                 bool own_network) {
  Pipe hold = Pipe::Create();
  Pipe ready = Pipe::Create();
  SpawnOptions prepare;
  prepare.argv = {init_path, "--prepare-root", root};
  if (own_network) prepare.argv.push_back("--own-network");
  prepare.stdin_fd = hold.read.get();
  prepare.extra_fds = {ready.write.get()};
  LandingNamespaces landing{ChildProcess::Spawn(prepare), std::move(hold.write), {}, {}, {}};
  hold.read.Reset();
  ready.write.Reset();
  char word[512];
  size_t n = ReadSome(ready.read.get(), word, sizeof word - 1, "namespace holder");
  word[n] = '\0';
  if (std::string_view(word, n).rfind("ready", 0) != 0) {
    Fail(ErrorKind::kFailed, "cannot prepare the job's namespace: {}",
         n ? word : "the namespace holder died");
  }
  landing.mount = Fd::Open(fmt::format("/proc/{}/ns/mnt", landing.holder.pid()), O_RDONLY);
  if (own_network) {
    landing.net = Fd::Open(fmt::format("/proc/{}/ns/net", landing.holder.pid()), O_RDONLY);
    // Its loopback's connections go to the carrier the job's daemon starts when it takes
    // the job over (Job::Attach): the rules, and the sockets they hand to, are there
    // before any process of the job runs again.
    RedirectLoopbackConnections(landing.net.get());
    try {
      landing.carrier = CarrierSockets::Open(landing.net.get(), "a guest landing here");
    } catch (const Error& e) {
      // The carrier tries again when it starts (and says so if it cannot): the job runs.
      spdlog::warn("a guest landing here: its carrier's sockets: {}", e.what());
    }
  }
  return landing;
}

RestoredHere RestoreHere(const std::string& dir,
                         const std::vector<migrate::PipeRole>& external_pipes,
                         const std::string& root, const std::string& init_path,
                         const FaultPoints& faults, bool own_network,
                         const std::string& intent_dir, std::optional<ActingUser> as_user,
                         const LockClaim& claim, LandingNamespaces* prepared,
                         int lazy_pages_socket) {
  LandingNamespaces landing =
      prepared ? std::move(*prepared) : PrepareLanding(root, init_path, own_network);
  ChildProcess& holder = landing.holder;

  Pipe in = Pipe::Create(), out = Pipe::Create(), err = Pipe::Create(), status = Pipe::Create();
  migrate::RestoreOptions restore;
  restore.mount_namespace_fd = landing.mount.get();
  // The images hold no network namespace (criu dumps in the job's own): the job's sockets
  // come back in the namespace criu restores in.
  if (own_network) restore.net_namespace_fd = landing.net.get();
  // The job's own /proc needs its pid namespace, which criu makes: mount it as soon as
  // the namespace exists, before any process of the job is restored and runs.
  // (criu runs a script by path, without a shell: mosjob-init's copy in the job's root.)
  restore.action_scripts = {{"/mosjob-init", "setup-namespaces"}};
  restore.faults = faults;
  restore.as_user = std::move(as_user);
  restore.lazy_pages_socket = lazy_pages_socket;
  for (const auto& pipe : external_pipes) {
    int job_end = pipe.role == "stdin"    ? in.read.get()
                  : pipe.role == "stdout" ? out.write.get()
                  : pipe.role == "stderr" ? err.write.get()
                  : pipe.role == "status" ? status.write.get()
                                          : -1;
    if (job_end < 0) Fail(ErrorKind::kInvalidInput, "unknown pipe role '{}'", pipe.role);
    restore.pipes.push_back({pipe.inode, job_end});
  }
  // A daemon killed from here until the job is taken over leaves this intent, by which
  // the next one finds and ends what criu restored (see "Daemon restarts").
  if (!intent_dir.empty()) WriteRestoreIntent(intent_dir, migrate::PipeInode(out.read.get()));
  if (faults.Hit(Fault::kRestoreHold)) {
    spdlog::warn("fault point restore-hold: criu holds its restore at post-restore for {} s",
                 kRestoreHoldSeconds);
  }
  // The job's locks, kept at its home while it moved, are claimed for the namespace it is
  // restored in before criu runs: its restore's opens and its first requests bind them.
  // A job coming home: the home's file service holds them for that namespace, where the
  // restored processes take them (see "Locks of a job that comes home").
  bool claimed = false;
  const HomeLockClaims* home = claim.home && claim.home->claim ? claim.home : nullptr;
  if (claim.token != 0 && (home || !claim.mount.empty())) {
    uint64_t ns = NamespaceInode(fmt::format("/proc/{}/ns/mnt", holder.pid()));
    if (ns != 0 && home) {
      claimed = home->claim(claim.token, ns, claim.uid);
    } else if (ns != 0) {
      claimed = CarryLocks(claim.mount, "claim", fmt::format("{} {}", claim.token, ns));
    }
  }
  // The restored init is our child (we are a child subreaper): owned from here on.
  migrate::RestoreResult result;
  try {
    result = migrate::Restore(dir, restore);
  } catch (const std::exception&) {
    // The job goes on at the source: what was claimed here is the source's again.
    if (claimed && home) {
      home->unclaim(claim.token);
    } else if (claimed) {
      CarryLocks(claim.mount, "unpark", std::to_string(claim.token));
    }
    throw;
  }
  if (claimed && home) home->restored(claim.token);
  ChildProcess init = ChildProcess::Adopt(result.init_pid);
  DaemonEnds ends{std::move(in.write), std::move(in.read), std::move(out.read),
                  std::move(err.read), std::move(status.read)};
  ends.carrier = std::move(landing.carrier);
  return RestoredHere{std::move(result.lazy), std::move(init), std::move(ends)};
}

namespace {

// CRIU does not see locks held through homefs (they are the home's): the home keeps them
// for the job, under a token only the target learns (in the metadata), until the target
// binds them. Returns the job's mount namespace, by which they are unparked on failure.
uint64_t ParkLocks(MoveOut& move) {
  uint64_t token = 0;
  while (token == 0) HW_SYSCALL(::getrandom(&token, sizeof token, 0), "getrandom");
  if (move.park_home_locks) {
    // A job of this home: its locks are held through its own descriptions here.
    HeldAtHome held = LocksHeldAtHome(move.init_pid);
    if (!held.locks.empty() && move.park_home_locks(token, held.locks) > 0) {
      move.metadata.lock_token = token;
    }
    return 0;
  }
  uint64_t lock_ns = NamespaceInode(fmt::format("/proc/{}/ns/mnt", move.init_pid));
  if (lock_ns != 0 &&
      CarryLocks(move.lock_mount, "park", fmt::format("{} {}", token, lock_ns))) {
    move.metadata.lock_token = token;
  }
  return lock_ns;
}

// The word a move waits for from the target (ControlReply::Reader::isDone, say).
using WordIs = bool (schema::ControlReply::Reader::*)() const;

// An error the target sent becomes this node's Error; any word but `is`, `unexpected`.
void CheckWord(schema::ControlReply::Reader reply, WordIs is, const char* unexpected) {
  if (reply.isError()) Fail(ErrorKind::kFailed, "{}", reply.getError().getMessage().cStr());
  if (!(reply.*is)()) Fail(ErrorKind::kInvalidInput, "{}", unexpected);
}

// Asks the target to take the job, before anything is frozen: its answer is a yes (done)
// or why not. `step` says what it is doing, for the error.
std::unique_ptr<SecureStream> Offer(MoveOut& move, std::string& step) {
  step = fmt::format("connect to {}", move.target_name);
  auto stream = PeerConnectStream(move.target_host, move.target_port, move.key, "migration",
                                  kConnectTimeout);
  step = fmt::format("offer the job to {}", move.target_name);
  WriteMessageTo(*stream, *move.guest_request);
  StreamInput input(*stream);
  capnp::InputStreamMessageReader reader(input, PeerReaderOptions());
  CheckWord(reader.getRoot<schema::ControlReply>(), &schema::ControlReply::Reader::isDone,
            "unexpected answer to the move request");
  return stream;
}

// The target's next word on the move's channel: an error it sent becomes this node's
// Error, a connection that ends first one that says so.
void ExpectWord(int fd, const MoveOut& move, WordIs is) {
  std::optional<capnp::StreamFdMessageReader> reader;
  try {
    reader.emplace(fd, PeerReaderOptions());
  } catch (const kj::Exception&) {
    Fail(ErrorKind::kDisconnected, "{} closed the connection before its answer",
         move.target_name);
  }
  CheckWord(reader->getRoot<schema::ControlReply>(), is, "unexpected answer");
}

// Sends the rest of the images to the target (the pages are there already) and waits for
// its word that the job runs there; the connection, a channel from then on, is kept in
// move.connection for the relay. `step` says what it is doing, for the error.
void HandOver(MoveOut& move, std::unique_ptr<SecureStream> stream, migrate::PageRelayOut& pages,
              migrate::LazyDump* lazy, std::chrono::steady_clock::time_point frozen_at,
              std::string& step) {
  step = fmt::format("send the images to {}", move.target_name);
  try {
    if (lazy) {
      migrate::PageRelayOut::PagesElsewhere(*stream);
    } else {
      pages.Finish();
    }
    migrate::SendOptions send;
    send.faults = move.faults;
    // The images are sealed in place on this thread; the connection becomes a channel
    // (a plain descriptor for the relay) once they are sent.
    migrate::SendImages(*stream, move.image_dir, move.metadata, send);
    move.departure.Sent();
  } catch (const std::exception&) {
    // A target that refuses the job says why before it closes: that is the cause.
    Fd fd = SecureStream::IntoChannel(std::move(stream));
    if (auto why = Refusal(fd.get())) Fail(ErrorKind::kFailed, "{}", *why);
    throw;
  }
  Fd fd = SecureStream::IntoChannel(std::move(stream));
  step = fmt::format("restore on {}", move.target_name);
  if (lazy) {
    // The job runs there (it is no longer frozen) and pulls its memory from here: the
    // move ends once the target has every page. Failing before, the job runs on here.
    ExpectWord(fd.get(), move, &schema::ControlReply::Reader::isDone);
    move.frozen = std::chrono::duration_cast<std::chrono::milliseconds>(
        std::chrono::steady_clock::now() - frozen_at);
    step = fmt::format("give {} the job's memory", move.target_name);
    lazy->Finish();
    pages.Finish();
    step = fmt::format("restore on {}", move.target_name);
  }
  ExpectWord(fd.get(), move, &schema::ControlReply::Reader::isJobStarted);
  move.connection = std::move(fd);
}

}  // namespace

void RunMoveOut(MoveOut& move) {
  auto started = std::chrono::steady_clock::now();
  std::string step;
  std::optional<InputCarry> reclaimed;
  uint64_t lock_ns = 0;
  try {
    auto stream = Offer(move, step);
    // A lazy move's memory goes on a connection of its own, which stays while the job
    // runs on the target without all of it; else it goes to the target's page server
    // while criu dumps the rest here.
    std::unique_ptr<SecureStream> page_stream;
    if (move.lazy) {
      step = fmt::format("open a page connection to {}", move.target_name);
      page_stream = PeerConnectStream(move.target_host, move.target_port, move.key,
                                      "lazy-pages", kConnectTimeout);
      while (move.metadata.lazy_token == 0) {
        HW_SYSCALL(::getrandom(&move.metadata.lazy_token, sizeof(uint64_t), 0), "getrandom");
      }
      migrate::SendLazyToken(*page_stream, move.metadata.lazy_token);
    }
    step = "checkpoint";
    HW_SYSCALL(::mkdir((move.image_dir).c_str(), 0700), "create {}", move.image_dir);
    migrate::PageRelayOut pages(page_stream ? *page_stream : *stream);
    migrate::DumpOptions dump;
    dump.after = migrate::AfterDump::kStop;
    dump.external_pipes = move.pipe_inodes;
    dump.faults = move.faults;
    dump.as_user = move.as_user;
    dump.pages = &pages;
    dump.lazy = move.lazy;
    auto dump_started = std::chrono::steady_clock::now();
    std::optional<FreezeWatch> freeze;
    if (move.lazy) freeze.emplace(move.init_pid);
    auto result = migrate::Dump(move.init_pid, move.image_dir, dump);
    auto dump_ended = std::chrono::steady_clock::now();
    auto stopped = freeze ? freeze->Stopped() : std::nullopt;
    move.departure.Dumped();
    // What a lazy move brings the target (an upper bound: shared pages count in each).
    if (result.lazy) move.metadata.memory_bytes = ResidentBytes(migrate::JobPids(move.init_pid));
    // The frozen job's unread input is not in its images: it travels in the metadata.
    step = "reclaim the job's unread input";
    reclaimed = Job::ReclaimInput(move.input);
    move.metadata.input_offset = reclaimed->offset;
    move.metadata.input_data = reclaimed->data;
    move.metadata.input_ended = reclaimed->ended;
    // The job is frozen from criu's freeze (its stats: from then to its end; a lazy
    // dump's: when it was seen stopped) until the target's word; from the dump's start
    // when neither says.
    auto frozen_at = result.lazy ? stopped.value_or(dump_started)
                     : result.frozen_time.count() == 0 ? dump_started
                                                        : dump_ended - result.frozen_time;
    move.image_bytes = result.image_bytes + pages.bytes();
    if (!move.lock_mount.empty()) {
      step = "wait for the job's writes to reach its home";
      DrainWrites(move.lock_mount);
    }
    if (!move.lock_mount.empty() || move.park_home_locks) {
      step = "keep the job's locks at its home";
      lock_ns = ParkLocks(move);
    }

    HandOver(move, std::move(stream), pages, result.lazy.get(), frozen_at, step);
    if (result.lazy) {
      move.image_bytes += pages.bytes();  // the memory, served since
    } else {
      move.frozen = std::chrono::duration_cast<std::chrono::milliseconds>(
          std::chrono::steady_clock::now() - frozen_at);
    }
    move.departure.Arrived();
    // The target's word, journaled before anything else: a restart from here on leaves
    // the copy here stopped for the target to take over (Departure::Reloaded).
    if (move.journal) {
      try {
        move.journal(move.departure);
      } catch (const std::exception& e) {
        spdlog::warn("job {}: cannot journal its arrival on {}: {}", move.metadata.home_pid,
                     move.target_name, e.what());
      }
    }
  } catch (const std::exception& e) {
    move.error = fmt::format("{} failed: {}", step, e.what());
    if (reclaimed) {
      try {
        Job::ReturnInput(move.input, *reclaimed);
      } catch (const std::exception& e) {
        spdlog::error("job {}: {}", move.metadata.home_pid, e.what());
      }
    }
    if (move.metadata.lock_token != 0) {
      // It runs on here, holding its locks through its own descriptions as before.
      if (move.unpark_home_locks) {
        move.unpark_home_locks(move.metadata.lock_token);
      } else {
        CarryLocks(move.lock_mount, "unpark",
                   fmt::format("{} {}", move.metadata.lock_token, lock_ns));
      }
    }
    if (move.departure.Failed(move.error).continue_job) {
      migrate::ContinueJob(move.init_pid);  // it runs on where it was
    }
  }
  migrate::RemoveImageDir(move.image_dir);
  move.total = std::chrono::duration_cast<std::chrono::milliseconds>(
      std::chrono::steady_clock::now() - started);
  // Last: the target's attach, which these figures let go, comes after all else here.
  if (move.error.empty() && move.tell_target) TellTarget(move);
}

namespace {

using Clock = std::chrono::steady_clock;

// Where an incoming move's time went, for the debug log.
struct MoveInTimes {
  Clock::time_point offered, pages_in, images_in, landed, restored, pulled, told;
  void Log(pid_t home_pid) const {
    auto ms = [](Clock::duration d) {
      return std::chrono::duration_cast<std::chrono::milliseconds>(d).count();
    };
    spdlog::debug("incoming move of job {}: pages {} ms, the rest of the images {} ms, its "
                  "namespaces awaited {} ms, restore {} ms, its memory pulled {} ms, images "
                  "removed {} ms",
                  home_pid, ms(pages_in - offered), ms(images_in - pages_in),
                  ms(landed - images_in), ms(restored - landed), ms(pulled - restored),
                  ms(Clock::now() - told));
  }
};

// The job runs here: the source hears so before the images go, which for a big job takes
// a while (freeing its memory's pages). Returns when the source was told.
Clock::time_point TellStartedThenRemove(int fd, pid_t home_pid, const std::string& node,
                                        const std::string& dir) {
  capnp::MallocMessageBuilder message;
  auto started = message.initRoot<schema::ControlReply>().initJobStarted();
  started.setHomePid(home_pid);
  started.setWhere(node);
  capnp::writeMessageToFd(fd, message);
  auto told = Clock::now();
  try {
    migrate::RemoveImageDir(dir);
  } catch (const std::exception& e) {
    spdlog::warn("job {}: {}", home_pid, e.what());
  }
  return told;
}

// The images are about the memory the job will take here: a node without that much free
// refuses before a byte is sent.
migrate::ReceiveOptions ReceiveOptionsHere(const MoveInContext& context) {
  migrate::ReceiveOptions receive;
  receive.faults = context.faults;
  if (auto memory = ReadNodeMemory()) {
    uint64_t free_bytes = uint64_t{memory->mem_free_mb} << 20;
    if (free_bytes < receive.max_total_bytes) {
      receive.max_total_bytes = free_bytes;
      receive.max_total_what = "this node's free memory";
    }
  }
  return receive;
}

// The source's move request: what the job is, in a protocol this node speaks.
JobLaunch ReadMoveRequest(SecureStream& stream,
                          const std::function<JobLaunch(schema::GuestSpec::Reader)>& make_launch) {
  StreamInput input(stream);
  capnp::InputStreamMessageReader request_reader(input, PeerReaderOptions());
  auto request = request_reader.getRoot<schema::ControlRequest>();
  if (!request.isStartGuest()) Fail(ErrorKind::kInvalidInput, "not a move request");
  if (request.getVersion() != schema::CONTROL_VERSION) {
    Fail(ErrorKind::kInvalidInput,
         "the moving node speaks protocol version {}, this node {}; run one release on every "
         "node",
         request.getVersion(), schema::CONTROL_VERSION);
  }
  return make_launch(request.getStartGuest());
}

// Says yes, then takes the job's pages and the rest of its images into `dir`, within this
// node's room for them (`room`: what is left of it after).
migrate::ReceivedImages ReceiveMove(SecureStream& stream, const std::string& dir,
                                    migrate::ReceiveOptions& room, MoveInTimes& times,
                                    std::string& step) {
  step = "receive the pages";
  HW_SYSCALL(::mkdir(dir.c_str(), 0700), "create image directory {}", dir);
  {
    capnp::MallocMessageBuilder yes;
    yes.initRoot<schema::ControlReply>().setDone();
    WriteMessageTo(stream, yes);
  }
  migrate::PageReceiveOptions page_options;
  page_options.max_bytes = room.max_total_bytes;
  page_options.max_what = room.max_total_what;
  uint64_t page_bytes = migrate::ReceivePages(stream, dir, page_options);
  step = "receive the images";
  room.into_existing = true;
  room.max_total_bytes -= std::min(page_bytes, room.max_total_bytes);
  times.pages_in = Clock::now();
  auto received = migrate::ReceiveImages(stream, dir, room);
  times.images_in = Clock::now();
  return received;
}

// A lazy move: the job's memory comes from the source's lazy dump, on the connection the
// source opened for it, as the restored job asks for it. Null for a move that is not lazy.
std::unique_ptr<migrate::LazyPageRelayIn> LazyPagesFor(const migrate::ReceivedImages& received,
                                                       const migrate::ReceiveOptions& room,
                                                       const MoveInContext& context,
                                                       std::string& step) {
  if (received.job.lazy_token == 0) return nullptr;
  // Its memory is not in the images: the source said how much it is.
  step = "make room for the job's memory";
  if (received.job.memory_bytes > room.max_total_bytes) {
    Fail(ErrorKind::kOverloaded, "the job's memory ({} MiB) is more than {} ({} MiB)",
         received.job.memory_bytes >> 20, room.max_total_what, room.max_total_bytes >> 20);
  }
  step = "take the lazy move's page connection";
  return std::make_unique<migrate::LazyPageRelayIn>(
      ClaimLazyPageConnection(received.job.lazy_token), context.faults.Hit(Fault::kLazyHold));
}

// Restores the job from `dir` in the namespaces made for it, with the locks its home
// kept for it.
RestoredHere RestoreMoved(const std::string& dir, const migrate::ReceivedImages& received,
                          const JobLaunch& launch, const MoveInContext& context,
                          LandingNamespaces& landing, migrate::LazyPageRelayIn* lazy_relay) {
  const JobIdentity& user = launch.identity;
  LockClaim claim;
  if (launch.guest) {
    claim = {received.job.lock_token, launch.root};
  } else {
    claim = {received.job.lock_token, {}, &context.home_locks, user.uid};
  }
  return RestoreHere(dir, received.job.external_pipes, launch.root, context.init_path,
                     context.faults, launch.guest, context.state_dir + "/jobs",
                     ActingUser{CriuActingDir(context.state_dir), {user.uid, user.gid, user.groups}},
                     claim, &landing, lazy_relay ? lazy_relay->socket() : -1);
}

// A lazy move's job runs (no longer frozen at the source): says so, and ends once it has
// every page.
void PullMemory(RestoredHere& here, migrate::LazyPageRelayIn& relay, int fd) {
  relay.Restored();
  capnp::MallocMessageBuilder running;
  running.initRoot<schema::ControlReply>().setDone();
  capnp::writeMessageToFd(fd, running);
  here.lazy->Finish();
  relay.Finish();
}

}  // namespace

std::optional<RestoredJob> RunMoveIn(
    std::unique_ptr<SecureStream> stream, const MoveInContext& context,
    const std::function<JobLaunch(schema::GuestSpec::Reader)>& make_launch, JobLaunch* launch) {
  std::string dir;
  std::string step = "read the move request";
  Fd fd;  // the connection as a channel, once the images are in
  try {
    *launch = ReadMoveRequest(*stream, make_launch);
    MoveInTimes times;
    times.offered = Clock::now();
    // The job's namespaces here are made while the source dumps: their holder, and a
    // guest's network with its rules, are no part of the time the job is frozen.
    auto landing = std::async(std::launch::async, [&] {
      return PrepareLanding(launch->root, context.init_path, launch->guest);
    });
    dir = FreshImageDir(context.state_dir, "in");
    auto room = ReceiveOptionsHere(context);
    auto received = ReceiveMove(*stream, dir, room, times, step);
    fd = SecureStream::IntoChannel(std::move(stream));
    auto lazy_relay = LazyPagesFor(received, room, context, step);

    step = "restore";
    LandingNamespaces prepared = landing.get();
    times.landed = Clock::now();
    RestoredHere here = RestoreMoved(dir, received, *launch, context, prepared, lazy_relay.get());
    times.restored = Clock::now();
    if (here.lazy) {
      step = "pull the job's memory";
      PullMemory(here, *lazy_relay, fd.get());
    }
    times.pulled = Clock::now();
    launch->input = InputCarry{received.job.input_offset, std::move(received.job.input_data),
                               received.job.input_ended};
    times.told = TellStartedThenRemove(fd.get(), launch->identity.home_pid, context.node_name,
                                       std::exchange(dir, {}));
    times.Log(launch->identity.home_pid);
    RestoredJob restored{std::move(fd), std::move(here.init), std::move(here.ends), {}};
    // From a node that is not the job's home (it was a guest there): the job's home
    // hears how the move went from us.
    if (launch->reattach || launch->home == context.node_name) {
      restored.figures = ReadFigures(restored.connection.get());
      if (!restored.figures) {
        spdlog::warn("job {}: its old node did not say how the move went",
                     launch->identity.home_pid);
      }
    }
    return restored;
  } catch (const std::exception& e) {
    std::string why = fmt::format("{} failed on {}: {}", step, context.node_name, e.what());
    spdlog::warn("incoming move: {}", why);
    if (!dir.empty()) migrate::RemoveImageDir(dir);
    if (stream) {
      try {
        fd = SecureStream::IntoChannel(std::move(stream));
      } catch (const std::exception&) {
        return std::nullopt;  // no thread: the sender sees the connection close
      }
    }
    ReplyError(fd.get(), why);
    return std::nullopt;
  }
}

}  // namespace homeward
