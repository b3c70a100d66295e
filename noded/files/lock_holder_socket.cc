// The file service's answer to a job at home's F_GETLK; see lock_holder_socket.h.
#include "lock_holder_socket.h"

#include <dirent.h>
#include <fcntl.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <sstream>
#include <string>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "fd.h"

#include "lock_handover.h"
#include "lock_holder.h"

namespace homeward {
namespace {

// What one question may cost at most: processes of jobs at home looked at, and their
// descriptors (directory entries read, fdinfo files read).
constexpr size_t kMaxProcesses = 4096;
constexpr size_t kMaxFdEntries = 65536;
constexpr size_t kMaxFdInfos = 4096;

struct Budget {
  size_t entries = kMaxFdEntries;
  size_t infos = kMaxFdInfos;
};

// The processes of the jobs whose inits are `inits`: each init and its descendants (a
// job's orphans are its init's children: it is their pid namespace's init), at most
// kMaxProcesses.
std::vector<pid_t> JobProcesses(const std::vector<pid_t>& inits) {
  std::vector<pid_t> pids;
  for (pid_t init : inits) {
    if (init > 0 && pids.size() < kMaxProcesses) pids.push_back(init);
  }
  for (size_t i = 0; i < pids.size() && pids.size() < kMaxProcesses; ++i) {
    std::string task_dir = fmt::format("/proc/{}/task", pids[i]);
    DIR* tasks = ::opendir(task_dir.c_str());
    if (!tasks) continue;  // ended meanwhile
    while (dirent* task = ::readdir(tasks)) {
      if (task->d_name[0] == '.') continue;
      std::istringstream children(ReadTextFile(task_dir + "/" + task->d_name + "/children"));
      pid_t child;
      while (children >> child && pids.size() < kMaxProcesses) pids.push_back(child);
    }
    ::closedir(tasks);
  }
  return pids;
}

// Whether an fdinfo "lock:" line is an OFD lock on `file` (/proc/locks' MAJ:MIN:INO) that
// conflicts with `type` on [start, end].
bool Conflicts(const std::string& line, const std::string& file, short type, int64_t start,
               int64_t end) {
  std::istringstream fields(line.substr(5));
  std::string id, kind, mode, access, holder, inode, from, to;
  if (!(fields >> id >> kind >> mode >> access >> holder >> inode >> from >> to)) return false;
  if (kind != "OFDLCK" || inode != file) return false;
  if (type != F_WRLCK && access != "WRITE") return false;  // read locks share
  try {
    int64_t first = std::stoll(from);
    int64_t last = to == "EOF" ? HomeLocks::kToEnd : std::stoll(to);
    return last >= start && first <= end;
  } catch (const std::exception&) {
    return false;
  }
}

// Whether one of process `pid`'s descriptors at or above kShimLockFdBase holds such a lock.
bool HoldsShimLock(pid_t pid, const std::string& file, short type, int64_t start, int64_t end,
                   Budget& budget) {
  std::string dir_path = fmt::format("/proc/{}/fdinfo", pid);
  DIR* fds = ::opendir(dir_path.c_str());
  if (!fds) return false;
  bool found = false;
  while (!found && budget.entries > 0 && budget.infos > 0) {
    dirent* fd = ::readdir(fds);
    if (!fd) break;
    --budget.entries;
    // Only the shim's own descriptions (a program's own OFD lock has no owner to name).
    if (fd->d_name[0] == '.' || std::atoi(fd->d_name) < kShimLockFdBase) continue;
    --budget.infos;
    std::istringstream info(ReadTextFile(dir_path + "/" + fd->d_name));
    std::string line;
    while (!found && std::getline(info, line)) {
      found = line.rfind("lock:", 0) == 0 && Conflicts(line, file, type, start, end);
    }
  }
  ::closedir(fds);
  return found;
}

// A question as read from an asker: its bytes, and the first descriptor passed with it
// (any other is closed).
struct Question {
  bool asked = false;  // false: the asker hung up (or has not asked yet)
  alignas(8) char bytes[std::max(sizeof(LockHolderQuestion), sizeof(LockHandoverQuestion))];
  size_t size = 0;
  Fd file;

