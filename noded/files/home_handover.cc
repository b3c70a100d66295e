// The locks of a job that comes home, held until its processes take them; see
// home_handover.h.
#include "home_handover.h"

#include <dirent.h>
#include <sys/stat.h>

#include <algorithm>
#include <cstdlib>
#include <set>
#include <utility>
#include <vector>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "file_ops.h"
#include "lock_handover.h"
#include "lock_holder.h"

namespace homeward {

namespace {

constexpr auto kSweepInterval = std::chrono::milliseconds(100);

using Inode = std::pair<uint64_t, uint64_t>;

// A process of a restored job: its pid in the job and the files it holds open.
struct JobProcess {
  long inner = 0;
  std::set<Inode> open;
};

uint64_t MountNamespaceOf(long pid) {
  struct stat st;
  std::string path = fmt::format("/proc/{}/ns/mnt", pid);
  return ::stat(path.c_str(), &st) == 0 ? st.st_ino : 0;
}

// The processes in the mount namespaces `wanted`, by namespace.
std::map<uint64_t, std::vector<JobProcess>> ProcessesIn(const std::set<uint64_t>& wanted) {
  std::map<uint64_t, std::vector<JobProcess>> found;
  DIR* proc = ::opendir("/proc");
  if (!proc) return found;
  while (dirent* entry = ::readdir(proc)) {
    char* rest = nullptr;
    long pid = std::strtol(entry->d_name, &rest, 10);
    if (pid <= 0 || *rest != '\0') continue;
    uint64_t ns = MountNamespaceOf(pid);
    if (!wanted.count(ns)) continue;
    JobProcess process;
    process.inner = InnermostPid(static_cast<pid_t>(pid));
    std::string fds = fmt::format("/proc/{}/fd", pid);
    if (DIR* dir = ::opendir(fds.c_str())) {
      while (dirent* fd = ::readdir(dir)) {
        struct stat st;
        if (fd->d_name[0] == '.') continue;
        if (::stat((fds + "/" + fd->d_name).c_str(), &st) == 0 && S_ISREG(st.st_mode)) {
          process.open.insert({st.st_dev, st.st_ino});
        }
      }
      ::closedir(dir);
    }
    found[ns].push_back(std::move(process));
  }
  ::closedir(proc);
  return found;
}

}  // namespace

struct HomeHandover::Claimed {
  uint64_t mntns = 0;
  uid_t uid = 0;
  std::shared_ptr<FileSession::Carried> carried;
  bool restored = false;
  size_t left() const { return carried->posix.size() + carried->flocks.size(); }
};

HomeHandover::HomeHandover(std::shared_ptr<HomeLocks> locks) : locks_(std::move(locks)) {}

HomeHandover::~HomeHandover() {
  {
    std::lock_guard lock(mutex_);
    stopping_ = true;
  }
  wake_.notify_all();
  if (watcher_.joinable()) watcher_.join();
}

bool HomeHandover::Claim(uint64_t token, uint64_t mntns, uid_t uid) {
  auto carried = std::static_pointer_cast<FileSession::Carried>(locks_->Unpark(token));
  if (!carried) return false;
  auto claimed = std::make_shared<Claimed>();
  claimed->mntns = mntns;
  claimed->uid = uid;
  claimed->carried = std::move(carried);
  spdlog::info("file service: {} lock owners and {} flocks of a job that comes home held for it",
               claimed->carried->posix.size(), claimed->carried->flocks.size());
  std::lock_guard lock(mutex_);
  claims_[token] = std::move(claimed);
  return true;
}

void HomeHandover::Restored(uint64_t token) {
  std::lock_guard lock(mutex_);
  auto it = claims_.find(token);
  if (it == claims_.end()) return;
  it->second->restored = true;
  if (!watcher_.joinable()) watcher_ = std::thread([this] { Watch(); });
  wake_.notify_all();
}

void HomeHandover::Unclaim(uint64_t token) {
  std::shared_ptr<Claimed> claimed;
  {
    std::lock_guard lock(mutex_);
    auto it = claims_.find(token);
    if (it == claims_.end()) return;
    claimed = std::move(it->second);
    claims_.erase(it);
  }
  locks_->Park(token, std::move(claimed->carried));
}

HomeHandover::Handed HomeHandover::Hand(pid_t pid, uid_t uid, Inode inode, int kind) {
  Handed handed;
  // The asker's job is the one restored in its mount namespace (no other process is in
  // it); its POSIX locks are its own pid's in the job.
  uint64_t ns = pid > 0 ? MountNamespaceOf(pid) : 0;
  long inner = pid > 0 ? InnermostPid(pid) : 0;
  std::lock_guard lock(mutex_);
  auto it = std::find_if(claims_.begin(), claims_.end(),
                         [ns](const auto& claim) { return ns != 0 && claim.second->mntns == ns; });
  if (it == claims_.end() || inner == 0) {
    handed.kind = -1;
    handed.refusal = fmt::format("pid {} is not a process of a job that came home", pid);
    return handed;
  }
  Claimed& claimed = *it->second;
  if (claimed.uid != uid) {
    handed.kind = -1;
    handed.refusal = fmt::format("pid {} runs as uid {}, its job as uid {}", pid, uid, claimed.uid);
    return handed;
  }
  auto& posix = claimed.carried->posix;
  auto owned = std::find_if(posix.begin(), posix.end(), [&](const auto& p) {
    return p.inode == inode && p.pid == inner;
  });
  auto& flocks = claimed.carried->flocks;
  auto flocked = std::find_if(flocks.begin(), flocks.end(),
                              [&](const auto& f) { return f.inode == inode; });
  if ((kind & kHandPosix) && owned != posix.end()) {
    if (owned->kept) owned->kept->Release();
    locks_->Forget(inode, {claimed.carried.get(), static_cast<uint64_t>(owned->pid)});
    handed.fd = std::move(owned->fd);
    handed.kind = kHandPosix;
    posix.erase(owned);
  } else if ((kind & kHandFlock) && flocked != flocks.end()) {
    if (flocked->kept) flocked->kept->Release();
    handed.fd = std::move(flocked->fd);
    handed.kind = kHandFlock;
    flocks.erase(flocked);
  }
  handed.left = static_cast<int>(claimed.left());
  if (handed.kind) {
    spdlog::debug("file service: a lock of a job that came home handed to its process {}", inner);
  }
  if (claimed.left() == 0) claims_.erase(it);
  return handed;
}

void HomeHandover::Watch() {
  std::unique_lock lock(mutex_);
  while (!stopping_) {
    bool restored = false;
    for (auto& [token, claimed] : claims_) restored = restored || claimed->restored;
    if (restored) {
      wake_.wait_for(lock, kSweepInterval);
    } else {
      wake_.wait(lock);
    }
    if (stopping_) break;
    lock.unlock();
    Sweep();
    lock.lock();
  }
}

void HomeHandover::Sweep() {
  std::set<uint64_t> wanted;
  {
    std::lock_guard lock(mutex_);
    for (auto& [token, claimed] : claims_) {
      if (claimed->restored) wanted.insert(claimed->mntns);
    }
  }
  if (wanted.empty()) return;
  auto processes = ProcessesIn(wanted);
  auto holds = [&](uint64_t ns, const Inode& inode, long inner) {
    for (const JobProcess& process : processes[ns]) {
      if ((inner == 0 || process.inner == inner) && process.open.count(inode)) return true;
    }
    return false;
  };
  // Let go of outside the mutex: their last reference unlocks them (LockKeeper::Kept).
  std::vector<std::shared_ptr<FileSession::Carried>> gone;
  std::lock_guard lock(mutex_);
  for (auto it = claims_.begin(); it != claims_.end();) {
    Claimed& claimed = *it->second;
    if (!claimed.restored) {
      ++it;
      continue;
    }
    auto dropped = std::make_shared<FileSession::Carried>();
    auto& posix = claimed.carried->posix;
    for (auto p = posix.begin(); p != posix.end();) {
      if (holds(claimed.mntns, p->inode, p->pid)) {
        ++p;
        continue;
      }
      locks_->Forget(p->inode, {claimed.carried.get(), static_cast<uint64_t>(p->pid)});
      dropped->posix.push_back(std::move(*p));
      p = posix.erase(p);
    }
    auto& flocks = claimed.carried->flocks;
    for (auto f = flocks.begin(); f != flocks.end();) {
      if (holds(claimed.mntns, f->inode, 0)) {
        ++f;
        continue;
      }
      dropped->flocks.push_back(std::move(*f));
      f = flocks.erase(f);
    }
    if ((dropped->posix.size() + dropped->flocks.size()) > 0) {
      spdlog::info(
          "file service: {} locks of a job that came home go: it no longer holds "
          "their files",
          (dropped->posix.size() + dropped->flocks.size()));
      gone.push_back(std::move(dropped));
    }
    it = claimed.left() == 0 ? claims_.erase(it) : std::next(it);
  }
}

}  // namespace homeward
