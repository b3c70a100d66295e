// Gossip: the daemon's UDP side of membership. Binds config.address:gossip_port, runs a
// round every gossip interval (measure, probe, send the window), decodes and
// authenticates what arrives (dropping replays), and tells subscribers when a peer
// becomes alive or dead.
#pragma once

#include <uv.h>

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

#include "config.h"
#include "gossip_codec.h"
#include "gossip_replay.h"
#include "membership.h"
#include "node_metrics.h"
#include "uv_handle.h"

namespace homeward {

class Gossip {
 public:
  using ChangeCallback = std::function<void(const NodeRecord& peer, bool alive)>;

  Gossip(uv_loop_t* loop, const NodeConfig& config);
  Gossip(const Gossip&) = delete;
  Gossip& operator=(const Gossip&) = delete;
  ~Gossip();

  // Binds the socket and starts the rounds. Throws Error when the port cannot be bound.
  void Start();
  void Stop();

  // The cluster as this node sees it, itself included.
  std::vector<MemberView> Picture() const;
  // Called on the loop thread whenever a peer becomes alive (joins, rejoins) or dead
  // (declared dead, or forgotten); the homefs mounts subscribe.
  void Subscribe(ChangeCallback callback) { subscribers_.push_back(std::move(callback)); }
  // What the local record publishes about Homeward's own jobs, and whether this node
  // accepts guests.
  void SetLocalJobs(uint32_t jobs_away, uint32_t guests_here, float homeward_load, bool blocked);

  const DropCounters& drops() const { return drops_; }
  const NodeMetrics& metrics() const { return metrics_; }
  const MembershipStats& stats() const { return membership_.stats(); }

 private:
  int64_t NowMs() const;
  void Round();
  void OnDatagram(ssize_t nread, const uv_buf_t* buf, const sockaddr* addr);
  void SendAll();
  void Send(Outgoing& outgoing);  // stamps the message, then sends it
  void LogDrops();
  NodeRecord Measured() const;

  uv_loop_t* loop_;
  NodeConfig config_;
  GossipCodec codec_;
  StampClock stamps_;
  ReplayGuard replay_;
  NodeMetrics metrics_;
  Membership membership_;
  UvHandle<uv_udp_t> socket_;
  UvHandle<uv_timer_t> timer_;
  std::chrono::steady_clock::time_point epoch_;
  int64_t last_round_ms_ = 0;
  uint32_t jobs_away_ = 0;
  uint32_t guests_here_ = 0;
  float homeward_load_ = 0;
  bool blocked_ = false;
  std::vector<Outgoing> outbox_;
  std::vector<ChangeCallback> subscribers_;
  DropCounters drops_;
  uint64_t drops_logged_ = 0;
  int64_t drops_logged_at_ms_ = -1'000'000;
  uint64_t send_failures_ = 0;
  std::unique_ptr<char[]> receive_buffer_;
  bool started_ = false;
};

}  // namespace homeward
