// Gossip: the daemon's UDP side of membership. Binds config.address:gossip_port, runs a
// round every gossip interval (measure, probe, send the window), decodes and
// authenticates what arrives (dropping replays), and tells subscribers when a peer
// becomes alive or dead.
#pragma once

#include <uv.h>

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
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

  // This node's cluster as this node sees it, itself included: where jobs start and are
  // balanced.
  std::vector<MemberView> Picture() const;
  // The nodes of the partner clusters, as their partnerships' gossip shows them.
  std::vector<MemberView> PartnerPicture() const;
  // Called on the loop thread whenever a peer becomes alive (joins, rejoins) or dead
  // (declared dead, or forgotten): a node of this cluster, or of a partner (its record's
  // cluster names it); the homefs mounts subscribe.
  void Subscribe(ChangeCallback callback) { subscribers_.push_back(std::move(callback)); }
  // What the local record publishes about Homeward's own jobs, and whether this node
  // accepts guests.
  void SetLocalJobs(uint32_t jobs_away, uint32_t guests_here, float homeward_load, bool blocked);

  // How far a node's clock is ahead of this node's (behind when negative), in ms: the
  // stamp of its last authentic datagram minus the time it arrived, so the transit is
  // included; nullopt when nothing was heard from it. By the node's cluster (this
  // cluster's own name for its own nodes) and name.
  std::optional<int64_t> ClockOffsetMs(const std::string& cluster, const std::string& name) const;
  // Stamps this node's datagrams `skew` ahead of its clock (the clock-ahead fault point).
  void SkewStamps(std::chrono::milliseconds skew) { stamp_skew_us_ = skew.count() * 1000; }

  const DropCounters& drops() const { return drops_; }
  const NodeMetrics& metrics() const { return metrics_; }
  const MembershipStats& stats() const { return rings_.front()->membership.stats(); }

 private:
  // One gossip ring: this cluster's own (the first, with the cluster key), or a
  // partnership's, whose members are both clusters' nodes and whose datagrams carry the
  // partnership's key. Each ring detects its own deaths.
  struct Ring {
    Ring(const std::string& partner, const std::vector<uint8_t>& key, const NodeConfig& config,
         const NodeRecord& self);
    std::string partner;  // empty for this cluster's own ring
    bool takes_guests;    // this cluster accepts the ring's partner's jobs (or it is our own)
    GossipCodec codec;
    ReplayGuard replay;
    Membership membership;
    std::vector<Outgoing> outbox;
  };

  int64_t NowMs() const;
  void Round();
  void OnDatagram(ssize_t nread, const uv_buf_t* buf, const sockaddr* addr);
  void SendAll(Ring& ring);
  void Send(Ring& ring, Outgoing& outgoing);  // stamps the message, then sends it
  void LogDrops();
  NodeRecord Measured() const;
  void UpdateSelf(Ring& ring, NodeRecord measured);
  // Whether a node of this cluster is named `name` (a partner's node may not be).
  bool IsOwnName(const std::string& name) const;

  uv_loop_t* loop_;
  NodeConfig config_;
  StampClock stamps_;
  int64_t stamp_skew_us_ = 0;
  std::map<std::pair<std::string, std::string>, int64_t> clock_offsets_ms_;
  NodeMetrics metrics_;
  std::vector<std::unique_ptr<Ring>> rings_;
  UvHandle<uv_udp_t> socket_;
  UvHandle<uv_timer_t> timer_;
  std::chrono::steady_clock::time_point epoch_;
  int64_t last_round_ms_ = 0;
  uint32_t jobs_away_ = 0;
  uint32_t guests_here_ = 0;
  float homeward_load_ = 0;
  bool blocked_ = false;
  std::vector<ChangeCallback> subscribers_;
  DropCounters drops_;
  uint64_t drops_logged_ = 0;
  int64_t drops_logged_at_ms_ = -1'000'000;
  uint64_t send_failures_ = 0;
  std::unique_ptr<char[]> receive_buffer_;
  bool started_ = false;
};

}  // namespace homeward
