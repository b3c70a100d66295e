// The file service's memory of non-idempotent requests, across its own restarts.
#include "replay_cache.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>

#include <spdlog/spdlog.h>

#include "fs_credentials.h"

namespace homeward {

namespace {
// The log is rewritten from memory when it grows past this.
constexpr size_t kCompactBytes = 4 << 20;
}  // namespace

ReplayCache::ReplayCache(std::string path, Durability durability)
    : path_(std::move(path)), durability_(durability) {
  if (path_.empty()) return;
  std::error_code ec;  // the state directory may not be made yet; Compact says so if not
  std::filesystem::create_directories(std::filesystem::path(path_).parent_path(), ec);
  Fd in = Fd::Adopt(::open(path_.c_str(), O_RDONLY | O_CLOEXEC));
  if (in.valid()) {
    Record r;
    while (::read(in.get(), &r, sizeof r) == static_cast<ssize_t>(sizeof r)) Apply(r);
  }
  Compact();
}

ReplayCache::~ReplayCache() {
  WriteDeferred();
}

void ReplayCache::Apply(const Record& r) {
  if (r.kind == 3 || r.kind == 4) {
    // An append's base, in two halves after its `started`.
    auto base = static_cast<uint64_t>(append_bases_[{r.client, r.id}]);
    auto half = static_cast<uint64_t>(static_cast<uint32_t>(r.err));
    base = r.kind == 3 ? (base & ~uint64_t{0xffffffff}) | half
                       : (base & uint64_t{0xffffffff}) | (half << 32);
    append_bases_[{r.client, r.id}] = static_cast<int64_t>(base);
    return;
  }
  auto& ids = clients_[r.client];
  if (r.kind == 2) {
    ids.erase(ids.begin(), ids.lower_bound(r.id));
    append_bases_.erase(append_bases_.lower_bound({r.client, 0}),
                        append_bases_.lower_bound({r.client, r.id}));
    if (ids.empty()) clients_.erase(r.client);
    return;
  }
  if (r.kind == 1) append_bases_.erase({r.client, r.id});
  ids[r.id] = {r.kind == 1, r.err};
  while (ids.size() > kPerClient) ids.erase(ids.begin());
}

uint64_t ReplayCache::Append(std::initializer_list<Record> records) {
  if (!log_.valid()) return 0;
  deferred_.insert(deferred_.end(), records.begin(), records.end());
  size_t bytes = deferred_.size() * sizeof(Record);
  // A short write (a full disk) costs only the memory of these requests after a restart.
  if (::write(log_.get(), deferred_.data(), bytes) != static_cast<ssize_t>(bytes)) {
    spdlog::warn("file service: replay log {}: {}", path_, std::strerror(errno));
  }
  deferred_.clear();
  has_deferred_.store(false, std::memory_order_release);
  log_bytes_ += bytes;
  if (log_bytes_ > kCompactBytes) Compact();  // synced whole before the rename
  std::lock_guard lock(sync_mutex_);
  return ++appended_;
}

void ReplayCache::WriteDeferred() {
  // Seen empty: whoever emptied it wrote the records before (release, acquire), so a
  // send that follows comes after them.
  if (!has_deferred_.load(std::memory_order_acquire)) return;
  std::lock_guard lock(mutex_);
  if (!deferred_.empty()) Append({});
}

void ReplayCache::Sync(uint64_t seq) {
  if (seq == 0 || durability_ != Durability::kSynced) return;
  std::unique_lock lock(sync_mutex_);
  while (synced_ < seq) {
    if (syncing_) {
      synced_cv_.wait(lock);
      continue;
    }
    // This caller syncs for every record written so far, its own and others'.
    syncing_ = true;
    uint64_t upto = appended_;
    std::shared_ptr<Fd> log = sync_log_;
    lock.unlock();
    // The file may be replaced by a compaction meanwhile: that one was synced whole
    // before its rename, so syncing the old one too is harmless.
    if (log && log->valid() && ::fdatasync(log->get()) != 0) {
      spdlog::warn("file service: replay log {}: {}", path_, std::strerror(errno));
    }
    lock.lock();
    syncing_ = false;
    if (upto > synced_) synced_ = upto;
    synced_cv_.notify_all();
  }
}

void ReplayCache::Compact() {
  // The log is the daemon's, in its state directory, and the record that passes the
  // threshold is written by a thread serving a user, with the user's fs ids: they would
  // be refused the new file (and the log lost until a restart).
  ScopedDaemonFsIds daemon;
  // Written whole to a new file and renamed over the old: a kill meanwhile leaves one or
  // the other.
  std::string next = path_ + ".new";
  Fd out = Fd::Adopt(::open(next.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600));
  if (!out.valid()) {
    spdlog::warn(
        "file service: replay log {}: {}; requests resent after a restart may be "
        "applied twice",
        next, std::strerror(errno));
    log_ = Fd();
    return;
  }
  size_t bytes = 0;
  bool ok = true;
  for (const auto& [client, ids] : clients_) {
    for (const auto& [id, seen] : ids) {
      Record r{client, id, seen.first ? 1 : 0, seen.second};
      ok = ok && ::write(out.get(), &r, sizeof r) == static_cast<ssize_t>(sizeof r);
      bytes += sizeof r;
      auto base = append_bases_.find({client, id});
      if (!seen.first && base != append_bases_.end()) {
        auto value = static_cast<uint64_t>(base->second);
        Record halves[2] = {{client, id, 3, static_cast<int32_t>(value & 0xffffffff)},
                            {client, id, 4, static_cast<int32_t>(value >> 32)}};
        ok = ok && ::write(out.get(), halves, sizeof halves) == static_cast<ssize_t>(sizeof halves);
        bytes += sizeof halves;
      }
    }
  }
  ok = ok && ::fdatasync(out.get()) == 0;
  if (!ok || ::rename(next.c_str(), path_.c_str()) != 0) {
    spdlog::warn("file service: replay log {}: {}", path_, std::strerror(errno));
    ::unlink(next.c_str());
  }
  // The rename is made durable with the directory.
  Fd dir = Fd::Adopt(::open(std::filesystem::path(path_).parent_path().c_str(),
                            O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (dir.valid()) ::fsync(dir.get());
  log_ = Fd::Adopt(::open(path_.c_str(), O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600));
  log_bytes_ = bytes;
  std::lock_guard lock(sync_mutex_);
  sync_log_ = log_.valid()
                  ? std::make_shared<Fd>(Fd::Adopt(::fcntl(log_.get(), F_DUPFD_CLOEXEC, 0)))
                  : nullptr;
  // Every record written so far is in the new file, synced before its rename.
  if (ok) synced_ = appended_;
}

ReplayCache::Seen ReplayCache::Find(uint64_t client, uint64_t id) {
  std::lock_guard lock(mutex_);
  auto it = clients_.find(client);
  if (it == clients_.end()) return {};
  auto seen = it->second.find(id);
  if (seen == it->second.end()) return {};
  Seen found{seen->second.first ? State::kDone : State::kStarted, seen->second.second};
  if (auto base = append_bases_.find({client, id}); base != append_bases_.end()) {
    found.append_base = base->second;
  }
  return found;
}

void ReplayCache::Start(uint64_t client, uint64_t id) {
  uint64_t seq;
  {
    std::lock_guard lock(mutex_);
    Record r{client, id, 0, 0};
    Apply(r);
    seq = Append({r});
  }
  Sync(seq);  // durable: on the disk before the request's system call
}

void ReplayCache::StartAppend(uint64_t client, uint64_t id, int64_t base) {
  uint64_t seq = 0;
  {
    std::lock_guard lock(mutex_);
    auto value = static_cast<uint64_t>(base);
    Record started{client, id, 0, 0};
    Record low{client, id, 3, static_cast<int32_t>(value & 0xffffffff)};
    Record high{client, id, 4, static_cast<int32_t>(value >> 32)};
    for (const Record& r : {started, low, high}) Apply(r);
    seq = Append({started, low, high});
  }
  Sync(seq);  // durable: on the disk before the write
}

void ReplayCache::Finish(uint64_t client, uint64_t id, int err) {
  uint64_t seq;
  {
    std::lock_guard lock(mutex_);
    Record r{client, id, 1, err};
    Apply(r);
    if (err == 0 && log_.valid()) {
      deferred_.push_back(r);
      has_deferred_.store(true, std::memory_order_relaxed);
      return;
    }
    seq = Append({r});
  }
  // Durable, a failure's answer is on the disk before the reply: performed again after a power
  // loss, the call could meet the very error that marks a started request as done. A
  // success's record goes with the next sync: lost with the power, the request is found
  // started, and its outcome in the tree says it was done (FileSession::Perform), as when
  // the daemon dies between the call and its record.
  if (err != 0) Sync(seq);
}

void ReplayCache::Ack(uint64_t client, uint64_t oldest) {
  std::lock_guard lock(mutex_);
  auto it = clients_.find(client);
  // Logged only when it forgets something: most requests change nothing here.
  if (it == clients_.end() || it->second.empty() || it->second.begin()->first >= oldest) return;
  Record r{client, oldest, 2, 0};
  Apply(r);
  // Written with the next record, as a success's is: lost, it only leaves more remembered
  // after a restart. Each answered create, removal or append moves the client's oldest on,
  // so this saves a write a request.
  if (log_.valid()) {
    deferred_.push_back(r);
    has_deferred_.store(true, std::memory_order_relaxed);
  }
}

size_t ReplayCache::size() {
  std::lock_guard lock(mutex_);
  size_t n = 0;
  for (const auto& [client, ids] : clients_) n += ids.size();
  return n;
}

}  // namespace homeward
