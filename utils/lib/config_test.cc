// Node configuration: good files load, every bad field gets one line naming it.
#include "config.h"

#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "error.h"
#include "scratch_dir.h"

namespace homeward {
namespace {

using ::testing::HasSubstr;

class ConfigTest : public ::testing::Test {
 protected:
  void SetUp() override {
    key_path_ = dir_ + "/cluster.key";
    WriteFile(key_path_, std::string(64, 'a') + "\n");
    chmod(key_path_.c_str(), 0600);
  }

  static void WriteFile(const std::string& path, const std::string& text) {
    std::ofstream(path) << text;
  }

  std::string Write(const std::string& text) {
    std::string path = dir_ + "/node.toml";
    WriteFile(path, text);
    return path;
  }

  std::string Good() {
    return "[node]\nname = \"node1\"\naddress = \"127.0.0.11\"\nstate_dir = \"" + dir_ +
           "\"\n[cluster]\nkey_file = \"" + key_path_ +
           "\"\nseeds = [\"127.0.0.12\", "
           "\"127.0.0.13:5000\"]\n";
  }

  // Loads `text` and returns the one-line error it must produce.
  std::string ErrorOf(const std::string& text) {
    std::string path = Write(text);
    try {
      LoadNodeConfig(path);
    } catch (const Error& e) {
      EXPECT_EQ(e.kind(), ErrorKind::kInvalidInput);
      std::string message = e.what();
      EXPECT_EQ(message.find('\n'), std::string::npos) << message;
      EXPECT_THAT(message, HasSubstr(path));
      return message;
    }
    ADD_FAILURE() << "no error for:\n" << text;
    return "";
  }

