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
                             const std::string& home_cluster) {
  if (config.OwnCluster(home_cluster)) {
    // This cluster's job, coming back from a partner it was sent to.
    if (config.OwnCluster(from)) return {};
    const PartnerConfig* partner = config.Partner(from);
    if (partner) return {};
    return fmt::format("cluster '{}' is no partner", from);
  }
  const PartnerConfig* home = config.Partner(home_cluster);
  if (!home) {
    return fmt::format("the job's home cluster '{}' is no partner of cluster '{}'", home_cluster,
                       config.cluster);
  }
  if (!home->accept) {
    return fmt::format("cluster '{}' accepts no jobs of cluster '{}' (accept = false)",
                       config.cluster, home_cluster);
  }
  // A partner's job comes from its own cluster, or moves on within this one.
  if (!config.OwnCluster(from) && from != home_cluster) {
    return fmt::format("a job of cluster '{}' comes from its own cluster, not from '{}'",
                       home_cluster, from);
  }
  return {};
}

std::string PartnerMayMoveOut(const NodeConfig& config, const std::string& target_cluster,
                              const std::string& home_cluster) {
  if (config.OwnCluster(target_cluster)) return {};
  const PartnerConfig* partner = config.Partner(target_cluster);
  if (!partner) return fmt::format("cluster '{}' is no partner", target_cluster);
  if (config.OwnCluster(home_cluster)) {
    if (partner->send) return {};
    return fmt::format("cluster '{}' sends no jobs to cluster '{}' (send = false)",
                       config.cluster, target_cluster);
  }
  if (home_cluster == target_cluster) return {};
  return fmt::format("a job of cluster '{}' moves within cluster '{}' or back to its own, not "
                     "to cluster '{}'",
                     home_cluster, config.cluster, target_cluster);
}

}  // namespace homeward
