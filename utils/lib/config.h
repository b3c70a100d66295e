// A node's configuration, read from a TOML file. Every error names the file and field.
#pragma once

#include <netinet/in.h>

#include <chrono>
#include <cstdint>
#include <string>
#include <vector>

#include "peer_auth.h"

namespace homeward {

// An IPv4 address and port.
struct Endpoint {
  std::string host;  // dotted quad
  uint16_t port = 0;

  // Parses "A.B.C.D" or "A.B.C.D:PORT" (default_port when the port is absent).
  static Endpoint Parse(const std::string& text, uint16_t default_port);
  sockaddr_in ToSockaddr() const;
  std::string ToString() const;
  bool operator==(const Endpoint&) const = default;
};

struct GossipConfig {
  std::chrono::milliseconds interval{1000};
  std::chrono::milliseconds suspect_after{3000};  // silence before a node is suspected
  std::chrono::milliseconds dead_after{8000};     // silence before it is declared dead
  int window = 16;                                // records carried per gossip datagram
  // A datagram whose send time differs from this node's clock by more is dropped (as a
  // replay, or a sender whose clock is off): the nodes' clocks must agree this closely.
  std::chrono::milliseconds replay_window{30000};
};

// Connections to the peer port before they prove the cluster key: a stranger may open
// them, so each costs a bounded share and a bounded time (noded/peers/peer_server.h).
struct PeerConfig {
  int max_pending_per_source = 8;             // unauthenticated, from one address
  int max_pending = 64;                       // unauthenticated, in all
  std::chrono::milliseconds handshake{5000};  // the whole handshake, from accept
};

// The balancer (noded/balance/balancer.h); the policy's finer knobs keep their defaults.
struct BalanceConfig {
  bool automatic = true;                          // move jobs by load, memory and home I/O
  std::chrono::milliseconds interval{1000};       // one balancing round this often
  std::chrono::milliseconds min_residency{4000};  // a job stays at least this long where it lands
  int hysteresis_percent = 45;                    // a target must promise this much more CPU
  uint32_t usher_free_mb = 256;  // below this much free memory, jobs are moved away
};

// What a node does for its guests while their home is unreachable (a cut link, a home
// that is down): their file calls wait, as on an NFS hard mount; past home_grace the
// guest is frozen to this node's disk until the home is back.
struct RecoveryConfig {
  std::chrono::seconds home_grace{300};
  // What becomes of a guest frozen past the grace when its home is back: continued here
  // (the default), or continued and sent home at once ("home": the home's own node runs
  // it from then on, as `mosctl expel` would send it).
  bool frozen_go_home = false;
};

// How jobs move (noded/jobs/migration.h).
struct MigrationConfig {
  // Lazy moves: the job runs on the target once all but its memory is there, and pulls
  // its memory from the source (CRIU lazy-pages over userfaultfd); the source keeps it
  // until the target has every page. Off: the memory is copied while the job is frozen.
  bool lazy_pages = false;
};

// A partner cluster: a cluster this one cooperates with. The two clusters' nodes gossip
// (and, later, move jobs) with a key of the partnership's own, which both administrators
// hold; each cluster's own key stays its own.
struct PartnerConfig {
  std::string name;             // the partner's [cluster] name
  std::vector<Endpoint> seeds;  // gossip endpoints of some of its nodes
  std::string key_file;
  std::vector<uint8_t> key;  // 32 bytes, read from key_file
  // What its guests get here: lower runs first; this cluster's own jobs are 0.
  int priority = 100;
  bool send = true;    // this cluster's jobs may run on its nodes
  bool accept = true;  // its jobs may run on this cluster's nodes
};

struct NodeConfig {
  std::string config_path;  // where this was read from, for messages
  std::string name;
  std::string address;          // this node's IPv4 address; peers reach it here
  uint16_t gossip_port = 4700;  // UDP
  uint16_t peer_port = 4701;    // TCP: file service, migration, job relay
  std::string state_dir = "/var/lib/homeward";
  std::string control_socket;  // default: <state_dir>/control.sock
  std::string mosix_root = "/mosix";
  std::string export_root = "/";  // the tree this node serves to its jobs' homefs
  // [files] trust_root: serve peers' uid 0 as root rather than as nobody (root squash).
  bool files_trust_root = false;
  // [files] idle_disconnect_s: homefs closes its connection to a home unused this long.
  std::chrono::seconds files_idle_disconnect{60};
  // [files] sync_replay_log: the file service's record of non-idempotent calls is on the
  // disk before each call (outlives a power loss), not only written (outlives the daemon).
  bool files_sync_replay_log = false;
  // [files] write_behind: homefs answers a write once it is sent to the home, and a
  // close, fsync, lock or any other call waits for the writes before it (NFS's way).
  bool files_write_behind = true;
  // [files] io_uring: homefs takes the kernel's FUSE requests through io_uring, on the
  // CPU that made each, where the kernel allows it (the fuse module's enable_uring).
  bool files_io_uring = true;
  std::string cluster = "homeward";  // [cluster] name: this node's cluster
  std::string key_file;
  std::vector<uint8_t> cluster_key;  // 32 bytes, read from key_file
  std::vector<Endpoint> seeds;
  std::vector<PartnerConfig> partners;  // [[partner]]
  GossipConfig gossip;
  BalanceConfig balance;
  PeerConfig peer;
  RecoveryConfig recovery;
  MigrationConfig migration;
  std::string log_level = "info";
  std::string web_listen;  // [web] listen: "ADDRESS:PORT" of the web monitor; empty: off
  // [node] speed: this node's relative CPU speed as its administrator sets it (1.0 is
  // the reference machine); 0: measured (node_metrics.h, MeasureCpuSpeed).
  double speed = 0;
  // [node] group: this node's sub-cluster, a Unix group. Its members' jobs are the node's
  // own here (precedence 0, as its home jobs); the cluster's other guests rank
  // others_priority and leave when the node's own work wants the cores. Empty: none.
  std::string group;
  int others_priority = 50;
  // [node] long_job_s: a node for short jobs. A guest that has run this long is a long job
  // here, of long_job_priority, and leaves when other work wants the cores. 0: off.
  std::chrono::seconds long_job_after{0};
  int long_job_priority = 200;

  // Whether `name` is this node's cluster (empty is: a peer of the same cluster names none).
  bool OwnCluster(const std::string& name) const { return name.empty() || name == cluster; }
  // The partner cluster `name`, or nullptr when it is none.
  const PartnerConfig* Partner(const std::string& name) const;
  // The key a client of cluster `name` proves (empty: this cluster's), or nullptr when the
  // cluster is neither this one nor a partner: the peer server's choice of key.
  const std::vector<uint8_t>* KeyFor(const std::string& name) const;
  // How to connect to a node of cluster `name` (empty or this cluster's name: within it).
  // Throws Error(kNotFound) when the cluster is no partner.
  PeerCredentials CredentialsFor(const std::string& name) const;
};

// A node name: 1 to 63 letters, digits, `-`, `_` and `.`, not `.` or `..` (a path
// component of /mosix/home, a DNS label).
bool ValidNodeName(const std::string& name);

// Reads and validates `path`. Throws Error(kInvalidInput) with one line of the form
// "<path>: <field>: <problem>" for the first problem found.
NodeConfig LoadNodeConfig(const std::string& path);
// The same for configuration text already in memory; `path` is used in messages.
NodeConfig ParseNodeConfig(const std::string& text, const std::string& path);

// Parses a cluster key: 64 hexadecimal digits (surrounding whitespace ignored).
std::vector<uint8_t> ParseClusterKey(const std::string& text);

}  // namespace homeward
