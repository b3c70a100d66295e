#include "partner_services.h"

#include <fmt/format.h>
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
  EXPECT_EQ(PartnerMayMoveIn(config, "b", {"b1", "b"}), "");
  EXPECT_EQ(PartnerMayMoveIn(config, "", {"b1", "b"}), "");  // moving on within this cluster
  EXPECT_EQ(PartnerMayMoveIn(config, "d", {"d1", "d"}), "");
  EXPECT_EQ(PartnerMayMoveIn(config, "c", {"c1", "c"}),
            "cluster 'a' accepts no jobs of cluster 'c' (accept = false)");
  // b cannot pass on d's jobs, nor a stranger's.
  EXPECT_EQ(PartnerMayMoveIn(config, "b", {"d1", "d"}),
            "a job of cluster 'd' comes from its own cluster, not from 'b'");
  EXPECT_EQ(PartnerMayMoveIn(config, "b", {"z1", "z"}),
            "the job's home cluster 'z' is no partner of cluster 'a'");
}

TEST(PartnerServices, OwnJobsComeBackToTheirHomeFromPartnersTheyWentTo) {
  auto config = TwoPartners();
  config.name = "a1";
  EXPECT_EQ(PartnerMayMoveIn(config, "", {"a2", ""}), "");
  EXPECT_EQ(PartnerMayMoveIn(config, "a", {"a2", "a"}), "");
  for (const char* cluster : {"b", "c"}) {
    EXPECT_EQ(PartnerMayMoveIn(config, cluster, {"a1", ""}), "") << cluster;
    EXPECT_EQ(PartnerMayMoveIn(config, cluster, {"a2", ""}),
              fmt::format("a job of cluster 'a' comes back from cluster '{}' to its home a2 only",
                          cluster));
  }
  EXPECT_EQ(PartnerMayMoveIn(config, "d", {"a1", ""}),
            "cluster 'a' sends no jobs to cluster 'd' (send = false), so none comes back from "
            "there");
  EXPECT_EQ(PartnerMayMoveIn(config, "z", {"a1", ""}), "cluster 'z' is no partner");
}

TEST(PartnerServices, JobsMoveOutToPartnersWeSendTo) {
  auto config = TwoPartners();
  JobHome own{"a1", ""};
  EXPECT_EQ(PartnerMayMoveOut(config, "a2", "", own), "");
  EXPECT_EQ(PartnerMayMoveOut(config, "a2", "a", own), "");
  EXPECT_EQ(PartnerMayMoveOut(config, "b1", "b", own), "");
  EXPECT_EQ(PartnerMayMoveOut(config, "c1", "c", own), "");
  EXPECT_EQ(PartnerMayMoveOut(config, "d1", "d", own),
            "cluster 'a' sends no jobs to cluster 'd' (send = false)");
  EXPECT_EQ(PartnerMayMoveOut(config, "z1", "z", own), "cluster 'z' is no partner");
}

TEST(PartnerServices, PartnersJobsMoveWithinThisClusterOrToTheirHome) {
  auto config = TwoPartners();
  JobHome guest{"b1", "b"};
  EXPECT_EQ(PartnerMayMoveOut(config, "a2", "", guest), "");
  EXPECT_EQ(PartnerMayMoveOut(config, "b1", "b", guest), "");
  EXPECT_EQ(PartnerMayMoveOut(config, "b2", "b", guest),
            "a job of cluster 'b' goes back to its own cluster at its home b1 only, not at b2");
  EXPECT_EQ(PartnerMayMoveOut(config, "c1", "c", guest),
            "a job of cluster 'b' moves within cluster 'a' or back to its home, not to cluster "
            "'c'");
}

TEST(PartnerServices, APartnersJobNamesAHomeOfThatPartner) {
  JobHome home{"b1", "b"};
  EXPECT_EQ(KnownHome("b", home, KnownNode{"b", "127.0.0.2", 4001}), "");
  EXPECT_EQ(KnownHome("b", home, std::nullopt),
            "its home b1 is no node that this node's gossip knows in cluster 'b'");
  // A node of this cluster, or of another partner, named as the partner's job's home.
  EXPECT_EQ(KnownHome("b", {"a2", "b"}, KnownNode{"", "127.0.0.3", 4001}),
            "its home a2 is a node of this cluster, and cluster 'b' speaks for its own nodes "
            "only");
  EXPECT_EQ(KnownHome("b", {"c1", "b"}, KnownNode{"c", "127.0.0.4", 4001}),
            "its home c1 is a node of cluster 'c', and cluster 'b' speaks for its own nodes "
            "only");
}

TEST(NodeDirectory, APartnersNodeDoesNotTakeAnOwnNodesName) {
  NodeDirectory nodes;
  EXPECT_TRUE(nodes.Update("a2", KnownNode{"", "127.0.0.3", 4001}));
  EXPECT_FALSE(nodes.Update("a2", KnownNode{"b", "127.0.0.9", 4001}));
  ASSERT_TRUE(nodes.Find("a2"));
  EXPECT_EQ(nodes.Find("a2")->cluster, "");
  EXPECT_EQ(nodes.Find("a2")->address, "127.0.0.3");
  nodes.Update("a2", KnownNode{"", "127.0.0.3", 4001, false});
  EXPECT_FALSE(nodes.Find("a2")->alive);
  nodes.Update("b1", KnownNode{"b", "127.0.0.5", 4001});
  EXPECT_EQ(nodes.Find("b1")->cluster, "b");
  EXPECT_FALSE(nodes.Find("b9"));
}

TEST(NodeDirectory, ANodeThatJoinedThisClusterIsNotKilledByItsOldClustersWord) {
  NodeDirectory nodes;
  EXPECT_TRUE(nodes.Update("a2", KnownNode{"a", "127.0.0.3", 4001}));
  EXPECT_TRUE(nodes.Update("a2", KnownNode{"", "127.0.0.3", 4001}));
  // Its old cluster's gossip finds it gone, late: it is alive here, in this cluster.
  EXPECT_FALSE(nodes.Update("a2", KnownNode{"a", "127.0.0.3", 4001, false}));
  EXPECT_EQ(nodes.Find("a2")->cluster, "");
  EXPECT_TRUE(nodes.Find("a2")->alive);
}

}  // namespace
}  // namespace homeward
