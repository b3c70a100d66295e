// Daemon: the node daemon's context. main() builds it from the configuration; it owns
// the event loop's handles and every service of the node, and answers the control socket.
#pragma once

#include <uv.h>

#include <chrono>
#include <memory>
#include <string>

#include "balancer.h"
#include "config.h"
#include "control_server.h"
#include "file_server.h"
#include "gossip.h"
#include "home_mounts.h"
#include "job_registry.h"
#include "loopback_service.h"
#include "peer_server.h"
#include "uv_handle.h"
#include "web_monitor.h"

namespace homeward {

class Daemon {
 public:
  Daemon(uv_loop_t* loop, NodeConfig config, FaultPoints faults);
  Daemon(const Daemon&) = delete;
  Daemon& operator=(const Daemon&) = delete;
  ~Daemon();

  // Opens the sockets and starts the services. Throws Error when one cannot start.
  void Start();
  // Stops every service and closes every handle, so that the loop ends.
  void Stop();

  const NodeConfig& config() const { return config_; }
  // How the daemon started (its executable and arguments): mosctl reload runs it again,
  // in place.
  void SetRestartCommand(std::vector<std::string> argv) { restart_argv_ = std::move(argv); }
  // /mosix/home: gossip calls PeerUp on it as peers come alive.
  HomeMounts& home_mounts() { return home_mounts_; }
  Gossip& gossip() { return gossip_; }

 private:
  // What the peer port serves: files, job relays and incoming moves.
  void ServePeers();
  void CatchSignals();
  void ServeHomeLocks();
  void FollowPeers();
  // Every kOrphanReapInterval, waits for the exited children no one else owns.
  void ReapOrphans();
  static constexpr std::chrono::milliseconds kOrphanReapInterval{5000};
  static constexpr std::chrono::seconds kRestartWaitsForOutput{10};
  // Logs once what this node needs of its machine (check/node_check.h).
  void LogChecks();
  void HandleControl(schema::ControlRequest::Reader request, ReplySender reply);
  void ReplyStatus(ReplySender reply);
  // mosctl reload: reads the configuration file again; unless it is refused, the daemon
  // restarts in place under it once the reply has gone (RestartInPlace).
  void Reload(ReplySender reply);
  [[noreturn]] void RestartInPlace();
  PeerAddress ResolvePeer(const std::string& node) const;
  void ReplyNodes(ReplySender reply);
  // What mosmon lists (ReplyNodes), into `list`: for the control socket and the web.
  void DescribeNodes(schema::NodeList::Builder list) const;
  // /metrics: this node's figures in Prometheus's text format (web/node_metrics_text.h).
  std::string MetricsText() const;

  uv_loop_t* loop_;
  NodeConfig config_;
  std::chrono::steady_clock::time_point started_;
  // Fault point loop-callback-throws: a completion on the loop throws once after start-up.
  bool callback_throws_;
  bool clock_ahead_;  // the clock-ahead fault point: gossip stamped ahead
  NodeDirectory nodes_;  // gossip's nodes, for the threads of incoming moves
  ControlServer control_;
  JobRegistry jobs_;
  FileServer file_server_;
  LoopbackService loopback_;  // guests' loopback connections to this home
  PeerServer peer_server_;
  HomeMounts home_mounts_;
  Gossip gossip_;
  Balancer balancer_;
  std::unique_ptr<WebMonitor> web_;  // when [web] listen is set
  UvHandle<uv_signal_t> sigterm_;
  UvHandle<uv_signal_t> sigint_;
  std::vector<std::string> restart_argv_;
  bool reloading_ = false;  // a mosctl reload is under way (its moves, then the restart)
  std::string restart_cluster_;  // mosctl reload: the cluster the restart runs in
  UvHandle<uv_timer_t> restart_;
  // Until then, a restart waits for jobs that came home to have their old node's output.
  std::chrono::steady_clock::time_point restart_by_;
  UvHandle<uv_timer_t> orphans_;  // reaps the orphans we inherit as a child subreaper
  UvHandle<uv_check_t> job_inits_;  // publishes the jobs at home's inits to file_server_
  bool stopped_ = false;
};

}  // namespace homeward
