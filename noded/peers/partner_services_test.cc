#include "partner_services.h"

#include <gtest/gtest.h>

namespace homeward {
namespace {

NodeConfig TwoPartners() {
  NodeConfig config;
  config.cluster = "a";
  config.cluster_key.assign(32, 1);
  PartnerConfig both;  // b: jobs go both ways
  both.name = "b";
  both.key.assign(32, 2);
  PartnerConfig sender;  // c: takes a's jobs, sends none here
  sender.name = "c";
  sender.key.assign(32, 3);
  sender.accept = false;
  PartnerConfig guests_only;  // d: its jobs run here, a sends none there
  guests_only.name = "d";
  guests_only.key.assign(32, 4);
  guests_only.send = false;
  config.partners = {both, sender, guests_only};
  return config;
}

std::string Use(const NodeConfig& config, const std::string& cluster, const std::string& service) {
  return PartnerMayUse(config, PeerIdentity{"10.0.0.9:4000", service, cluster});
}

TEST(PartnerServices, OwnNodesUseEverything) {
  auto config = TwoPartners();
  for (const char* service : {"files", "jobs", "loopback", "migration", "lazy-pages", "other"}) {
    EXPECT_EQ(Use(config, "", service), "") << service;
    EXPECT_EQ(Use(config, "a", service), "") << service;
  }
}

TEST(PartnerServices, HomeServicesOnlyForClustersWeSendTo) {
  auto config = TwoPartners();
  for (const char* service : {"files", "jobs", "loopback"}) {
    EXPECT_EQ(Use(config, "b", service), "") << service;
    EXPECT_EQ(Use(config, "c", service), "") << service;
    EXPECT_EQ(Use(config, "d", service), "cluster 'a' sends no jobs to cluster 'd' (send = false)")
        << service;
  }
}

TEST(PartnerServices, MovesFromPartnersThatSendOrAreSentTo) {
  auto config = TwoPartners();
  for (const char* cluster : {"b", "c", "d"}) {
    EXPECT_EQ(Use(config, cluster, "migration"), "") << cluster;
    EXPECT_EQ(Use(config, cluster, "lazy-pages"), "") << cluster;
  }
  config.partners[2].accept = false;  // d: neither way now
  EXPECT_EQ(Use(config, "d", "migration"),
            "cluster 'a' neither sends jobs to cluster 'd' nor accepts its jobs");
}

TEST(PartnerServices, UnknownClustersAndServicesAreRefused) {
  auto config = TwoPartners();
  EXPECT_EQ(Use(config, "z", "files"), "cluster 'z' is no partner");
  EXPECT_EQ(Use(config, "b", "control"), "service 'control' is for this cluster's own nodes");
}

TEST(PartnerServices, PartnersJobsMoveInWhereAccepted) {
  auto config = TwoPartners();
  EXPECT_EQ(PartnerMayMoveIn(config, "b", "b"), "");
  EXPECT_EQ(PartnerMayMoveIn(config, "", "b"), "");  // moving on within this cluster
  EXPECT_EQ(PartnerMayMoveIn(config, "d", "d"), "");
  EXPECT_EQ(PartnerMayMoveIn(config, "c", "c"), "cluster 'a' accepts no jobs of cluster 'c' "
                                                "(accept = false)");
  // b cannot pass on d's jobs, nor a stranger's.
  EXPECT_EQ(PartnerMayMoveIn(config, "b", "d"),
            "a job of cluster 'd' comes from its own cluster, not from 'b'");
  EXPECT_EQ(PartnerMayMoveIn(config, "b", "z"), "the job's home cluster 'z' is no partner of "
                                                "cluster 'a'");
}

TEST(PartnerServices, OwnJobsComeBackFromAnyPartner) {
  auto config = TwoPartners();
  EXPECT_EQ(PartnerMayMoveIn(config, "", ""), "");
  EXPECT_EQ(PartnerMayMoveIn(config, "a", "a"), "");
  for (const char* cluster : {"b", "c", "d"}) {
    EXPECT_EQ(PartnerMayMoveIn(config, cluster, "a"), "") << cluster;
  }
  EXPECT_EQ(PartnerMayMoveIn(config, "z", ""), "cluster 'z' is no partner");
}

TEST(PartnerServices, JobsMoveOutToPartnersWeSendTo) {
  auto config = TwoPartners();
  EXPECT_EQ(PartnerMayMoveOut(config, "", ""), "");
  EXPECT_EQ(PartnerMayMoveOut(config, "a", ""), "");
  EXPECT_EQ(PartnerMayMoveOut(config, "b", ""), "");
  EXPECT_EQ(PartnerMayMoveOut(config, "c", ""), "");
  EXPECT_EQ(PartnerMayMoveOut(config, "d", ""),
            "cluster 'a' sends no jobs to cluster 'd' (send = false)");
  EXPECT_EQ(PartnerMayMoveOut(config, "z", ""), "cluster 'z' is no partner");
}

TEST(PartnerServices, GuestsMoveWithinOrBackHome) {
  auto config = TwoPartners();
  EXPECT_EQ(PartnerMayMoveOut(config, "", "b"), "");   // within this cluster
  EXPECT_EQ(PartnerMayMoveOut(config, "b", "b"), "");  // back to its own
  EXPECT_EQ(PartnerMayMoveOut(config, "d", "d"), "");  // even where this cluster sends none
  EXPECT_EQ(PartnerMayMoveOut(config, "c", "b"),
            "a job of cluster 'b' moves within cluster 'a' or back to its own, not to "
            "cluster 'c'");
}

}  // namespace
}  // namespace homeward
