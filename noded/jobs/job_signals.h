// mosrun's numbered signals as the daemon hands them to a job's init (see "Signals that are
// not lost" in docs/ARCHITECTURE.md): queued with SI_QUEUE and a value that names the
// mosrun and the signal's number, so that the init, which lives through moves, restarts of
// its daemon and checkpoints, forwards each number once only, however often it comes.
#pragma once

#include <signal.h>
#include <sys/types.h>

#include <cstdint>

namespace homeward::job_signals {

// The value's top byte says "a numbered signal"; then the mosrun's pid (24 bits: pids are
// at most 2^22), then the number.
constexpr uint64_t kMark = 0xa5;

constexpr uint64_t Value(pid_t mosrun, uint32_t number) {
  return (kMark << 56) | ((static_cast<uint64_t>(mosrun) & 0xffffff) << 32) | number;
}

// What the init remembers: the last number it forwarded, and of which mosrun (a job
// restarted from a checkpoint has a new mosrun, which numbers from 1 again).
struct Seen {
  uint32_t mosrun = 0;
  uint32_t last = 0;

  // True when the signal carrying `value` (queued with `code`) was forwarded already and
  // must be dropped; else records it. mosrun sends one signal at a time and the next only
  // once this one is acknowledged, so numbers arrive in order.
  bool Repeat(int code, uint64_t value) {
    if (code != SI_QUEUE || (value >> 56) != kMark) return false;
    uint32_t who = static_cast<uint32_t>((value >> 32) & 0xffffff);
    uint32_t number = static_cast<uint32_t>(value);
    if (who == mosrun && number <= last) return true;
    mosrun = who;
    last = number;
    return false;
  }
};

}  // namespace homeward::job_signals