  // Whether it is a `T` of `version` (its first field), copied into `out`.
  template <typename T>
  bool Is(unsigned version, T* out) const {
    unsigned asked_version;
    if (!asked || size != sizeof(T)) return false;
    std::memcpy(&asked_version, bytes, sizeof asked_version);
    if (asked_version != version) return false;
    std::memcpy(out, bytes, sizeof(T));
    return true;
  }
};

Question ReadQuestion(int socket) {
  Question question;
  bool truncated = false;
  // Every descriptor passed but the first is closed, whatever the question.
  ssize_t got = ReceiveWithFd(socket, question.bytes, sizeof question.bytes, MSG_DONTWAIT,
                              &question.file, &truncated);
  if (got < 0) return question;  // not asked yet
  question.asked = got > 0;  // 0: a hang-up
  // A longer question is none (its size is never one asked).
  question.size = truncated ? 0 : static_cast<size_t>(got);
  return question;
}

// The regular file `file` is open on (not O_PATH: one the asker may read or write), in
// `st`; else why the question is refused.
std::string RegularFileOf(const Fd& file, struct stat* st) {
  int flags = file.get() < 0 ? -1 : ::fcntl(file.get(), F_GETFL);
  if (file.get() < 0 || flags < 0 || (flags & O_PATH) || ::fstat(file.get(), st) != 0) {
    return "a question without a descriptor of the file open";
  }
  if (!S_ISREG(st->st_mode)) return "a question about something other than a regular file";
  return {};
}

}  // namespace

int OfdHolderAtHome(const std::vector<pid_t>& job_inits, uint64_t dev, uint64_t ino,
                    short type, int64_t start, int64_t end, pid_t asker) {
  if (job_inits.empty()) return -1;
  // /proc/locks names the file as MAJ:MIN:INO in hex, hex and decimal.
  std::string file = fmt::format("{:02x}:{:02x}:{}", major(dev), minor(dev), ino);
  Budget budget;
  for (pid_t pid : JobProcesses(job_inits)) {
    if (pid == ::getpid() || pid == asker) continue;
    if (HoldsShimLock(pid, file, type, start, end, budget)) return HomeIdOf(pid);
    if (budget.entries == 0 || budget.infos == 0) {
      spdlog::warn("file service: F_GETLK's holder not looked for beyond {} descriptors of "
                   "jobs at home",
                   kMaxFdInfos);
      break;
    }
  }
  return -1;
}

LockHolderSocket::LockHolderSocket(std::shared_ptr<HomeLocks> locks, const std::string& path,
                                   HomeHandover* handover)
    : locks_(std::move(locks)), handover_(handover) {
  sockaddr_un address{};
  address.sun_family = AF_UNIX;
  if (path.size() + 1 > sizeof address.sun_path) return;
  std::memcpy(address.sun_path, path.data(), path.size());
  int fd = ::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd < 0) return;
  Fd listen = Fd::Adopt(fd);
  ::unlink(path.c_str());  // a daemon before this one's
  // Any job may ask (connecting needs write permission on the socket): what it may ask
  // about is the file it passes open.
  if (::bind(fd, reinterpret_cast<sockaddr*>(&address), sizeof address) != 0 ||
      ::chmod(path.c_str(), 0666) != 0 || ::listen(fd, 64) != 0) {
    spdlog::warn(
        "file service: cannot serve lock holders to jobs at home on {}: {} (their "
        "F_GETLK names a homefs client's lock -1)",
        path, std::strerror(errno));
    return;
  }
  int stop = ::eventfd(0, EFD_CLOEXEC);
  if (stop < 0) return;
  stop_ = Fd::Adopt(stop);
  path_ = path;
  listen_ = std::move(listen);
  thread_ = std::thread([this] { Run(); });
}

LockHolderSocket::~LockHolderSocket() {
  if (!thread_.joinable()) return;
  uint64_t one = 1;
  (void)!::write(stop_.get(), &one, sizeof one);
  thread_.join();
  ::unlink(path_.c_str());
}

void LockHolderSocket::Run() {
  using Clock = std::chrono::steady_clock;
  std::vector<pollfd> fds;
  for (;;) {
    auto now = Clock::now();
    // A client that has not asked in time is let go, unanswered.
    std::erase_if(clients_, [now](const Client& c) { return c.deadline <= now; });
    fds.assign({{listen_.get(), POLLIN, 0}, {stop_.get(), POLLIN, 0}});
    int wait_ms = -1;
    for (const Client& c : clients_) {
      fds.push_back({c.fd.get(), POLLIN, 0});
      auto left = std::chrono::ceil<std::chrono::milliseconds>(c.deadline - now).count();
      wait_ms = wait_ms < 0 ? static_cast<int>(left) : std::min(wait_ms, static_cast<int>(left));
    }
    if (::poll(fds.data(), fds.size(), wait_ms) < 0) {
      if (errno == EINTR) continue;
      return;
    }
    if (fds[1].revents) return;
    // The clients that asked (or hung up) are answered and let go, then new ones taken.
    std::vector<Client> waiting;
    for (size_t i = 0; i < clients_.size(); ++i) {
      if (fds[i + 2].revents == 0) {
        waiting.push_back(std::move(clients_[i]));
      } else {
        Answer(clients_[i]);
      }
    }
    clients_ = std::move(waiting);
    if (fds[0].revents) Accept();
  }
}

