// HomeMounts: /mosix/home/<node> for every node. The node's own entry is a bind mount of
// its export root (no FUSE in the way); every live peer's entry is a homefs mount served
// by a `mosmount -f` child this component owns, started by PeerUp and stopped (killed and
// unmounted) by PeerDown or on shutdown. Membership (gossip) calls PeerUp/PeerDown.
#pragma once

#include <cstdint>
#include <map>
#include <string>

#include "child_process.h"
#include "mount.h"

namespace homeward {

struct HomeMountsOptions {
  std::string mosix_root = "/mosix";
  std::string self;  // this node's name
  std::string export_root = "/";
  std::string mosmount = "mosmount";  // looked up on PATH unless absolute
  int timeout_s = 10;                 // passed to homefs: how long a call may wait
  std::string config_path;            // the node's configuration (the cluster key)
};

class HomeMounts {
 public:
  explicit HomeMounts(HomeMountsOptions options);
  HomeMounts(const HomeMounts&) = delete;
  HomeMounts& operator=(const HomeMounts&) = delete;
  ~HomeMounts();

  // Makes /mosix/home/<self> the export root. Throws Error naming the path on failure.
  void Start();
  // Mounts /mosix/home/<name> from the peer's file service (a running mount of the same
  // peer at the same address is kept).
  void PeerUp(const std::string& name, const std::string& address, uint16_t peer_port);
  // Unmounts /mosix/home/<name> and stops its homefs.
  void PeerDown(const std::string& name);
  // Unmounts everything.
  void Stop();

 private:
  struct PeerMount {
    std::string address;
    ChildProcess homefs;
  };
  std::string PathOf(const std::string& name) const;

  HomeMountsOptions options_;
  Mount self_;
  std::map<std::string, PeerMount> peers_;
};

}  // namespace homeward
