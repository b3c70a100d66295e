// JobJournal: what a daemon needs to take its jobs back after it was killed, one file per
// job under <state_dir>/jobs, written (temp file, fsync, rename) before the daemon acts on
// it and removed when the job ends or leaves. See "Daemon restarts" in
// docs/ARCHITECTURE.md.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <string>
#include <vector>

#include "image_stream.h"
#include "job.h"
#include "move_protocol.h"

namespace homeward {

struct JournalEntry {
  int slot = -1;              // a home job's slot; -1 for a guest
  uint64_t mosrun_start = 0;  // the home pid's start time: the same mosrun, not a reused pid
  JobLaunch launch;           // what mosps and a later move need (not the environment)
  pid_t init_pid = 0;         // 0 until the init runs
  uint64_t init_start = 0;
  pid_t keeper_pid = 0;
  uint64_t keeper_start = 0;
  // A job of this home running on another node: where it stands in the move protocol
  // (move::Record's line), and mosrun's offsets where that node's output starts.
  bool away = false;
  // A job here that a dump takes away (move::Departure), named by its state: a move
  // stops it until it ends. kHere when none is under way.
  move::Leave departure = move::Leave::kHere;
  std::string departure_to;  // the node a move goes to
  std::string record;
  uint64_t base[3] = {0, 0, 0};
  // The job arrived on its node before its old node's last output was in (the record's
  // `owed=`): `base` is not known yet (the line says `base pending`); mosrun's offsets
  // settle it after a restart.
  bool base_pending = false;
  // A job of this home frozen to disk here (mosmigrate freeze): its images' directory,
  // which also holds the input it had not read (kFrozenInput), and its pipes' roles.
  std::string frozen_dir;
  std::vector<migrate::PipeRole> pipes;
  // A guest frozen here past its home's grace ([recovery] home_grace_s): what becomes of
  // it when its home is back (continued here, or continued and sent home), and how many
  // moves it had made. Its images' directory also holds its pending output
  // (kFrozenOutput).
  bool frozen_go_home = false;
  uint32_t migrations = 0;

  // The entry's file name: the home pid for a job of this home, and for a guest its home's
  // name too (home pids are unique only within a home).
  std::string Name() const;
};

// The input a job frozen at home had not read, kept in its image directory (in the file
// kFrozenInput: "offset ended" on a line, then the bytes), synced before the journal entry
// that names the directory is written. Load throws Error(kInvalidInput) on a bad file.
inline constexpr const char* kFrozenInput = "unread-input";
void SaveFrozenInput(const std::string& dir, const InputCarry& input);
InputCarry LoadFrozenInput(const std::string& dir);

// A job frozen at home for want of room after mosctl leave, to continue by itself as
// room appears: an empty file kWaitsForRoom in its image directory, synced before the
// journal entry that names the directory is written.
inline constexpr const char* kWaitsForRoom = "waits-for-room";
void MarkWaitsForRoom(const std::string& dir);
bool WaitsForRoom(const std::string& dir);

// The output a guest frozen past its home's grace may not have delivered to its home:
// per stream (1 stdout, 2 stderr) its offset (since the job came to this node, the count
// the home keeps) and the bytes from there to the end of what the job wrote. Kept in its
// image directory (kFrozenOutput: "start1 size1 start2 size2" on a line, then the bytes),
// synced before the journal entry that names the directory is written. Load throws
// Error(kInvalidInput) on a bad file.
inline constexpr const char* kFrozenOutput = "pending-output";
// At most this much output is kept for a frozen guest: a guest with more waits on
// unfrozen (it cannot have more unless its home stopped acknowledging long before the
// cut: the relay's queue pauses the job's pipes at 1 MiB).
inline constexpr uint64_t kFrozenOutputLimit = 64ull << 20;
void SaveFrozenOutput(const std::string& dir, const FrozenOutput& output);
FrozenOutput LoadFrozenOutput(const std::string& dir);

// The entry as text, one "key value" line each; argv and paths are escaped.
std::string FormatJournalEntry(const JournalEntry& entry);
// Throws Error(kInvalidInput) on text that is not an entry.
JournalEntry ParseJournalEntry(const std::string& text);

// A restore is about to run (criu, on a move in): the job it makes will hold the pipe
// with inode `stdout_inode` as its stdout. A daemon killed before it took the job over
// leaves the intent; the next one kills what holds that pipe unless it took the job back.
void WriteRestoreIntent(const std::string& dir, uint64_t stdout_inode);
void RemoveRestoreIntent(const std::string& dir, uint64_t stdout_inode);
// Ends what restores cut by a restart left behind; `taken` are the stdout pipe inodes of
// the jobs taken back.
void CleanRestoreIntents(const std::string& dir, const std::vector<uint64_t>& taken);

class JobJournal {
 public:
  explicit JobJournal(std::string dir) : dir_(std::move(dir)) {}
  // Writes the entry (as entry.Name()) atomically.
  void Write(const JournalEntry& entry) const;
  void Remove(const std::string& name) const;
  // Every entry; one that cannot be read is logged and removed.
  std::vector<JournalEntry> ReadAll() const;
  const std::string& dir() const { return dir_; }

 private:
  std::string dir_;
};

}  // namespace homeward
