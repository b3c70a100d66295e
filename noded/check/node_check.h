// What a node needs of its machine, probed: the kernel's FUSE, namespaces, seccomp,
// cgroups and userfaultfd, CRIU (its version and `criu check`), the node's configuration
// (its key file's permissions among it) and its ports. `mosctl check` prints one line per
// probe with a fix, as `criu check` does; the daemon runs the same probes at start and
// logs them once.
#pragma once

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "config.h"
#include "gossip_replay.h"

namespace homeward {

struct CheckLine {
  // kFail: jobs cannot run or move here; kWarn: they can, with less (named in `detail`).
  enum class Verdict { kOk, kWarn, kFail };
  Verdict verdict = Verdict::kOk;
  std::string what;    // the probe: "fuse", "namespaces", "criu", ...
  std::string detail;  // what it found
  std::string fix;     // what to do about it (empty when ok)
};

// How far a peer's clock is from this node's, as this node's gossip measured it.
struct PeerClock {
  std::string node;  // "node2", or "cluster/node" for a partner's
  int64_t offset_ms = 0;
};

struct CheckOptions {
  // The node's configuration, when it loaded; otherwise why not (config_error).
  const NodeConfig* config = nullptr;
  std::string config_path;
  std::string config_error;
  // Probe the gossip and peer ports: free, or this node's daemon's (its pid, 0 when it
  // does not run). The daemon, which holds them, leaves this out at its own start.
  bool ports = true;
  int daemon_pid = 0;
  std::string criu_path;  // empty: the criu Homeward was built with
  // The live peers' clocks as the daemon measured them; nullopt when no daemon answered.
  std::optional<std::vector<PeerClock>> peer_clocks;
};

std::vector<CheckLine> CheckNode(const CheckOptions& options);

// Whether this node's clock agrees with its peers': ok within kClockWarnMs
// (gossip_replay.h); warn beyond
// (a job that moves sees its wall clock jump); FAIL beyond half the gossip replay window
// (the peers' datagrams are dropped as stale, and the nodes see each other dead).
CheckLine CheckClocks(const std::vector<PeerClock>& clocks, std::chrono::milliseconds replay_window);

// "ok    fuse: /dev/fuse opens" or "FAIL  criu: ... (fix: ...)".
std::string FormatCheckLine(const CheckLine& line);

}  // namespace homeward
