// The file service's memory of non-idempotent requests, across its own restarts.
#include "replay_cache.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>

#include <spdlog/spdlog.h>

namespace homeward {

namespace {
// The log is rewritten from memory when it grows past this.
constexpr size_t kCompactBytes = 4 << 20;
}  // namespace

ReplayCache::ReplayCache(std::string path) : path_(std::move(path)) {
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

void ReplayCache::Apply(const Record& r) {
  auto& ids = clients_[r.client];
  if (r.kind == 2) {
    ids.erase(ids.begin(), ids.lower_bound(r.id));
    if (ids.empty()) clients_.erase(r.client);
    return;
  }
  ids[r.id] = {r.kind == 1, r.err};
  while (ids.size() > kPerClient) ids.erase(ids.begin());
}

void ReplayCache::Append(const Record& r) {
  if (!log_.valid()) return;
  // A short write (a full disk) costs only the memory of this request after a restart.
  if (::write(log_.get(), &r, sizeof r) != static_cast<ssize_t>(sizeof r)) {
    spdlog::warn("file service: replay log {}: {}", path_, std::strerror(errno));
  }
  log_bytes_ += sizeof r;
  if (log_bytes_ > kCompactBytes) Compact();
}

void ReplayCache::Compact() {
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
    }
  }
  if (!ok || ::rename(next.c_str(), path_.c_str()) != 0) {
    spdlog::warn("file service: replay log {}: {}", path_, std::strerror(errno));
    ::unlink(next.c_str());
  }
  log_ = Fd::Adopt(::open(path_.c_str(), O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600));
  log_bytes_ = bytes;
}

ReplayCache::Seen ReplayCache::Find(uint64_t client, uint64_t id) {
  std::lock_guard lock(mutex_);
  auto it = clients_.find(client);
  if (it == clients_.end()) return {};
  auto seen = it->second.find(id);
  if (seen == it->second.end()) return {};
  return {seen->second.first ? State::kDone : State::kStarted, seen->second.second};
}

void ReplayCache::Start(uint64_t client, uint64_t id) {
  std::lock_guard lock(mutex_);
  Record r{client, id, 0, 0};
  Apply(r);
  Append(r);
}

void ReplayCache::Finish(uint64_t client, uint64_t id, int err) {
  std::lock_guard lock(mutex_);
  Record r{client, id, 1, err};
  Apply(r);
  Append(r);
}

void ReplayCache::Ack(uint64_t client, uint64_t oldest) {
  std::lock_guard lock(mutex_);
  auto it = clients_.find(client);
  // Logged only when it forgets something: most requests change nothing here.
  if (it == clients_.end() || it->second.empty() || it->second.begin()->first >= oldest) return;
  Record r{client, oldest, 2, 0};
  Apply(r);
  Append(r);
}

size_t ReplayCache::size() {
  std::lock_guard lock(mutex_);
  size_t n = 0;
  for (const auto& [client, ids] : clients_) n += ids.size();
  return n;
}

}  // namespace homeward