void LockHolderSocket::Accept() {
  // A bounded number per turn, so that those already in get their turn too.
  for (size_t n = 0; n < kMaxClients; ++n) {
    int fd = ::accept4(listen_.get(), nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK);
    if (fd < 0) return;
    Fd client = Fd::Adopt(fd);
    ucred peer{};
    socklen_t size = sizeof peer;
    if (::getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &peer, &size) != 0) continue;
    size_t of_uid = std::count_if(clients_.begin(), clients_.end(),
                                  [&](const Client& c) { return c.uid == peer.uid; });
    if (clients_.size() >= kMaxClients || of_uid >= kMaxClientsPerUid) {
      Refused(fmt::format("uid {} has {} questions waiting ({} in all)", peer.uid, of_uid,
                          clients_.size()));
      continue;  // closed unanswered
    }
    clients_.push_back(
        {std::move(client), peer.uid, peer.pid, std::chrono::steady_clock::now() + kPatience});
  }
}

void LockHolderSocket::Answer(const Client& client) {
  Question question = ReadQuestion(client.fd.get());
  LockHolderQuestion holder{};
  LockHandoverQuestion handover{};
  std::string refusal;
  struct stat st {};
  bool hands = question.Is(kLockHandoverQuestionVersion, &handover);
  if (!question.asked) {
    // It hung up (or has not asked yet): nothing to refuse.
  } else if (!hands && !question.Is(kLockHolderQuestionVersion, &holder)) {
    refusal = "a question of another version or size";
  } else {
    refusal = RegularFileOf(question.file, &st);
  }
  if (hands) return HandOver(client, handover, refusal.empty() ? &st : nullptr, refusal);
  int pid = question.asked && refusal.empty() ? HolderFor(client, holder, st, &refusal) : -1;
  if (!refusal.empty()) Refused(fmt::format("uid {}: {}", client.uid, refusal));
  LockHolderAnswer answer{pid};
  (void)!::send(client.fd.get(), &answer, sizeof answer, MSG_NOSIGNAL | MSG_DONTWAIT);
}

int LockHolderSocket::HolderFor(const Client& client, const LockHolderQuestion& question,
                                const struct stat& st, std::string* refusal) {
  if (question.start < 0 || question.end < question.start) {
    *refusal = "a question about no range";
    return -1;
  }
  auto found = locks_->Holder({st.st_dev, st.st_ino}, {nullptr, 0}, question.type,
                              question.start, question.end);
  if (found) return *found;
  return OfdHolderAtHome(locks_->JobInits(), st.st_dev, st.st_ino, question.type,
                         question.start, question.end, client.pid);
}

void LockHolderSocket::HandOver(const Client& client, const LockHandoverQuestion& question,
                                const struct stat* st, std::string refusal) {
  HomeHandover::Handed handed;
  if (refusal.empty() && !handover_) refusal = "a handover where none is served";
  if (refusal.empty() && (question.kind < kHandPosix || question.kind > kHandAny)) {
    refusal = "a handover of no kind of lock";
  }
  if (refusal.empty()) {
    // Who asks is the pid and uid the kernel gave at accept, never the question's word.
    handed = handover_->Hand(client.pid, client.uid, {st->st_dev, st->st_ino}, question.kind);
    refusal = handed.refusal;
  }
  if (!refusal.empty()) {
    Refused(fmt::format("uid {}: {}", client.uid, refusal));
    handed.fd.Reset();
    handed.kind = -1;
  }
  LockHandoverAnswer answer{handed.kind, handed.left};
  if (SendWithFd(client.fd.get(), &answer, sizeof answer, handed.fd.get(), MSG_DONTWAIT) !=
          static_cast<ssize_t>(sizeof answer) &&
      handed.fd.valid()) {
    // Lost on the way: the description closes here, and its locks with it, as they would
    // have at the process's own close.
    spdlog::warn("file service: a lock of a job that came home not handed over: {}",
                 std::strerror(errno));
  }
}

void LockHolderSocket::Refused(const std::string& why) {
  auto now = std::chrono::steady_clock::now();
  if (now - logged_at_ < std::chrono::seconds(10)) {
    ++unlogged_;
    return;
  }
  spdlog::warn("lock holders: refused {} ({} more refused since the last such line)", why,
               unlogged_);
  logged_at_ = now;
  unlogged_ = 0;
}

}  // namespace homeward