  ScratchDir scratch_{"homeward-config"};
  std::string dir_ = scratch_.path();
  std::string key_path_;
};

TEST_F(ConfigTest, LoadsGoodFileWithDefaults) {
  NodeConfig config = LoadNodeConfig(Write(Good()));
  EXPECT_EQ(config.name, "node1");
  EXPECT_EQ(config.address, "127.0.0.11");
  EXPECT_EQ(config.gossip_port, 4700);
  EXPECT_EQ(config.peer_port, 4701);
  EXPECT_EQ(config.control_socket, dir_ + "/control.sock");
  EXPECT_EQ(config.cluster_key, std::vector<uint8_t>(32, 0xaa));
  ASSERT_EQ(config.seeds.size(), 2u);
  EXPECT_EQ(config.seeds[0], (Endpoint{"127.0.0.12", 4700}));
  EXPECT_EQ(config.seeds[1], (Endpoint{"127.0.0.13", 5000}));
  EXPECT_EQ(config.gossip.interval, std::chrono::milliseconds(1000));
}

TEST_F(ConfigTest, ReadsEveryOptionalField) {
  NodeConfig config =
      LoadNodeConfig(Write(
          Good() + "[ports]\ngossip = 5100\npeer = 5101\n[control]\nsocket = \"/tmp/c.sock\"\n"
                   "[gossip]\ninterval_ms = 250\nsuspect_ms = 900\ndead_ms = 2000\nwindow = 8\n"));
  EXPECT_EQ(config.gossip_port, 5100);
  EXPECT_EQ(config.peer_port, 5101);
  EXPECT_EQ(config.control_socket, "/tmp/c.sock");
  EXPECT_EQ(config.gossip.interval, std::chrono::milliseconds(250));
  EXPECT_EQ(config.gossip.dead_after, std::chrono::milliseconds(2000));
  EXPECT_EQ(config.gossip.window, 8);
  EXPECT_EQ(config.seeds[0].port, 5100);  // seeds default to our own gossip port
}

TEST_F(ConfigTest, ReadsTheNodesSpeedOrMeasuresIt) {
  EXPECT_EQ(LoadNodeConfig(Write(Good())).speed, 0);  // measured
  auto with_speed = [this](const std::string& value) {
    std::string text = Good();
    return text.replace(text.find("[cluster]"), 0, "speed = " + value + "\n");
  };
  EXPECT_EQ(LoadNodeConfig(Write(with_speed("2.5"))).speed, 2.5);
  EXPECT_EQ(LoadNodeConfig(Write(with_speed("3"))).speed, 3);
  EXPECT_THAT(ErrorOf(with_speed("0")), HasSubstr("node.speed: 0 is out of range"));
  EXPECT_THAT(ErrorOf(with_speed("\"fast\"")), HasSubstr("node.speed: must be a number"));
  EXPECT_THAT(ErrorOf(with_speed("nan")), HasSubstr("node.speed: nan is out of range"));
}

TEST_F(ConfigTest, ReadsTheNodesGroupAndShortJobRules) {
  NodeConfig defaults = LoadNodeConfig(Write(Good()));
  EXPECT_EQ(defaults.group, "");
  EXPECT_EQ(defaults.others_priority, 50);
  EXPECT_EQ(defaults.long_job_after, std::chrono::seconds(0));
  EXPECT_EQ(defaults.long_job_priority, 200);
  auto with = [this](const std::string& lines) {
    std::string text = Good();
    return text.replace(text.find("[cluster]"), 0, lines + "\n");
  };
  NodeConfig config = LoadNodeConfig(Write(with(
      "group = \"physics\"\nothers_priority = 70\nlong_job_s = 600\nlong_job_priority = 300")));
  EXPECT_EQ(config.group, "physics");
  EXPECT_EQ(config.others_priority, 70);
  EXPECT_EQ(config.long_job_after, std::chrono::seconds(600));
  EXPECT_EQ(config.long_job_priority, 300);
  EXPECT_THAT(ErrorOf(with("group = \"a b\"")),
              HasSubstr("node.group: 'a b' is not a valid group name"));
  EXPECT_THAT(ErrorOf(with("others_priority = 0")),
              HasSubstr("node.others_priority: 0 is out of range"));
  EXPECT_THAT(ErrorOf(with("long_job_s = -1")), HasSubstr("node.long_job_s: -1 is out of range"));
}

TEST_F(ConfigTest, ReadsPeerLimitsAndReplayWindow) {
  NodeConfig defaults = LoadNodeConfig(Write(Good()));
  EXPECT_EQ(defaults.peer.max_pending_per_source, 8);
  EXPECT_EQ(defaults.peer.max_pending, 64);
  EXPECT_EQ(defaults.peer.handshake, std::chrono::milliseconds(5000));
  EXPECT_EQ(defaults.gossip.replay_window, std::chrono::milliseconds(30000));
  NodeConfig config = LoadNodeConfig(
      Write(Good() + "[gossip]\nreplay_window_ms = 2000\n[peer]\nmax_pending_per_source = 2\n"
                     "max_pending = 10\nhandshake_ms = 700\n"));
  EXPECT_EQ(config.peer.max_pending_per_source, 2);
  EXPECT_EQ(config.peer.max_pending, 10);
  EXPECT_EQ(config.peer.handshake, std::chrono::milliseconds(700));
  EXPECT_EQ(config.gossip.replay_window, std::chrono::milliseconds(2000));
  EXPECT_THAT(ErrorOf(Good() + "[peer]\nmax_pending = 0\n"), HasSubstr("peer.max_pending"));
}

TEST_F(ConfigTest, ReadsBalanceSection) {
  NodeConfig defaults = LoadNodeConfig(Write(Good()));
  EXPECT_TRUE(defaults.balance.automatic);
  NodeConfig config = LoadNodeConfig(
      Write(Good() + "[balance]\nautomatic = false\ninterval_ms = 500\nmin_residency_ms = 9000\n"
                     "hysteresis_percent = 50\nusher_free_mb = 64\n"));
  EXPECT_FALSE(config.balance.automatic);
  EXPECT_EQ(config.balance.interval, std::chrono::milliseconds(500));
  EXPECT_EQ(config.balance.min_residency, std::chrono::milliseconds(9000));
  EXPECT_EQ(config.balance.hysteresis_percent, 50);
  EXPECT_EQ(config.balance.usher_free_mb, 64u);
  EXPECT_THAT(ErrorOf(Good() + "[balance]\nautomatic = 1\n"),
              HasSubstr("balance.automatic: must be true or false"));
}

TEST_F(ConfigTest, ReadsRecoverySection) {
  EXPECT_EQ(LoadNodeConfig(Write(Good())).recovery.home_grace, std::chrono::seconds(300));
  auto config = LoadNodeConfig(Write(Good() + "[recovery]\nhome_grace_s = 12\n"));
  EXPECT_EQ(config.recovery.home_grace, std::chrono::seconds(12));
  EXPECT_THAT(ErrorOf(Good() + "[recovery]\nhome_grace_s = 0\n"),
              HasSubstr("recovery.home_grace_s"));
}

TEST_F(ConfigTest, TheFileServicesReplayLogIsSyncedOnlyWhenAsked) {
  EXPECT_FALSE(LoadNodeConfig(Write(Good())).files_sync_replay_log);
  EXPECT_TRUE(LoadNodeConfig(Write(Good())).files_write_behind);
  EXPECT_FALSE(
      LoadNodeConfig(Write(Good() + "[files]\nwrite_behind = false\n")).files_write_behind);
  EXPECT_TRUE(
      LoadNodeConfig(Write(Good() + "[files]\nsync_replay_log = true\n")).files_sync_replay_log);
}

TEST_F(ConfigTest, HomefsTakesRequestsThroughIoUringUnlessTold) {
  EXPECT_TRUE(LoadNodeConfig(Write(Good())).files_io_uring);
  EXPECT_FALSE(LoadNodeConfig(Write(Good() + "[files]\nio_uring = false\n")).files_io_uring);
  EXPECT_THROW(LoadNodeConfig(Write(Good() + "[files]\nio_uring = 1\n")), Error);
}

TEST_F(ConfigTest, AFrozenGuestContinuesInPlaceUnlessSetToGoHome) {
  EXPECT_FALSE(LoadNodeConfig(Write(Good())).recovery.frozen_go_home);
  EXPECT_TRUE(LoadNodeConfig(Write(Good() + "[recovery]\nfrozen_guests = \"home\"\n"))
                  .recovery.frozen_go_home);
  EXPECT_FALSE(LoadNodeConfig(Write(Good() + "[recovery]\nfrozen_guests = \"continue\"\n"))
                   .recovery.frozen_go_home);
  EXPECT_THAT(ErrorOf(Good() + "[recovery]\nfrozen_guests = \"away\"\n"),
              HasSubstr("recovery.frozen_guests"));
}

TEST_F(ConfigTest, MissingFileNamesIt) {
  try {
    LoadNodeConfig(dir_ + "/absent.toml");
    FAIL();
  } catch (const Error& e) {
    EXPECT_THAT(e.what(), HasSubstr("absent.toml"));
    EXPECT_THAT(e.what(), HasSubstr("No such file"));
  }
}

TEST_F(ConfigTest, SyntaxErrorGivesLineAndColumn) {
  EXPECT_THAT(ErrorOf("[node\nname = 1\n"), HasSubstr(":1:"));
}

TEST_F(ConfigTest, MissingKeyIsNamed) {
  EXPECT_THAT(
      ErrorOf("[node]\naddress = \"127.0.0.1\"\n[cluster]\nkey_file = \"" + key_path_ + "\"\n"),
      HasSubstr("node.name: missing"));
  EXPECT_THAT(ErrorOf("[node]\nname = \"a\"\naddress = \"127.0.0.1\"\n"),
              HasSubstr("cluster.key_file: missing"));
}

TEST_F(ConfigTest, BadAddressIsNamed) {
  std::string text = Good();
  text.replace(text.find("127.0.0.11"), 10, "127.0.0.300");
  EXPECT_THAT(ErrorOf(text), HasSubstr("node.address: '127.0.0.300' is not an IPv4 address"));
}

TEST_F(ConfigTest, BadSeedIsNamed) {
  std::string text = Good();
  text.replace(text.find("127.0.0.13:5000"), 15, "127.0.0.13:99999");
  EXPECT_THAT(ErrorOf(text), HasSubstr("cluster.seeds[1]: '127.0.0.13:99999' has a bad port"));
}

TEST_F(ConfigTest, WrongTypeIsNamed) {
  EXPECT_THAT(ErrorOf(Good() + "[ports]\ngossip = \"x\"\n"),
              HasSubstr("ports.gossip: must be an integer"));
  EXPECT_THAT(ErrorOf(Good() + "[ports]\npeer = 70000\n"), HasSubstr("ports.peer: 70000 is out"));
  EXPECT_THAT(ErrorOf(Good() + "[gossip]\nsuspect_ms = 5000\ndead_ms = 4000\n"),
              HasSubstr("gossip.dead_ms"));
}

TEST_F(ConfigTest, BadNodeNameIsNamed) {
  std::string text = Good();
  text.replace(text.find("node1"), 5, "no/de");
  EXPECT_THAT(ErrorOf(text), HasSubstr("node.name: 'no/de' is not a valid node name"));
}

TEST_F(ConfigTest, UnreadableKeyFileIsNamed) {
  std::string text = Good();
  text.replace(text.find(key_path_), key_path_.size(), dir_ + "/nokey");
  EXPECT_THAT(ErrorOf(text), HasSubstr("cluster.key_file: cannot read " + dir_ + "/nokey"));
}

TEST_F(ConfigTest, MalformedKeyIsNamed) {
  WriteFile(key_path_, "not a key\n");
  EXPECT_THAT(ErrorOf(Good()),
              HasSubstr("cluster.key_file: " + key_path_ + ": a cluster key is 64"));
  WriteFile(key_path_, std::string(63, 'a') + "g\n");
  EXPECT_THAT(ErrorOf(Good()), HasSubstr("only hexadecimal digits"));
}

}  // namespace
TEST_F(ConfigTest, RefusesAKeyFileOthersMayRead) {
  for (mode_t mode : {0644, 0640, 0604, 0660, 0622}) {
    chmod(key_path_.c_str(), mode);
    EXPECT_THAT(ErrorOf(Good()), HasSubstr("may be read or changed by others"));
  }
  chmod(key_path_.c_str(), 0400);
  EXPECT_NO_THROW(LoadNodeConfig(Write(Good())));
}

TEST_F(ConfigTest, ReadsTheClusterNameAndItsPartners) {
  std::string partner_key = dir_ + "/b.key";
  WriteFile(partner_key, std::string(64, 'b') + "\n");
  chmod(partner_key.c_str(), 0600);
  NodeConfig config = LoadNodeConfig(Write(
      Good() + "name = \"a\"\n[[partner]]\nname = \"b\"\nkey_file = \"" + partner_key +
      "\"\nseeds = [\"127.0.0.21\"]\npriority = 50\naccept = false\n"
      "[[partner]]\nname = \"c\"\nkey_file = \"" + partner_key + "\"\n"));
  EXPECT_EQ(config.cluster, "a");
  ASSERT_EQ(config.partners.size(), 2u);
  const PartnerConfig& b = config.partners[0];
  EXPECT_EQ(b.name, "b");
  EXPECT_EQ(b.key, std::vector<uint8_t>(32, 0xbb));
  ASSERT_EQ(b.seeds.size(), 1u);
  EXPECT_EQ(b.seeds[0], (Endpoint{"127.0.0.21", 4700}));
  EXPECT_EQ(b.priority, 50);
  EXPECT_TRUE(b.send);
  EXPECT_FALSE(b.accept);
  EXPECT_EQ(config.partners[1].priority, 100);  // the default
  EXPECT_TRUE(config.partners[1].seeds.empty());
  EXPECT_EQ(LoadNodeConfig(Write(Good())).cluster, "homeward");
}

TEST_F(ConfigTest, RefusesBadPartners) {
  std::string partner_key = dir_ + "/b.key";
  WriteFile(partner_key, std::string(64, 'b') + "\n");
  chmod(partner_key.c_str(), 0600);
  auto partner = [&](const std::string& fields) { return Good() + "[[partner]]\n" + fields; };
  std::string key = "key_file = \"" + partner_key + "\"\n";
  EXPECT_THAT(ErrorOf(partner(key)), HasSubstr("partner[0].name: missing"));
  EXPECT_THAT(ErrorOf(partner("name = \"b/c\"\n" + key)), HasSubstr("not a valid cluster name"));
  EXPECT_THAT(ErrorOf(partner("name = \"homeward\"\n" + key)),
              HasSubstr("partner[0].name: 'homeward' is this node's own cluster"));
  EXPECT_THAT(ErrorOf(partner("name = \"b\"\n" + key) + "[[partner]]\nname = \"b\"\n" + key),
              HasSubstr("partner[1].name: cluster 'b' is a partner twice"));
  // The cluster's own key would let the partner speak as this cluster's nodes.
  EXPECT_THAT(ErrorOf(partner("name = \"b\"\nkey_file = \"" + key_path_ + "\"\n")),
              HasSubstr("partner[0].key_file: is the cluster's own key"));
  chmod(partner_key.c_str(), 0644);
  EXPECT_THAT(ErrorOf(partner("name = \"b\"\n" + key)),
              HasSubstr("partner[0].key_file: " + partner_key + " may be read or changed"));
  chmod(partner_key.c_str(), 0600);
  EXPECT_THAT(ErrorOf(partner("name = \"b\"\n" + key + "seeds = [\"x\"]\n")),
              HasSubstr("partner[0].seeds[0]"));
  EXPECT_THAT(ErrorOf(partner("name = \"b\"\n" + key + "priority = 0\n")),
              HasSubstr("partner[0].priority: 0 is out of range"));
  EXPECT_THAT(ErrorOf("partner = 3\n" + Good()), HasSubstr("must be a list of tables"));
  EXPECT_THAT(ErrorOf(Good() + "name = \"a b\"\n"), HasSubstr("cluster.name: 'a b' is not"));
}

}  // namespace homeward
