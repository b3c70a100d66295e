// The input a job was given since its newest checkpoint, kept at its home, so that a
// restart from that checkpoint gives the job again what it had read after it (see
// "Checkpoints and recovery" in docs/ARCHITECTURE.md).
//
// One file per checkpoint directory, `<state_dir>/input-logs/<uid>-<hash of DIR>` (one
// job per directory): a 32-byte header (magic, `start`, `base`, `run`: the job's first
// start, JobLaunch::started_unix_ms, which its restarts keep) and then the bytes of the
// job's input stream, the byte at offset X (as mosrun numbers its input) at file position
// 32 + X - base. Bytes before `start` are punched out, so the file holds what a restart
// from a checkpoint at `start` or later needs, at most kInputLogLimit bytes of it: past
// that `start` moves on, and a checkpoint before it is not replayable any more (a restart
// from it says so). Beside it, `<log>.dir` names the checkpoint directory (NoteDir).
//
// Durability: a daemon killed loses nothing (the page cache keeps it); for a machine that
// loses power, what was written is made durable by Sync (fdatasync), which the daemon calls
// once per event-loop turn that added to the log, before it reads the next input, not per
// write.
//
// Lifetime: the log belongs with the job's checkpoints. A job that never had one and whose
// exit reached its mosrun has its log removed (Remove): nothing can restart it. Otherwise
// (a checkpoint was written, or the job was lost) the log stays for `mosrun -R`, which may
// restart from the same checkpoint more than once, as long as the checkpoint directory
// does, or until a new job starts with that directory; a daemon starting removes the logs
// no journaled job uses whose directory is gone, or which name none (SweepOrphans).
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "fd.h"

namespace homeward {

constexpr uint64_t kInputLogLimit = 64ull << 20;

class InputLog {
 public:
  // The log of the job whose checkpoints go to `dir`, owned by `uid`.
  static std::string PathFor(const std::string& state_dir, uid_t uid, const std::string& dir);
  // Opens the log of run `run` at `path`, made empty when missing, damaged, of another run
  // or when `fresh` (a new job); throws Error when it cannot be made.
  static InputLog Open(const std::string& path, int64_t run, bool fresh,
                       uint64_t limit = kInputLogLimit);

  // Bytes of the input stream at `offset`: those past the log's end are added (a gap
  // before them starts the log anew there: what is missing cannot be replayed).
  void Append(uint64_t offset, const void* data, size_t size);
  // A checkpoint whose place in the input is `offset` is current: what is before it is
  // not needed any more.
  void Trim(uint64_t offset);
  uint64_t start() const { return start_; }
  uint64_t end() const { return end_; }
  const std::string& path() const { return path_; }
  // Whether bytes or the header were written since the last Sync.
  bool dirty() const { return dirty_; }
  // Makes what was written durable (fdatasync), if anything was; throws Error.
  void Sync();

  // Notes beside the log at `path` that it belongs to checkpoint directory `dir`.
  static void NoteDir(const std::string& path, const std::string& dir);
  // Removes the log at `path` and its note.
  static void Remove(const std::string& path);
  // Removes the logs under `state_dir` that are not in `in_use` and whose checkpoint
  // directory is gone or not noted; returns their paths.
  static std::vector<std::string> SweepOrphans(const std::string& state_dir,
                                               const std::set<std::string>& in_use);

  // Blocks: the bytes of run `run` from `from` to the log's end, or nullopt (with `why`)
  // when the log no longer holds them (or never did).
  static std::optional<std::string> Replay(const std::string& path, int64_t run, uint64_t from,
                                           std::string* why);

 private:
  void WriteHeader();

  Fd file_;
  std::string path_;
  uint64_t limit_ = kInputLogLimit;
  uint64_t start_ = 0;  // the first byte held
  uint64_t base_ = 0;   // the offset at file position kHeader
  uint64_t end_ = 0;    // one past the last byte held
  int64_t run_ = 0;
  bool dirty_ = false;
};

}  // namespace homeward
