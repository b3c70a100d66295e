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

#include "config.h"
#include "peer_auth.h"

namespace homeward {

// Empty when `peer`, of a partner cluster, may use the service it asked for; otherwise why
// not, naming the setting.
std::string PartnerMayUse(const NodeConfig& config, const PeerIdentity& peer);

// Empty when a node of cluster `from` (empty: this one) may move a job of `home_cluster`
// (empty: this one) to this node; otherwise why not. Between clusters, a job moves only to
// a cluster that accepts its home's jobs, or back to its own.
std::string PartnerMayMoveIn(const NodeConfig& config, const std::string& from,
                             const std::string& home_cluster);

// Empty when a job of `home_cluster` (empty: this one) running on this node may move to a
// node of `target_cluster` (empty: this one); otherwise why not. This cluster's jobs go to
// the partners it sends to; a partner's job moves within this cluster or back to its own.
std::string PartnerMayMoveOut(const NodeConfig& config, const std::string& target_cluster,
                              const std::string& home_cluster);

}  // namespace homeward
