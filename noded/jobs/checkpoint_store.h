// A job's checkpoint directory (mosrun -C DIR): numbered checkpoints, each complete or
// absent, each sealed by the daemon so that a restart restores only what a daemon of the
// cluster wrote. Every call blocks; the daemon runs them on libuv's thread pool.
//
// DIR/ckpt-N holds the images of checkpoint N and `manifest`: what restarting the job
// needs besides its images (its launch, its pipes, when it was taken) and each image's
// size and BLAKE2b hash, sealed with a key derived from the cluster key. A checkpoint is
// written as DIR/.ckpt-N.partial (root's, mode 0700, see checkpoint_dir.h) and renamed to
// ckpt-N by the user only once complete, so a crash or a full disk mid-checkpoint leaves
// the previous ones as they were; a failed one is removed.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "checkpoint.h"
#include "fs_credentials.h"
#include "image_stream.h"
#include "job.h"

namespace homeward {

struct CheckpointManifest {
  uint64_t number = 0;
  int64_t taken_unix_ms = 0;
  JobLaunch launch;  // argv, env, cwd, home, identity, pid_base, options, plan
  std::vector<migrate::PipeRole> pipes;
  // The checkpoint's place in the job's input: the offset (as mosrun numbers its input) of
  // the first byte the job had not read when it was dumped; unknown for a checkpoint that
  // could not measure it (one written by an older daemon, or by a node away from home).
  std::optional<uint64_t> input_offset;
};

// Fills the image directory it is given (a /proc/self/fd path); may set what it measured
// of the job (its input_offset) in the manifest.
using CheckpointDump =
    std::function<migrate::DumpResult(const std::string& image_dir, CheckpointManifest& manifest)>;

struct WrittenCheckpoint {
  std::string path;  // DIR/ckpt-N
  uint64_t number = 0;
  migrate::DumpResult dump;
};

// The sealing key for checkpoints, derived from the cluster key.
std::vector<uint8_t> CheckpointKey(const std::vector<uint8_t>& cluster_key);

// Writes checkpoint number max+1 into `dir` (made as `who` when missing): `dump` fills the
// image directory it is given (a /proc/self/fd path), then the manifest is written, the
// directory handed to `who` and renamed into place; then all but the newest `keep` (0:
// all) are removed, as `who`. Throws Error naming the cause; nothing of a failed one
// stays.
WrittenCheckpoint WriteCheckpoint(
    const std::string& dir, const FsIdentity& who, uint32_t keep, const std::vector<uint8_t>& key,
    CheckpointManifest manifest, const CheckpointDump& dump);

// The same, for a job running on a node that is not its home: `dir` is the job's
// checkpoint directory as this node sees the home's tree (through homefs), and everything
// in it is written as `who`, so the home's file server applies the user's rights; the
// images come from `image_dir`, a local dump, and are hashed as they are copied, so the
// seal covers what was dumped whatever happens to the files on the way.
WrittenCheckpoint PublishCheckpoint(const std::string& dir, const FsIdentity& who, uint32_t keep,
                                    const std::vector<uint8_t>& key, CheckpointManifest manifest,
                                    const std::string& image_dir);

// Finds the newest checkpoint in `dir` that is complete, sealed with `key` and of user
// `who.uid` (any user's when `any_user`, for root), reading as `who`, and copies its
// images into `copy_dir` (root's, empty), checking each against the manifest as it is
// copied, so that nothing the user changes afterwards reaches criu. A damaged checkpoint
// is passed over for the one before. Throws Error(kNotFound) naming why each was refused.
CheckpointManifest CopyNewestCheckpoint(const std::string& dir, const FsIdentity& who,
                                        bool any_user, const std::vector<uint8_t>& key,
                                        const std::string& copy_dir);

}  // namespace homeward
