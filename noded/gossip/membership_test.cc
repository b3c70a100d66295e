// Tests of membership: merging, ageing, the window, probing, suspicion, death, eviction,
// refutation and rejoin, on a small virtual network with virtual time.
#include "membership.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <deque>
#include <memory>

namespace homeward {
namespace {

MembershipOptions Options() {
  MembershipOptions options;
  options.interval_ms = 100;
  options.suspect_after_ms = 300;
  options.dead_after_ms = 800;
  options.window = 4;
  return options;
}

NodeRecord Record(const std::string& name, int n, uint64_t incarnation = 1) {
  NodeRecord record;
  record.name = name;
  record.address = "10.0.0." + std::to_string(n);
  record.gossip_port = 4700;
  record.incarnation = incarnation;
  return record;
}

WindowEntry Entry(NodeRecord record, uint32_t age_ms, MemberState state = MemberState::kAlive) {
  return WindowEntry{std::move(record), age_ms, state};
}

// N nodes on a virtual network; `cut(from, to)` decides which datagrams are lost. With
// a cluster size, n1..nS are cluster c0, the next S nodes c1, and so on.
class Cluster {
 public:
  Cluster(int n, MembershipOptions options = Options(), int cluster_size = 0)
      : options_(options), cluster_size_(cluster_size) {
    for (int i = 1; i <= n; ++i) Add(i, 1);
  }
  void Add(int i, uint64_t incarnation) {
    NodeRecord self = Record(Name(i), i, incarnation);
    if (cluster_size_ > 0) self.cluster = "c" + std::to_string((i - 1) / cluster_size_);
    nodes_[i] = std::make_unique<Membership>(self, options_, i);
    nodes_[i]->SetChangeListener([this, i](const NodeRecord& peer, bool alive) {
      events_.push_back(Name(i) + (alive ? " sees alive " : " sees dead ") + peer.name);
    });
    if (i != 1) nodes_[i]->AddSeed(Record(Name(1), 1).gossip_endpoint());
  }
  static std::string Name(int i) { return "n" + std::to_string(i); }
  Membership& operator[](int i) { return *nodes_.at(i); }
  void Stop(int i) { down_.insert(i); }
  void Restart(int i, uint64_t incarnation) {
    down_.erase(i);
    Add(i, incarnation);
  }
  // Runs `rounds` gossip intervals.
  void Run(int rounds) {
    for (int r = 0; r < rounds; ++r) {
      now_ += options_.interval_ms;
      for (auto& [i, node] : nodes_) {
        if (down_.count(i)) continue;
        std::vector<Outgoing> out;
        node->Tick(now_, &out);
        Deliver(i, out);
      }
    }
  }
  MemberState StateSeenBy(int who, int of) {
    MemberView storage;
    const MemberView* view = nodes_.at(who)->Find(Name(of), now_, &storage);
    return view ? view->state : MemberState::kDead;
  }
  bool Knows(int who, int of) {
    MemberView storage;
    return nodes_.at(who)->Find(Name(of), now_, &storage) != nullptr;
  }
  std::function<bool(int from, int to)> cut = [](int, int) { return false; };
  std::vector<std::string> events_;
  int64_t now_ = 0;

