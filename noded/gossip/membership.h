// Membership: the cluster picture one node holds, and the gossip and failure-detection
// rules that keep it fresh. Pure logic: time comes in as milliseconds and datagrams go
// out as values, so the daemon drives it from libuv and the simulator from virtual time.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <random>
#include <set>
#include <string>
#include <tuple>
#include <unordered_map>
#include <vector>

#include "config.h"

namespace homeward {

// What a node publishes about itself.
struct NodeRecord {
  std::string name;
  std::string cluster;  // the node's [cluster] name
  std::string address;
  uint16_t gossip_port = 0;
  uint16_t peer_port = 0;
  uint16_t cores = 1;
  float speed = 1.0f;
  float load = 0.0f;
  float homeward_load = 0.0f;
  uint32_t mem_free_mb = 0;
  uint32_t mem_total_mb = 0;
  uint32_t swap_free_mb = 0;
  uint32_t swap_total_mb = 0;
  uint32_t jobs_away = 0;
  uint32_t guests_here = 0;
  uint64_t incarnation = 0;
  bool blocked = false;  // accepts no guests (mosctl block)
  uint64_t boot_time_s = 0;  // when the machine booted (epoch seconds); 0: unknown
  uint16_t users = 0;        // users logged in
  std::string group;            // [node] group: the node's sub-cluster (empty: none)
  uint32_t long_job_after_s = 0;  // [node] long_job_s: a node for short jobs (0: not)

  Endpoint gossip_endpoint() const { return {address, gossip_port}; }
};

enum class MemberState : uint8_t { kAlive = 0, kSuspect = 1, kDead = 2 };
const char* MemberStateName(MemberState state);

struct WindowEntry {
  NodeRecord record;
  uint32_t age_ms = 0;
  MemberState state = MemberState::kAlive;
};

// One gossip datagram, decoded (the wire form is in utils/schema/gossip.capnp).
struct GossipMessage {
  enum class Kind : uint8_t { kPing = 0, kAck = 1, kPingReq = 2 };
  Kind kind = Kind::kPing;
  uint64_t seq = 0;
  NodeRecord sender;
  // The first `news` entries are news (SWIM's piggybacked updates: joins, suspicions,
  // deaths, refutations, load rises); the rest are the window of the freshest records.
  std::vector<WindowEntry> entries;
  uint16_t news = 0;
  // pingReq: the node to probe; ack: the node that answered.
  std::string probe_name;
  Endpoint probe;
  // When the sender sent it: microseconds of its wall clock, strictly increasing per
  // sender (the codec's header; the receiver drops replays by it, noded/gossip/gossip_replay.h).
  uint64_t stamp = 0;
};

struct Outgoing {
  Endpoint to;
  GossipMessage message;
};

struct MembershipOptions {
  int64_t interval_ms = 1000;
  int64_t suspect_after_ms = 3000;   // a probe unanswered this long makes its target suspect
  int64_t dead_after_ms = 8000;      // ... and this long, dead
  int window = 16;                   // freshest records per datagram, besides the sender's own
  int news_per_datagram = 0;         // news items per datagram at most; 0: as many as window
  int indirect_probes = 3;           // k peers asked to probe a node that did not answer
  size_t capacity = 4096;            // this cluster's records kept at most; the stalest alive goes first
  // Records of other clusters' nodes kept at most (a partial view of the multi-cluster):
  // they are not probed here, their deaths are their own cluster's verdicts, and the
  // stalest goes first when a fresher one arrives.
  size_t foreign_capacity = 256;
  int64_t foreign_expire_after_ms = 0;  // another cluster's record unheard of this long is
                                        // forgotten; 0: 2 * dead_after_ms
  int64_t forget_dead_after_ms = 0;  // tombstones kept this long; 0: 4 * dead_after_ms
  float news_load_step = 0.5f;       // a load rise this large is spread as news
  // A partnership's ring: knock at the seeds while no live member is of this cluster
  // (empty: while no member of the node's own cluster is alive).
  std::string seek_cluster;
  static MembershipOptions FromConfig(const GossipConfig& gossip);
};

// A node as the picture shows it.
struct MemberView {
  NodeRecord record;
  MemberState state = MemberState::kAlive;
  int64_t age_ms = 0;  // age of the record's information
  bool self = false;
};

// Counters for tests, the simulator and the logs.
struct MembershipStats {
  uint64_t probes = 0;
  uint64_t indirect_probes = 0;
  uint64_t suspicions = 0;
  uint64_t deaths = 0;
  uint64_t refutations = 0;
  uint64_t evictions = 0;
  uint64_t exchanges = 0;  // datagrams to other clusters' nodes: windows, not probes
  uint64_t expiries = 0;   // other clusters' records forgotten unheard
};

class Membership {
 public:
  // `peer` became alive (true) or dead (false) in this node's picture.
  using ChangeListener = std::function<void(const NodeRecord& peer, bool alive)>;

  Membership(NodeRecord self, MembershipOptions options, uint64_t random_seed);
  Membership(const Membership&) = delete;
  Membership& operator=(const Membership&) = delete;
  Membership(Membership&&) = default;
  Membership& operator=(Membership&&) = default;

