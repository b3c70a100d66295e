// What a partner cluster's nodes may use of this node's peer services, by the
// partnership's settings (utils/lib/config.h, PartnerConfig):
//   files, jobs, loopback  what this cluster's jobs running on the partner's nodes need of
//                          their homes: only for a partner this cluster sends jobs to
//   migration, lazy-pages  moves in: the partner's jobs as guests (accept), or this
//                          cluster's own jobs coming back (send); which of the two a move
//                          is, and whether it may come, the move's own check decides
//                          (JobRegistry::AcceptMove, PartnerMayMoveIn)
// Nodes of this cluster use every service.
#pragma once

#include <string>

#include <optional>

#include "config.h"
#include "node_directory.h"
#include "peer_auth.h"

namespace homeward {

// Empty when `peer`, of a partner cluster, may use the service it asked for; otherwise why
// not, naming the setting.
std::string PartnerMayUse(const NodeConfig& config, const PeerIdentity& peer);

// A job's home: its node, and that node's cluster (empty: this one).
struct JobHome {
  std::string node;
  std::string cluster;
};

// Empty when a node of cluster `from` (empty: this one) may move a job of `home` to this
// node; otherwise why not. Between clusters, a job moves only to a cluster that accepts
// its home's jobs, or back to its own cluster, and there to its home node only: the home
// alone knows that it sent the job away, and checks that it did (KnownHome and the home's
// whereabouts of its jobs, JobRegistry::AcceptMove).
std::string PartnerMayMoveIn(const NodeConfig& config, const std::string& from,
                             const JobHome& home);

// Empty when a job of `home` running on this node may move to node `target` of
// `target_cluster` (empty: this one); otherwise why not. This cluster's jobs go to the
// partners it sends to; a partner's job moves within this cluster or back to its home.
std::string PartnerMayMoveOut(const NodeConfig& config, const std::string& target,
                              const std::string& target_cluster, const JobHome& home);

// Empty when the home that a job coming from partner cluster `from` names is a node of
// that cluster as this node's gossip knows it (`known`, the directory's entry for
// home.node); otherwise why not. A partnership's key speaks for its partner's nodes
// only: a partner cannot name one of this cluster's nodes, or a third cluster's, as its
// job's home, and so reach their files or their jobs' relays.
std::string KnownHome(const std::string& from, const JobHome& home,
                      const std::optional<KnownNode>& known);

}  // namespace homeward