 private:
  void Deliver(int from, std::vector<Outgoing>& out) {
    std::deque<std::pair<int, Outgoing>> queue;
    for (auto& o : out) queue.push_back({from, std::move(o)});
    while (!queue.empty()) {
      auto [sender, outgoing] = std::move(queue.front());
      queue.pop_front();
      int to = std::stoi(outgoing.to.host.substr(outgoing.to.host.rfind('.') + 1));
      if (!nodes_.count(to) || down_.count(to) || cut(sender, to)) continue;
      std::vector<Outgoing> replies;
      nodes_[to]->Receive(outgoing.message, Record(Name(sender), sender).gossip_endpoint(), now_,
                          &replies);
      for (auto& reply : replies) queue.push_back({to, std::move(reply)});
    }
  }
  MembershipOptions options_;
  int cluster_size_;
  std::map<int, std::unique_ptr<Membership>> nodes_;
  std::set<int> down_;
};

TEST(Membership, MergeKeepsTheFresherRecord) {
  Membership m(Record("self", 1), Options(), 1);
  std::vector<Outgoing> out;
  GossipMessage message;
  message.sender = Record("a", 2);
  NodeRecord b = Record("b", 3);
  b.load = 1.0f;
  message.entries.push_back(Entry(b, 500));
  m.Receive(message, message.sender.gossip_endpoint(), 1000, &out);
  MemberView view;
  ASSERT_TRUE(m.Find("b", 1000, &view));
  EXPECT_EQ(view.age_ms, 500);

  b.load = 2.0f;  // older news: ignored
  message.entries = {Entry(b, 900)};
  m.Receive(message, message.sender.gossip_endpoint(), 1000, &out);
  m.Find("b", 1000, &view);
  EXPECT_FLOAT_EQ(view.record.load, 1.0f);

  b.load = 3.0f;  // fresher: taken
  message.entries = {Entry(b, 100)};
  m.Receive(message, message.sender.gossip_endpoint(), 1000, &out);
  m.Find("b", 1000, &view);
  EXPECT_FLOAT_EQ(view.record.load, 3.0f);
  EXPECT_EQ(view.age_ms, 100);
}

TEST(Membership, InformationAges) {
  Membership m(Record("self", 1), Options(), 1);
  std::vector<Outgoing> out;
  GossipMessage message;
  message.sender = Record("a", 2);
  m.Receive(message, message.sender.gossip_endpoint(), 1000, &out);
  MemberView view;
  m.Find("a", 1000, &view);
  EXPECT_EQ(view.age_ms, 0);
  m.Find("a", 1750, &view);
  EXPECT_EQ(view.age_ms, 750);
  // The window carries that age onward.
  out.clear();
  m.Tick(1750, &out);
  ASSERT_FALSE(out.empty());
}

TEST(Membership, HigherIncarnationWinsWhateverItsAge) {
  Membership m(Record("self", 1), Options(), 1);
  std::vector<Outgoing> out;
  GossipMessage message;
  message.sender = Record("a", 2);
  message.entries = {Entry(Record("b", 3, 5), 10, MemberState::kDead)};
  // Unknown and dead: nothing to learn.
  m.Receive(message, message.sender.gossip_endpoint(), 1000, &out);
  MemberView view;
  EXPECT_FALSE(m.Find("b", 1000, &view));
  message.entries = {Entry(Record("b", 3, 5), 10)};
  m.Receive(message, message.sender.gossip_endpoint(), 1000, &out);
  message.entries = {Entry(Record("b", 3, 5), 10, MemberState::kDead)};
  m.Receive(message, message.sender.gossip_endpoint(), 1000, &out);
  ASSERT_TRUE(m.Find("b", 1000, &view));
  EXPECT_EQ(view.state, MemberState::kDead);
  // An alive record of the same life does not raise the dead...
  message.entries = {Entry(Record("b", 3, 5), 0)};
  m.Receive(message, message.sender.gossip_endpoint(), 1000, &out);
  m.Find("b", 1000, &view);
  EXPECT_EQ(view.state, MemberState::kDead);
  // ... a later life does, even with older information.
  message.entries = {Entry(Record("b", 3, 6), 5000)};
  m.Receive(message, message.sender.gossip_endpoint(), 6000, &out);
  m.Find("b", 6000, &view);
  EXPECT_EQ(view.state, MemberState::kAlive);
  EXPECT_EQ(view.record.incarnation, 6u);
}

TEST(Membership, WindowHoldsTheFreshestRecordsAndIsBounded) {
  MembershipOptions options = Options();
  options.window = 3;
  Membership m(Record("self", 1), options, 1);
  std::vector<Outgoing> out;
  for (int i = 0; i < 10; ++i) {
    GossipMessage message;
    message.sender = Record("p" + std::to_string(i), 10 + i);
    m.Receive(message, message.sender.gossip_endpoint(), 1000 + 100 * i, &out);
  }
  // Let the join news run out, then look at what a round sends.
  for (int round = 0; round < 200; ++round) {
    out.clear();
    m.Tick(3000 + round, &out);
  }
  ASSERT_FALSE(out.empty());
  const auto& entries = out.front().message.entries;
  ASSERT_EQ(entries.size(), 3u);
  for (const auto& entry : entries) {
    int index = std::stoi(entry.record.name.substr(1));
    EXPECT_GE(index, 6) << entry.record.name << " is not among the freshest";
  }
}

TEST(Membership, LoadRiseIsNewsButIdlenessIsDamped) {
  MembershipOptions options = Options();
  options.window = 1;
  options.suspect_after_ms = 1'000'000;  // no probing verdicts in this test
  options.dead_after_ms = 2'000'000;
  Membership m(Record("self", 1), options, 1);
  std::vector<Outgoing> out;
  auto hear = [&](NodeRecord record, int64_t now) {
    GossipMessage message;
    message.sender = std::move(record);
    m.Receive(message, message.sender.gossip_endpoint(), now, &out);
  };
  // The window (one record) of the next datagram sent to "third".
  auto next_window_to_third = [&](int64_t now) {
    for (int round = 0; round < 10; ++round) {
      out.clear();
      m.Tick(now + round, &out);
      for (const auto& o : out) {
        if (o.to.host == "10.0.0.4") return o.message.entries.at(0).record.name;
      }
    }
    return std::string("none");
  };
  NodeRecord busy = Record("busy", 2);
  NodeRecord other = Record("other", 3);
  hear(busy, 0);
  hear(other, 0);
  hear(Record("third", 4), 0);
  for (int round = 0; round < 100; ++round) m.Tick(10 + round, &out);  // join news runs out
  busy.load = 3;
  hear(busy, 1000);
  hear(other, 1001);  // fresher, but not news
  EXPECT_EQ(next_window_to_third(1002), "busy");
  for (int round = 0; round < 100; ++round) m.Tick(1100 + round, &out);
  busy.load = 0;  // became idle: carried only while it is among the freshest
  hear(busy, 2000);
  hear(other, 2001);
  EXPECT_EQ(next_window_to_third(2002), "other");
}

TEST(Membership, ThreeNodesJoinThroughOneSeed) {
  Cluster cluster(3);
  cluster.Run(10);
  for (int who = 1; who <= 3; ++who) {
    for (int of = 1; of <= 3; ++of) {
      if (who != of) {
        EXPECT_EQ(cluster.StateSeenBy(who, of), MemberState::kAlive);
      }
    }
    EXPECT_EQ(cluster[who].Picture(cluster.now_).size(), 3u);
  }
}

// How many datagrams one round of `m` sends to `seed`.
long KnocksAt(Membership& m, const Endpoint& seed, int64_t now) {
  std::vector<Outgoing> out;
  m.Tick(now, &out);
  return std::count_if(out.begin(), out.end(), [&](const Outgoing& o) { return o.to == seed; });
}

// `m` hears from node `name` (address n) of `cluster`.
void HearFrom(Membership& m, const std::string& name, int n, const std::string& cluster,
              int64_t now) {
  GossipMessage message;
  message.sender = Record(name, n);
  message.sender.cluster = cluster;
  std::vector<Outgoing> replies;
  m.Receive(message, message.sender.gossip_endpoint(), now, &replies);
}

TEST(Membership, APartnershipRingKnocksAtItsSeedsUntilAPartnerNodeIsAlive) {
  MembershipOptions options = Options();
  options.seek_cluster = "b";
  NodeRecord self = Record("a1", 1);
  self.cluster = "a";
  Membership m(self, options, 1);
  Endpoint partner_seed{"10.0.0.9", 4700};
  m.AddSeed(partner_seed);
  EXPECT_EQ(KnocksAt(m, partner_seed, 100), 1);
  // A live node of its own cluster is not what the ring is for: it knocks on.
  HearFrom(m, "a2", 2, "a", 150);
  EXPECT_EQ(KnocksAt(m, partner_seed, 200), 1);
  HearFrom(m, "b1", 3, "b", 250);
  EXPECT_EQ(KnocksAt(m, partner_seed, 300), 0);
}

TEST(Membership, KnocksAtItsSeedsUntilItKnowsANodeOfItsOwnCluster) {
  // Its first ping to its cluster's seed was lost, and only another cluster answered.
  NodeRecord self = Record("a1", 1);
  self.cluster = "a";
  Membership m(self, Options(), 1);
  Endpoint seed{"10.0.0.9", 4700};
  m.AddSeed(seed);
  EXPECT_EQ(KnocksAt(m, seed, 100), 1);
  HearFrom(m, "b1", 3, "b", 150);
  EXPECT_EQ(KnocksAt(m, seed, 200), 1);
  HearFrom(m, "a2", 2, "a", 250);
  EXPECT_EQ(KnocksAt(m, seed, 300), 0);
}

TEST(Membership, SilentNodeIsSuspectedThenDeclaredDeadThenForgotten) {
  Cluster cluster(4);
  cluster.Run(10);
  cluster.Stop(4);
  bool suspected = false;
  int rounds = 0;
  while (cluster.StateSeenBy(1, 4) != MemberState::kDead && rounds < 100) {
    cluster.Run(1);
    ++rounds;
    suspected |= cluster.StateSeenBy(1, 4) == MemberState::kSuspect;
  }
  EXPECT_TRUE(suspected);
  // Probed within 3 rounds (3 peers), suspected 300 ms later, dead 500 ms after that.
  EXPECT_LE(rounds, 3 + 3 + 5 + 2);
  cluster.Run(3);
  EXPECT_EQ(cluster.StateSeenBy(2, 4), MemberState::kDead);
  EXPECT_EQ(cluster.StateSeenBy(3, 4), MemberState::kDead);
  EXPECT_NE(std::find(cluster.events_.begin(), cluster.events_.end(), "n2 sees dead n4"),
            cluster.events_.end());
  cluster.Run(60);  // tombstones go after 4 * dead_after
  EXPECT_FALSE(cluster.Knows(1, 4));
  EXPECT_EQ(cluster[1].Picture(cluster.now_).size(), 3u);
}

TEST(Membership, RestartedNodeRejoins) {
  Cluster cluster(3);
  cluster.Run(10);
  cluster.Stop(3);
  cluster.Run(20);
  ASSERT_EQ(cluster.StateSeenBy(1, 3), MemberState::kDead);
  cluster.Restart(3, 2);
  cluster.Run(5);
  EXPECT_EQ(cluster.StateSeenBy(1, 3), MemberState::kAlive);
  EXPECT_EQ(cluster.StateSeenBy(2, 3), MemberState::kAlive);
  EXPECT_EQ(cluster.StateSeenBy(3, 1), MemberState::kAlive);
  EXPECT_NE(std::find(cluster.events_.begin(), cluster.events_.end(), "n1 sees alive n3"),
            cluster.events_.end());
}

TEST(Membership, IndirectProbesSaveANodeBehindABrokenLink) {
  Cluster cluster(4);
  cluster.Run(10);
  // n1 and n4 cannot reach each other; the others reach both.
  cluster.cut = [](int from, int to) { return (from == 1 && to == 4) || (from == 4 && to == 1); };
  cluster.Run(40);
  EXPECT_NE(cluster.StateSeenBy(1, 4), MemberState::kDead);
  EXPECT_NE(cluster.StateSeenBy(4, 1), MemberState::kDead);
  EXPECT_GT(cluster[1].stats().indirect_probes, 0u);
}

TEST(Membership, SuspectedNodeRefutes) {
  Cluster cluster(3);
  cluster.Run(10);
  // n3 is unreachable from everyone for a moment (enough to be suspected, not buried).
  cluster.cut = [](int from, int to) { return to == 3 || from == 3; };
  int rounds = 0;
  while (cluster.StateSeenBy(1, 3) == MemberState::kAlive && rounds < 50) {
    cluster.Run(1);
    ++rounds;
  }
  ASSERT_EQ(cluster.StateSeenBy(1, 3), MemberState::kSuspect);
  cluster.cut = [](int, int) { return false; };
  cluster.Run(4);
  EXPECT_EQ(cluster.StateSeenBy(1, 3), MemberState::kAlive);
  EXPECT_EQ(cluster.StateSeenBy(2, 3), MemberState::kAlive);
  EXPECT_GT(cluster[3].stats().refutations, 0u);
}

TEST(Membership, CapacityEvictsTheStalest) {
  MembershipOptions options = Options();
  options.capacity = 5;
  Membership m(Record("self", 1), options, 1);
  std::vector<Outgoing> out;
  for (int i = 0; i < 20; ++i) {
    GossipMessage message;
    message.sender = Record("p" + std::to_string(i), 10 + i);
    m.Receive(message, message.sender.gossip_endpoint(), 1000 + i, &out);
  }
  EXPECT_EQ(m.known(), 5u);
  EXPECT_EQ(m.stats().evictions, 15u);
  MemberView view;
  EXPECT_TRUE(m.Find("p19", 2000, &view));
  EXPECT_FALSE(m.Find("p0", 2000, &view));
}

// Two clusters of three in one ring (a partnership): n1..n3 are c0, n4..n6 are c1.
TEST(Membership, ClustersLearnEachOtherThroughExchangedWindows) {
  Cluster cluster(6, Options(), 3);
  cluster.Run(20);
  for (int who = 1; who <= 6; ++who) {
    for (int of = 1; of <= 6; ++of) {
      if (who != of) {
        EXPECT_EQ(cluster.StateSeenBy(who, of), MemberState::kAlive) << who << of;
      }
    }
    EXPECT_EQ(cluster[who].known_foreign(), 3u);
    EXPECT_GT(cluster[who].stats().exchanges, 0u);
  }
}

TEST(Membership, ACutBetweenClustersBuriesNobody) {
  // Each cluster probes only its own nodes: a link down between clusters is no death,
  // while the other cluster's records keep coming through those who still hear it.
  Cluster cluster(6, Options(), 3);
  cluster.Run(20);
  cluster.cut = [](int from, int to) { return (from == 6 && to <= 3) || (to == 6 && from <= 3); };
  cluster.Run(60);
  for (int who = 1; who <= 3; ++who) {
    EXPECT_EQ(cluster.StateSeenBy(who, 6), MemberState::kAlive) << who;
    EXPECT_EQ(cluster[who].stats().suspicions, 0u) << who;
  }
}

TEST(Membership, AnotherClustersDeathIsItsOwnClustersVerdict) {
  Cluster cluster(6, Options(), 3);
  cluster.Run(20);
  cluster.Stop(6);
  int rounds = 0;
  while ((cluster.StateSeenBy(1, 6) != MemberState::kDead ||
          cluster.StateSeenBy(2, 6) != MemberState::kDead) &&
         rounds < 100) {
    cluster.Run(1);
    ++rounds;
  }
  EXPECT_EQ(cluster.StateSeenBy(4, 6), MemberState::kDead);
  EXPECT_EQ(cluster.StateSeenBy(1, 6), MemberState::kDead);
  EXPECT_EQ(cluster.StateSeenBy(2, 6), MemberState::kDead);
  // Within the verdict's time (probe, suspicion, death) and a few rounds, well before
  // the other cluster's record would be forgotten unheard (2 * dead_after: 16 rounds).
  EXPECT_LE(rounds, 15);
  EXPECT_EQ(cluster[1].stats().expiries, 0u);
}

TEST(Membership, AClusterUnheardIsForgotten) {
  Cluster cluster(6, Options(), 3);
  cluster.Run(20);
  for (int i = 4; i <= 6; ++i) cluster.Stop(i);
  cluster.Run(30);
  for (int of = 4; of <= 6; ++of) {
    EXPECT_FALSE(cluster.Knows(1, of)) << of;
    EXPECT_NE(std::find(cluster.events_.begin(), cluster.events_.end(),
                        "n1 sees dead " + Cluster::Name(of)),
              cluster.events_.end());
  }
  EXPECT_EQ(cluster[1].stats().expiries, 3u);
  EXPECT_EQ(cluster.StateSeenBy(1, 2), MemberState::kAlive);
}

TEST(Membership, OtherClustersRecordsAreBoundedAndTheirNewsIsNotPassedOn) {
  MembershipOptions options = Options();
  options.foreign_capacity = 3;
  NodeRecord self = Record("self", 1);
  self.cluster = "a";
  Membership m(self, options, 1);
  std::vector<Outgoing> out;
  for (int i = 0; i < 10; ++i) {
    GossipMessage message;
    message.sender = Record("b" + std::to_string(i), 10 + i);
    message.sender.cluster = "b";
    m.Receive(message, message.sender.gossip_endpoint(), 1000 + i, &out);
  }
  GossipMessage from_a2;
  from_a2.sender = Record("a2", 2);
  from_a2.sender.cluster = "a";
  m.Receive(from_a2, from_a2.sender.gossip_endpoint(), 1010, &out);
  EXPECT_EQ(m.known(), 4u);
  EXPECT_EQ(m.known_foreign(), 3u);
  MemberView view;
  EXPECT_TRUE(m.Find("b9", 1010, &view));
  EXPECT_FALSE(m.Find("b0", 1010, &view));
  EXPECT_TRUE(m.Find("a2", 1010, &view));
  // News of another cluster's node (its load rose) is taken in, not passed on.
  GossipMessage news;
  news.sender = Record("b9", 19);
  news.sender.cluster = "b";
  NodeRecord busy = Record("b8", 18);
  busy.cluster = "b";
  busy.load = 5;
  news.entries.push_back(Entry(busy, 0));
  news.news = 1;
  m.Receive(news, news.sender.gossip_endpoint(), 1020, &out);
  ASSERT_TRUE(m.Find("b8", 1020, &view));
  EXPECT_EQ(view.record.load, 5);
  out.clear();
  m.Tick(1100, &out);
  for (const auto& o : out) {
    if (o.to == from_a2.sender.gossip_endpoint()) {
      EXPECT_EQ(o.message.news, 0u);
    }
  }
}

TEST(Membership, IgnoresItsOwnName) {
  Membership m(Record("self", 1), Options(), 1);
  std::vector<Outgoing> out;
  GossipMessage message;
  message.sender = Record("self", 9);
  m.Receive(message, message.sender.gossip_endpoint(), 0, &out);
  EXPECT_EQ(m.known(), 0u);
  EXPECT_TRUE(out.empty());
}

}  // namespace
}  // namespace homeward