  // Replaces the measurements the local record publishes; name, address, ports and
  // incarnation stay. A load rise of news_load_step or more is spread as news, a fall is
  // not: news of a newly idle node travels only with the freshest-records window, so the
  // whole cluster does not learn of it, and flock to it, in the same few rounds.
  void UpdateSelf(const NodeRecord& measured);
  const NodeRecord& self() const { return self_; }

  // Addresses to contact while no peer is known (a newcomer needs one).
  void AddSeed(const Endpoint& seed);
  void SetChangeListener(ChangeListener listener) { listener_ = std::move(listener); }

  // One gossip round: probes the next peer of this cluster (carrying the window), sends
  // indirect probes for unanswered ones, turns overdue probes into suspicion and
  // suspicion into death, forgets old tombstones and other clusters' records unheard of
  // too long, and swaps windows with one other cluster's node. Appends what to send to
  // `out`.
  void Tick(int64_t now_ms, std::vector<Outgoing>* out);
  // Handles a datagram that arrived from `from` (its UDP source). Appends replies.
  void Receive(const GossipMessage& message, const Endpoint& from, int64_t now_ms,
               std::vector<Outgoing>* out);

  // The picture: every known node with its state, the local one included.
  std::vector<MemberView> Picture(int64_t now_ms) const;
  // A known node (nullptr when unknown).
  const MemberView* Find(const std::string& name, int64_t now_ms, MemberView* storage) const;
  size_t known() const { return members_.size(); }
  size_t known_foreign() const { return foreign_count_; }
  size_t alive() const { return alive_count_; }
  const MembershipStats& stats() const { return stats_; }

 private:
  struct Member {
    NodeRecord record;
    MemberState state = MemberState::kAlive;
    int64_t origin_ms = 0;  // when the record's information was measured (local time)
    int64_t state_since_ms = 0;
    bool kin = true;  // of this node's cluster: probed, suspected and buried here
  };
  struct Probe {
    std::string target;
    Endpoint endpoint;
    int64_t started_ms = 0;
    bool indirect_sent = false;
  };
  struct Relay {  // a ping sent on someone's behalf (pingReq)
    Endpoint requester;
    uint64_t requester_seq = 0;
    int64_t started_ms = 0;
  };

  GossipMessage Build(GossipMessage::Kind kind, uint64_t seq, const std::string& recipient,
                      int64_t now_ms);
  // `news`: the entry came as news (or from the node itself), so what it teaches is news
  // here too; a record learned from someone's freshest-records window is not.
  void Merge(const WindowEntry& entry, int64_t now_ms, bool news);
  void MergeSender(const NodeRecord& sender, int64_t now_ms);
  void SetState(Member& member, MemberState state, int64_t now_ms);
  void Refute(uint64_t at_least);
  void Index(Member& member, int64_t new_origin);
  void List(Member& member);    // into the freshness indexes (members not dead)
  void Unlist(Member& member);  // ... and out
  void Forget(const std::string& name);
  void EvictIfFull();
  void EvictOne(bool kin);
  void ExpireForeign(int64_t now_ms);
  void Exchange(int64_t now_ms, std::vector<Outgoing>* out);
  bool IsKin(const NodeRecord& record) const { return record.cluster == self_.cluster; }
  size_t KinCount() const { return members_.size() - foreign_count_; }
  void MakeNews(Member& member);
  void PassOn(const WindowEntry& entry, int64_t origin_ms);
  int NewsBudget() const;
  bool IsNews(const std::string& name) const;
  int64_t SuspicionMs() const;
  bool Sought() const;  // whether a live member is what the seeds are knocked at for
  std::string NextProbeTarget();
  uint64_t NextSeq() { return ++seq_; }

  NodeRecord self_;
  MembershipOptions options_;
  std::mt19937_64 random_;
  std::unordered_map<std::string, Member> members_;
  // Alive and suspect members by freshness, to pick the window in O(window).
  // (Members' addresses are stable: unordered_map never moves its elements.)
  std::set<std::pair<int64_t, Member*>> by_origin_;
  std::set<std::pair<int64_t, Member*>> foreign_by_origin_;  // other clusters' only
  size_t foreign_count_ = 0;  // members of other clusters, tombstones included
  std::set<std::string> not_alive_;  // suspects and tombstones, for the round's timers
  size_t alive_count_ = 0;           // members not dead
  // News about nodes not in the table, already passed on: (name, incarnation, state,
  // load) keys, the newest kMaxNews of them, so each such item is passed on once.
  std::set<std::tuple<std::string, uint64_t, int, int>> passed_;
  std::vector<std::tuple<std::string, uint64_t, int, int>> passed_order_;
  // News is a copy, so that a node passes on news about nodes its full table does not
  // hold: dissemination then does not depend on who remembers whom.
  struct News {
    WindowEntry entry;
    int64_t origin_ms = 0;
    int left = 0;  // times still to be sent
  };
  std::vector<News> news_;                // oldest first, at most kMaxNews
  std::vector<std::string> probe_order_;  // shuffled round-robin, as SWIM does
  size_t probe_next_ = 0;
  std::map<uint64_t, Probe> probes_;  // by seq
  std::map<uint64_t, Relay> relays_;  // by our seq of the relayed ping
  std::vector<Endpoint> seeds_;
  uint64_t seq_ = 0;
  int64_t last_tick_ms_ = 0;
  ChangeListener listener_;
  MembershipStats stats_;
};

}  // namespace homeward
