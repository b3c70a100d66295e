#include "partner_services.h"

#include <fmt/format.h>

namespace homeward {

std::string PartnerMayUse(const NodeConfig& config, const PeerIdentity& peer) {
  if (config.OwnCluster(peer.cluster)) return {};
  const PartnerConfig* partner = config.Partner(peer.cluster);
  if (!partner) return fmt::format("cluster '{}' is no partner", peer.cluster);
  if (peer.service == "files" || peer.service == "jobs" || peer.service == "loopback") {
    if (partner->send) return {};
    return fmt::format("cluster '{}' sends no jobs to cluster '{}' (send = false)",
                       config.cluster, partner->name);
  }
  if (peer.service == "migration" || peer.service == "lazy-pages") {
    if (partner->accept || partner->send) return {};
    return fmt::format("cluster '{}' neither sends jobs to cluster '{}' nor accepts its jobs",
                       config.cluster, partner->name);
  }
  return fmt::format("service '{}' is for this cluster's own nodes", peer.service);
}

std::string PartnerMayMoveIn(const NodeConfig& config, const std::string& from,
                             const JobHome& home) {
  if (config.OwnCluster(home.cluster)) {
    if (config.OwnCluster(from)) return {};
    // This cluster's job, coming back from a partner it was sent to.
    const PartnerConfig* partner = config.Partner(from);
    if (!partner) return fmt::format("cluster '{}' is no partner", from);
    if (!partner->send) {
      return fmt::format("cluster '{}' sends no jobs to cluster '{}' (send = false), so none "
                         "comes back from there",
                         config.cluster, from);
    }
    if (home.node != config.name) {
      return fmt::format("a job of cluster '{}' comes back from cluster '{}' to its home {} "
                         "only",
                         config.cluster, from, home.node);
    }
    return {};
  }
  const PartnerConfig* partner = config.Partner(home.cluster);
  if (!partner) {
    return fmt::format("the job's home cluster '{}' is no partner of cluster '{}'", home.cluster,
                       config.cluster);
  }
  if (!partner->accept) {
    return fmt::format("cluster '{}' accepts no jobs of cluster '{}' (accept = false)",
                       config.cluster, home.cluster);
  }
  // A partner's job comes from its own cluster, or moves on within this one.
  if (!config.OwnCluster(from) && from != home.cluster) {
    return fmt::format("a job of cluster '{}' comes from its own cluster, not from '{}'",
                       home.cluster, from);
  }
  return {};
}

std::string PartnerMayMoveOut(const NodeConfig& config, const std::string& target,
                              const std::string& target_cluster, const JobHome& home) {
  if (config.OwnCluster(target_cluster)) return {};
  const PartnerConfig* partner = config.Partner(target_cluster);
  if (!partner) return fmt::format("cluster '{}' is no partner", target_cluster);
  if (config.OwnCluster(home.cluster)) {
    if (partner->send) return {};
    return fmt::format("cluster '{}' sends no jobs to cluster '{}' (send = false)",
                       config.cluster, target_cluster);
  }
  if (home.cluster == target_cluster) {
    if (target == home.node) return {};
    return fmt::format("a job of cluster '{}' goes back to its own cluster at its home {} only, "
                       "not at {}",
                       home.cluster, home.node, target);
  }
  return fmt::format("a job of cluster '{}' moves within cluster '{}' or back to its home, not "
                     "to cluster '{}'",
                     home.cluster, config.cluster, target_cluster);
}

std::string KnownHome(const std::string& from, const JobHome& home,
                      const std::optional<KnownNode>& known) {
  if (!known) {
    return fmt::format("its home {} is no node that this node's gossip knows in cluster '{}'",
                       home.node, from);
  }
  if (known->cluster != from || home.cluster != from) {
    return fmt::format("its home {} is a node of {}, and cluster '{}' speaks for its own nodes "
                       "only",
                       home.node,
                       known->cluster.empty() ? std::string("this cluster")
                                              : fmt::format("cluster '{}'", known->cluster),
                       from);
  }
  return {};
}

}  // namespace homeward
