// HomeMounts: /mosix/home. Every node's files are one homefs mount there (`mosmount
// --tree`, a child this component owns), which lists the live nodes this component sends
// it (a socket pair) and reaches a home only when something of this node first uses it.
// This node's own entry is a bind mount of its export root, which homefs makes on its
// entry (no FUSE in the way of local jobs). A homefs that never mounts (no FUSE here)
// leaves /mosix/home/<self> as the bind alone; one that dies after mounting is detached
// and started again; an earlier daemon's, still mounted, is detached at start (it goes on
// serving the files open there). Everything runs on the event loop and nothing in it
// waits.
#pragma once

#include <uv.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "child_process.h"
#include "fd.h"
#include "live_nodes.h"
#include "mount.h"
#include "uv_handle.h"

namespace homeward {

struct HomeMountsOptions {
  std::string mosix_root = "/mosix";
  std::string self;  // this node's name
  std::string export_root = "/";
  std::string mosmount = "mosmount";  // looked up on PATH unless absolute
  int timeout_s = 10;                 // passed to homefs: connect and probe timing
  int stop_grace_ms = 1000;           // how long homefs may take to unmount itself
  int restart_ms = 1000;              // how long after a homefs died the next one starts
  std::string config_path;            // the node's configuration (the cluster key)
  int grace_s = 300;                  // passed to homefs: how long a silent home is waited for
  int idle_s = 60;                    // passed to homefs: a home's connection closes unused
  bool write_behind = true;           // passed to homefs: writes return once sent
  bool io_uring = true;               // passed to homefs: FUSE requests over io_uring
};

class HomeMounts {
 public:
  HomeMounts(uv_loop_t* loop, HomeMountsOptions options);
  HomeMounts(const HomeMounts&) = delete;
  HomeMounts& operator=(const HomeMounts&) = delete;
  // Ends what Stop left on its way out at once (kill, reap, detach): the loop is over.
  ~HomeMounts();

  // Starts homefs at /mosix/home. Throws Error naming the path when it cannot be made.
  void Start();
  // `name` is live at `address`: listed in /mosix/home (a home in use at another address
  // is reached there from now on); `cluster` names a partner cluster's node, whose files
  // homefs reaches with the partnership's key. Throws Error for a bad node name.
  void PeerUp(const std::string& name, const std::string& address, uint16_t peer_port,
              const std::string& cluster = {});
  // `name` is dead, or unmounted by hand (mosctl home-unmount): out of the listing. The
  // guests of a home in use keep its files (their calls wait, a hard mount). `done` runs
  // once homefs has been told.
  using Done = std::function<void()>;
  void PeerDown(const std::string& name, Done done = {});
  // Takes /mosix/home down: homefs gets SIGTERM (it then unmounts itself), is killed
  // after `stop_grace_ms`, and the mount point is detached. Later calls change nothing.
  void Stop();

 private:
  void Spawn();
  // Tells homefs the live nodes (again, when its socket was full).
  void Send();
  // homefs said it has mounted the tree.
  void OnMessage();
  // homefs has exited (or is killed, `kill`): reaps it and detaches what it left.
  void Ended(bool kill);
  std::string HomeDir() const { return options_.mosix_root + "/home"; }

  uv_loop_t* loop_;
  HomeMountsOptions options_;
  LiveNodes live_;
  ChildProcess homefs_ = ChildProcess::Adopt(-1);  // none until Spawn
  Fd socket_;  // the daemon's end of the socket pair
  Fd pidfd_;
  UvHandle<uv_poll_t> messages_;
  UvHandle<uv_poll_t> exited_;
  UvHandle<uv_timer_t> timer_;  // resend, stop grace, restart
  bool mounted_ = false;   // homefs said so
  bool stopped_ = false;
  Mount self_;             // when homefs could not mount: this node's entry alone
};

}  // namespace homeward
