// ReplayCache: what the file service remembers of each client's non-idempotent requests
// (create, mkdir, mknod, symlink, link, unlink, rmdir, rename, a write to an O_APPEND
// file), so that a request a client sends again after its connection broke is not applied
// twice. Keyed by the client's id (random, one per homefs mount, given in its hello) and
// the request's id. Each request is logged twice, `started` before its system call and
// `done` with its errno after, to a file in the daemon's state directory (written, not
// fsynced: it outlives a killed daemon in the page cache, which is the fault it is for),
// and read back when the daemon starts. A client's `oldest` unanswered id lets the
// server forget everything older of that client.
#pragma once

#include <cstdint>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_map>

#include "fd.h"

namespace homeward {

class ReplayCache {
 public:
  enum class State {
    kUnknown,  // never seen (or forgotten): perform it
    kStarted,  // begun by a daemon that died before it logged the outcome
    kDone,     // performed; `err` is what it answered
  };
  struct Seen {
    State state = State::kUnknown;
    int err = 0;
  };
  // At most this many requests remembered per client: a client's window of unanswered
  // requests is far smaller (the kernel's background limit), so the oldest may go.
  static constexpr size_t kPerClient = 16384;

  // `path` empty: in memory only (tests, a daemon without a state directory). Otherwise
  // the log is read, compacted to what is still remembered, and appended to from then on.
  explicit ReplayCache(std::string path = {});
  ReplayCache(const ReplayCache&) = delete;
  ReplayCache& operator=(const ReplayCache&) = delete;

  Seen Find(uint64_t client, uint64_t id);
  void Start(uint64_t client, uint64_t id);
  void Finish(uint64_t client, uint64_t id, int err);
  // The client has the answers of every request before `oldest`.
  void Ack(uint64_t client, uint64_t oldest);
  size_t size();

 private:
  struct Record {
    uint64_t client;
    uint64_t id;
    int32_t kind;  // 0 started, 1 done, 2 ack
    int32_t err;
  };
  void Apply(const Record& r);
  void Append(const Record& r);
  void Compact();

  std::string path_;
  std::mutex mutex_;
  // client -> id -> (done, err)
  std::unordered_map<uint64_t, std::map<uint64_t, std::pair<bool, int>>> clients_;
  Fd log_;
  size_t log_bytes_ = 0;
};

}  // namespace homeward
