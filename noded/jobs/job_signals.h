// mosrun's numbered signals as the daemon hands them to a job's init (see "Signals that are
// not lost" in docs/ARCHITECTURE.md): each queued on a real-time carrier signal with
// SI_QUEUE and a value that names the signal, the mosrun and the number, so that the init,
// which lives through moves, restarts of its daemon and checkpoints, forwards each number
// once only, however often it comes.
//
// Why a carrier and not the signal itself: the kernel keeps one pending instance of a
// standard signal. A resent SIGUSR1 (number 1, which the init will drop) still pending when
// the next SIGUSR1 (number 2) is queued would swallow it, and the user's signal would be
// lost; real-time signals queue, every one with its own value, in order.
#pragma once

#include <signal.h>
#include <sys/types.h>

#include <cstdint>

namespace homeward::job_signals {

// SIGRTMAX: glibc keeps the lowest real-time signals for itself.
inline int Carrier() { return SIGRTMAX; }

// The value's top byte is the signal carried, then the mosrun's pid (24 bits: pids are at
// most 2^22), then the number.
constexpr uint64_t Value(int signo, pid_t mosrun, uint32_t number) {
  return (static_cast<uint64_t>(signo & 0xff) << 56) |
         ((static_cast<uint64_t>(mosrun) & 0xffffff) << 32) | number;
}

// What the init remembers: the last number it forwarded, and of which mosrun (a job
// restarted from a checkpoint has a new mosrun, which numbers from 1 again).
struct Seen {
  uint32_t mosrun = 0;
  uint32_t last = 0;

  // The signal to forward for one the init took (`sig`, queued with `code` and `value`):
  // `sig` itself, or for a numbered one the signal it carries; 0 when that number was
  // forwarded already, which is then dropped. mosrun sends one signal at a time and the
  // next only once this one is acknowledged, so numbers arrive in order.
  int Forward(int sig, int code, uint64_t value) {
    if (sig != Carrier() || code != SI_QUEUE) return sig;
    int carried = static_cast<int>(value >> 56);
    if (carried <= 0 || carried >= NSIG) return sig;
    uint32_t who = static_cast<uint32_t>((value >> 32) & 0xffffff);
    uint32_t number = static_cast<uint32_t>(value);
    if (who == mosrun && number <= last) return 0;
    mosrun = who;
    last = number;
    return carried;
  }
};

}  // namespace homeward::job_signals
