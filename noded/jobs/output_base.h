// Where a job away's output goes on in its mosrun's stream after the home's daemon
// restarted, once mosrun comes back and says how many bytes of the job's stdout and
// stderr it has (see "Daemon restarts" in docs/ARCHITECTURE.md).
#pragma once

#include <sys/types.h>

#include <cstdint>

namespace homeward {

struct SettledBase {
  bool changed = false;          // the origin moved: the journal must say so
  uint64_t lost[3] = {0, 0, 0};  // bytes of stdout and stderr (1, 2) lost with the daemon
};

// `origin`: mosrun's offsets (by fd) where the output of the node the job runs on starts,
// as journaled; `had`: what mosrun has. `pending`: the old node's last word was lost with
// the restart (the protocol's BaseSettled): what mosrun has is all there is of the old
// node's output, and the current node's starts there. Otherwise an origin past what
// mosrun has means the bytes between (the previous place's output, forwarded but still in
// the killed daemon's memory) are lost, and the current node, which keeps its output
// until mosrun has it, sends it again from mosrun's offset. A job frozen at home has no
// node to send again: fewer bytes than its origin are a mosrun that is not its own
// (Error, kInvalidInput).
SettledBase SettleOutputBase(pid_t job, bool pending, bool frozen, uint64_t origin[3],
                             const uint64_t had[3]);

}  // namespace homeward
