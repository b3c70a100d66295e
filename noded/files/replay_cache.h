// ReplayCache: what the file service remembers of each client's non-idempotent requests
// (create, mkdir, mknod, symlink, link, unlink, rmdir, rename, a write to an O_APPEND
// file), so that a request a client sends again after its connection broke is not applied
// twice. Keyed by the client's id (random, one per homefs mount, given in its hello) and
// the request's id. Each request is logged twice, `started` before its system call and
// `done` with its errno after, to a file in the daemon's state directory, and read back
// when the daemon starts. A `started` record is written (to the kernel) before Start
// returns, so before the request's system call, and a `done` record before the reply: a
// daemon killed, crashed or restarted at any point finds every request it began (one
// found only started is judged by its outcome in the tree). A success's `done` waits in
// memory for the next record or the next reply (WriteDeferred, which the file service
// calls before each send), so a run of requests costs one write each, not two, and no
// answer ever leaves before the record of what it answers.
//
// Durable (`[files] sync_replay_log`), a `started` record is also on the disk (fdatasync)
// before the system call, so it outlives the home's power loss or kernel crash, and so
// is a failure's `done` record before its reply; a success's goes with the next sync.
// One sync per request, shared (group commit): a caller whose record is in the file
// waits for a sync under way or starts one that covers every record written until then.
// Not durable (the default), the log is as durable as the calls it records, which the
// home's kernel writes back as it writes back the tree: a power loss may lose the record
// of a call whose effect survived, and that call, sent again, is performed again (as
// with NFS's reply cache after a server reboot). A client's `oldest` unanswered id lets
// the server forget everything older of that client.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <initializer_list>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "fd.h"

namespace homeward {

class ReplayCache {
 public:
  enum class Durability {
    kWritten,  // records outlive the daemon, not the home's power loss
    kSynced,   // records are on the disk before the calls they record
  };
  enum class State {
    kUnknown,  // never seen (or forgotten): perform it
    kStarted,  // begun by a daemon that died before it logged the outcome
    kDone,     // performed; `err` is what it answered
  };
  struct Seen {
    State state = State::kUnknown;
    int err = 0;
    // An O_APPEND write started: the file's size just before it (-1: not known).
    int64_t append_base = -1;
  };
  // Set from the daemon's fault points: Perform dies after an append (kill-after-append).
  bool kill_after_append = false;

  // At most this many requests remembered per client: a client's window of unanswered
  // requests is far smaller (the kernel's background limit), so the oldest may go.
  static constexpr size_t kPerClient = 16384;

  // `path` empty: in memory only (tests, a daemon without a state directory). Otherwise
  // the log is read, compacted to what is still remembered, and appended to from then on.
  explicit ReplayCache(std::string path = {}, Durability durability = Durability::kWritten);
  ~ReplayCache();  // writes what is deferred
  ReplayCache(const ReplayCache&) = delete;
  ReplayCache& operator=(const ReplayCache&) = delete;

  Seen Find(uint64_t client, uint64_t id);
  void Start(uint64_t client, uint64_t id);
  // An O_APPEND write about to be made to a file of `base` bytes: a write started and not
  // logged done can then be found in the file (FileSession::Perform).
  void StartAppend(uint64_t client, uint64_t id, int64_t base);
  // A success's record is deferred (see WriteDeferred); a failure's is written at once.
  void Finish(uint64_t client, uint64_t id, int err);
  // Writes the deferred records, if any: before any answer leaves (cheap when none are).
  void WriteDeferred();
  // The client has the answers of every request before `oldest` (its record deferred, as
  // a success's).
  void Ack(uint64_t client, uint64_t oldest);
  size_t size();

 private:
  struct Record {
    uint64_t client;
    uint64_t id;
    int32_t kind;  // 0 started, 1 done, 2 ack, 3 and 4 an append's base (low, high half)
    int32_t err;
  };
  void Apply(const Record& r);
  // Writes the deferred records and then `records` in one write; returns the write's
  // sequence number, for Sync (with mutex_ held).
  uint64_t Append(std::initializer_list<Record> records);
  void Compact();
  // Returns once every record up to `seq` is on the disk (mutex_ not held).
  void Sync(uint64_t seq);

  std::string path_;
  Durability durability_;
  std::mutex mutex_;
  // Group commit: records written (appended_) and known on the disk (synced_), counted
  // from the start; one caller syncs at a time (syncing_), the others wait on synced_cv_.
  std::mutex sync_mutex_;
  std::condition_variable synced_cv_;
  uint64_t appended_ = 0;
  uint64_t synced_ = 0;
  bool syncing_ = false;
  std::shared_ptr<Fd> sync_log_;  // the log as the syncer syncs it, kept open while it does
  // client -> id -> (done, err)
  std::unordered_map<uint64_t, std::map<uint64_t, std::pair<bool, int>>> clients_;
  // (client, id) -> the base of an append started and not done
  std::map<std::pair<uint64_t, uint64_t>, int64_t> append_bases_;
  Fd log_;
  size_t log_bytes_ = 0;
  std::vector<Record> deferred_;         // applied, not yet written (under mutex_)
  std::atomic<bool> has_deferred_{false};  // deferred_ is not empty (read without the lock)
};

}  // namespace homeward
