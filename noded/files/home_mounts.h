// HomeMounts: /mosix/home/<node> for every node. The node's own entry is a bind mount of
// its export root (no FUSE in the way); every peer's entry is a homefs mount served by a
// `mosmount -f` child this component owns. The daemon calls PeerUp whenever gossip reports
// a peer alive (never PeerDown on a death: the mount outlives it), and either by hand for
// `mosctl home-mount` / `home-unmount`. Everything runs on the event loop and nothing in
// it waits: a homefs on its way out is watched through a pidfd and a timer.
#pragma once

#include <uv.h>

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>

#include "child_process.h"
#include "mount.h"

namespace homeward {

struct HomeMountsOptions {
  std::string mosix_root = "/mosix";
  std::string self;  // this node's name
  std::string export_root = "/";
  std::string mosmount = "mosmount";  // looked up on PATH unless absolute
  int timeout_s = 10;                 // passed to homefs: connect and probe timing
  int stop_grace_ms = 1000;           // how long a homefs may take to unmount itself
  std::string config_path;            // the node's configuration (the cluster key)
  int grace_s = 300;                  // passed to homefs: how long a silent home is waited for
};

class HomeMounts {
 public:
  HomeMounts(uv_loop_t* loop, HomeMountsOptions options);
  HomeMounts(const HomeMounts&) = delete;
  HomeMounts& operator=(const HomeMounts&) = delete;
  // Ends what Stop left on its way out at once (kill, reap, detach): the loop is over.
  ~HomeMounts();

  // Makes /mosix/home/<self> the export root. Throws Error naming the path on failure.
  void Start();
  // Mounts /mosix/home/<name> from the peer's file service. A running mount of the same
  // peer at the same address is kept; one at another address is taken down first, and
  // the new one starts when the old one is gone. Throws Error for a bad node name.
  void PeerUp(const std::string& name, const std::string& address, uint16_t peer_port);
  // Takes /mosix/home/<name> down and returns at once: its homefs gets SIGTERM (it then
  // unmounts itself); when it has exited, or is killed after `stop_grace_ms`, it is
  // reaped, the mount point is detached (for a homefs that could not unmount) and `done`
  // runs on the loop. `done` runs at once when nothing is mounted there.
  using Done = std::function<void()>;
  void PeerDown(std::string name, Done done = {});  // a copy: it may name a key it erases
  // Takes every peer's mount down (as PeerDown) and unmounts this node's own entry. Later
  // PeerUp calls are ignored.
  void Stop();

 private:
  struct PeerMount {
    std::string address;
    ChildProcess homefs;
  };
  struct Departure;
  void StartMount(const std::string& name, const std::string& target);
  // Ends the departure of `name`: reaps (or kills) its homefs, detaches the mount point,
  // runs its callbacks and starts the mount waiting for it, if any.
  void Finish(std::string name);
  std::string PathOf(const std::string& name) const;

  uv_loop_t* loop_;
  HomeMountsOptions options_;
  Mount self_;
  std::map<std::string, PeerMount> peers_;
  std::map<std::string, std::unique_ptr<Departure>> departing_;
  std::map<std::string, std::string> waiting_;  // name -> address:port, once its departure ends
  bool stopped_ = false;
};

}  // namespace homeward
