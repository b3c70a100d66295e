// What a node needs of its machine, probed: the kernel's FUSE, namespaces, seccomp,
// cgroups and userfaultfd, CRIU (its version and `criu check`), the node's configuration
// (its key file's permissions among it) and its ports. `mosctl check` prints one line per
// probe with a fix, as `criu check` does; the daemon runs the same probes at start and
// logs them once.
#pragma once

#include <string>
#include <vector>

#include "config.h"

namespace homeward {

struct CheckLine {
  // kFail: jobs cannot run or move here; kWarn: they can, with less (named in `detail`).
  enum class Verdict { kOk, kWarn, kFail };
  Verdict verdict = Verdict::kOk;
  std::string what;    // the probe: "fuse", "namespaces", "criu", ...
  std::string detail;  // what it found
  std::string fix;     // what to do about it (empty when ok)
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
};

std::vector<CheckLine> CheckNode(const CheckOptions& options);

// "ok    fuse: /dev/fuse opens" or "FAIL  criu: ... (fix: ...)".
std::string FormatCheckLine(const CheckLine& line);

}  // namespace homeward
