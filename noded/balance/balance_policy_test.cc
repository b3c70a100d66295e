// Tests of the placement and balancing policy: each decision rule alone, on small
// pictures where the right answer is plain.
#include "balance_policy.h"

#include <gtest/gtest.h>

#include <map>

namespace homeward::balance {
namespace {

Node MakeNode(std::string name, double load, int cores = 1, uint32_t mem_free_mb = 8192) {
  Node node;
  node.name = std::move(name);
  node.cores = cores;
  node.load = load;
  node.mem_free_mb = mem_free_mb;
  node.mem_total_mb = 16384;
  node.age_ms = 1000;
  return node;
}

// A CPU-bound job that has run here for a minute.
Job MakeJob(uint64_t id, std::string home = "self") {
  Job job;
  job.id = id;
  job.home = std::move(home);
  job.guest = job.home != "self";
  job.memory_mb = 100;
  job.run_ms = 60000;
  job.resident_ms = 60000;
  job.cpu_use = 0.25;
  return job;
}

std::vector<Job> Jobs(int count) {
  std::vector<Job> jobs;
  for (int i = 1; i <= count; ++i) jobs.push_back(MakeJob(static_cast<uint64_t>(i)));
  return jobs;
}

Node Self(double load, uint32_t mem_free_mb = 8192) {
  Node self = MakeNode("self", load, 1, mem_free_mb);
  self.age_ms = 0;
  return self;
}

TEST(ExpectedShare, IsSpeedTimesTheCoresPerRunnableProcess) {
  Node node = MakeNode("a", 3, 2);
  node.speed = 1.5;
  EXPECT_DOUBLE_EQ(ExpectedShare(node, 1), 1.5 * 2 / 4);
  EXPECT_DOUBLE_EQ(ExpectedShare(node, 0), 1.5 * 2 / 3);
  EXPECT_DOUBLE_EQ(ExpectedShare(MakeNode("idle", 0), 0), 1.0);  // no division by zero
  EXPECT_DOUBLE_EQ(ExpectedShare(MakeNode("idle", 0, 4), 1), 1.0);
}

TEST(BestNode, TakesTheMostExpectedCpu) {
  Node fast = MakeNode("fast", 1);
  fast.speed = 3;  // 3 x 1/2 = 1.5
  std::vector<Node> nodes{Self(0), MakeNode("b", 0.5), fast, MakeNode("wide", 2, 8)};
  EXPECT_EQ(BestNode(nodes, "self", 0), "fast");
}

TEST(BestNode, TiesGoToSelfThenToTheFirstListed) {
  EXPECT_EQ(BestNode({MakeNode("a", 0), Self(0), MakeNode("b", 0)}, "self", 0), "self");
  EXPECT_EQ(BestNode({Self(3), MakeNode("a", 0), MakeNode("b", 0)}, "self", 0), "a");
}

TEST(BestNode, HonoursFreeMemoryAndBlockedNodes) {
  Node blocked = MakeNode("blocked", 0);
  blocked.accepts_guests = false;
  Node small = MakeNode("small", 0, 1, 1000);
  EXPECT_EQ(BestNode({Self(2), blocked, small}, "self", 0), "small");
  EXPECT_EQ(BestNode({Self(2), blocked, small}, "self", 2000), "self");
  // A blocked node still places its own jobs on itself.
  Node self_blocked = Self(0);
  self_blocked.accepts_guests = false;
  EXPECT_EQ(BestNode({self_blocked, MakeNode("a", 1)}, "self", 0), "self");
  EXPECT_EQ(BestNode({Self(0, 500), small}, "self", 2000), std::nullopt);
  EXPECT_EQ(BestNode({}, "self", 0), std::nullopt);
}

TEST(BestNode, ASubClustersJobsStartOnItsOwnNodesFirst) {
  Node physics = MakeNode("physics", 1, 2);
  physics.group = "physics";
  Node chemistry = MakeNode("chemistry", 0, 2);
  chemistry.group = "chemistry";
  std::vector<Node> nodes{Self(3), chemistry, physics, MakeNode("shared", 2, 2)};
  // A physicist's job: physics has a whole core free, though chemistry is idler.
  EXPECT_EQ(BestNode(nodes, "self", 0, {"users", "physics"}), "physics");
  // A chemist's job goes to chemistry; another user's to the most CPU among the nodes
  // of no group, unless none of them has a whole core: then anywhere.
  EXPECT_EQ(BestNode(nodes, "self", 0, {"chemistry"}), "chemistry");
  nodes[3].load = 1;
  EXPECT_EQ(BestNode(nodes, "self", 0, {"users"}), "shared");
  nodes[3].load = 3;
  EXPECT_EQ(BestNode(nodes, "self", 0, {"users"}), "chemistry");
  // Once the physicists' nodes are full, the best node of all.
  nodes[2].load = 4;
  EXPECT_EQ(BestNode(nodes, "self", 0, {"physics"}), "chemistry");
}

TEST(Balancer, MovesOneOfFourJobsToAnIdleNode) {
  Balancer balancer("self", Options{}, 1);
  auto decisions = balancer.Round(100000, {Self(4), MakeNode("idle", 0)}, Jobs(4));
  ASSERT_EQ(decisions.size(), 1u);
  EXPECT_EQ(decisions[0].target, "idle");
  EXPECT_EQ(decisions[0].reason, "load");
}

TEST(Balancer, EvenLoadsStay) {
  Balancer balancer("self", Options{}, 1);
  EXPECT_TRUE(balancer.Round(100000, {Self(2), MakeNode("other", 2)}, Jobs(2)).empty());
  // 2 against 1: half a core here, half a core there with the job: nothing to gain.
  EXPECT_TRUE(balancer.Round(100000, {Self(2), MakeNode("other", 1)}, Jobs(2)).empty());
}

TEST(Balancer, ASecondMoveInTheRoundSeesTheFirst) {
  Options options;
  options.max_moves_per_round = 3;
  Balancer balancer("self", options, 1);
  // After one move the loads are 2 and 1: a second move would gain nothing.
  auto decisions = balancer.Round(100000, {Self(3), MakeNode("idle", 0)}, Jobs(3));
  EXPECT_EQ(decisions.size(), 1u);
  // With two idle nodes, two moves, to both.
  decisions = balancer.Round(100000, {Self(3), MakeNode("a", 0), MakeNode("b", 0)}, Jobs(3));
  ASSERT_EQ(decisions.size(), 2u);
  EXPECT_NE(decisions[0].job, decisions[1].job);
  EXPECT_NE(decisions[0].target, decisions[1].target);
}

TEST(Balancer, SpreadsMovesOverEqualTargets) {
  // Nodes with the same picture must not all pick the same idle node.
  std::map<std::string, int> chosen;
  for (uint64_t seed = 0; seed < 100; ++seed) {
    Balancer balancer("self", Options{}, seed);
    auto decisions = balancer.Round(100000, {Self(4), MakeNode("a", 0), MakeNode("b", 0)}, Jobs(4));
    ASSERT_EQ(decisions.size(), 1u);
    ++chosen[decisions[0].target];
  }
  EXPECT_GE(chosen["a"], 25);
  EXPECT_GE(chosen["b"], 25);
}

TEST(Balancer, YoungJobsDoNotPayForTheMove) {
  Balancer balancer("self", Options{}, 1);
  auto jobs = Jobs(4);
  for (auto& job : jobs) job.run_ms = 1000;  // 750 ms to gain, 2 x 800 ms to pay
  EXPECT_TRUE(balancer.Round(100000, {Self(4), MakeNode("idle", 0)}, jobs).empty());
  for (auto& job : jobs) job.run_ms = 3000;
  EXPECT_EQ(balancer.Round(100000, {Self(4), MakeNode("idle", 0)}, jobs).size(), 1u);
}

TEST(Balancer, LargeMemoryRaisesTheCost) {
  Balancer balancer("self", Options{}, 1);
  auto jobs = Jobs(4);
  for (auto& job : jobs) job.memory_mb = 6000;  // 30.3 s to move
  EXPECT_TRUE(balancer.Round(100000, {Self(4), MakeNode("idle", 0, 1, 16000)}, jobs).empty());
}

TEST(Balancer, PrefersTheJobWithTheBestGainForItsCost) {
  Balancer balancer("self", Options{}, 1);
  auto jobs = Jobs(4);
  jobs[0].memory_mb = 2000;
  jobs[1].run_ms = 30000;
  jobs[2].run_ms = 120000;  // longest run, small memory
  jobs[3].memory_mb = 1000;
  auto decisions = balancer.Round(100000, {Self(4), MakeNode("idle", 0)}, jobs);
  ASSERT_EQ(decisions.size(), 1u);
  EXPECT_EQ(decisions[0].job, 3u);
}

TEST(Balancer, JustArrivedJobsStay) {
  Balancer balancer("self", Options{}, 1);
  auto jobs = Jobs(4);
  for (auto& job : jobs) job.resident_ms = 1000;
  EXPECT_TRUE(balancer.Round(100000, {Self(4), MakeNode("idle", 0)}, jobs).empty());
}

TEST(Balancer, MostlyWaitingJobsAreNotMovedForLoad) {
  Balancer balancer("self", Options{}, 1);
  auto jobs = Jobs(4);
  for (auto& job : jobs) job.demand = 0.2;
  EXPECT_TRUE(balancer.Round(100000, {Self(4), MakeNode("idle", 0)}, jobs).empty());
}

TEST(Balancer, RespectsMinimumFreeMemory) {
  Balancer balancer("self", Options{}, 1);
  auto jobs = Jobs(4);
  for (auto& job : jobs) job.min_free_mb = 8000;  // mosrun -m 8000
  EXPECT_TRUE(balancer.Round(100000, {Self(4), MakeNode("idle", 0, 1, 4000)}, jobs).empty());
  auto decisions = balancer.Round(
      100000, {Self(4), MakeNode("idle", 0, 1, 4000), MakeNode("roomy", 1, 2, 16000)}, jobs);
  ASSERT_EQ(decisions.size(), 1u);
  EXPECT_EQ(decisions[0].target, "roomy");
}

TEST(Balancer, LeavesBlockedNodesAloneExceptForTheJobsHome) {
  Balancer balancer("self", Options{}, 1);
  Node blocked = MakeNode("blocked", 0);
  blocked.accepts_guests = false;
  EXPECT_TRUE(balancer.Round(100000, {Self(4), blocked}, Jobs(4)).empty());
  std::vector<Job> guests{MakeJob(1, "blocked"), MakeJob(2, "blocked")};
  auto decisions = balancer.Round(100000, {Self(4), blocked}, guests);
  ASSERT_EQ(decisions.size(), 1u);
  EXPECT_EQ(decisions[0].target, "blocked");
}

Node PartnerNode(std::string name, double load, std::string cluster = "b") {
  Node node = MakeNode(std::move(name), load);
  node.cluster = std::move(cluster);
  return node;
}

TEST(Balancer, OnlyJobsAllowedToLeaveGoToAPartnersNodes) {
  Balancer balancer("self", Options{}, 1);
  std::vector<Node> nodes{Self(4), PartnerNode("b1", 0)};
  EXPECT_TRUE(balancer.Round(100000, nodes, Jobs(4)).empty());  // stay in the cluster
  auto jobs = Jobs(4);
  jobs[2].partners = true;  // mosrun -G
  auto decisions = balancer.Round(100000, nodes, jobs);
  ASSERT_EQ(decisions.size(), 1u);
  EXPECT_EQ(decisions[0].job, 3u);
  EXPECT_EQ(decisions[0].target, "b1");
  // Not to a partner that takes none of this cluster's jobs.
  nodes[1].accepts_guests = false;
  EXPECT_TRUE(balancer.Round(100000, nodes, jobs).empty());
}

TEST(Balancer, APartnersNodeOnlyWhenThisClusterIsBusy) {
  Balancer balancer("self", Options{}, 7);
  auto jobs = Jobs(4);
  for (auto& job : jobs) job.partners = true;
  // An idle partner node and an idle node of this cluster: always this cluster's.
  for (int round = 0; round < 20; ++round) {
    auto decisions = balancer.Round(100000 + round, {Self(4), PartnerNode("b1", 0),
                                                     MakeNode("a2", 0)}, jobs);
    ASSERT_EQ(decisions.size(), 1u);
    EXPECT_EQ(decisions[0].target, "a2");
  }
  // This cluster's other node is as busy: the partner's.
  auto decisions = balancer.Round(100000, {Self(4), PartnerNode("b1", 0), MakeNode("a2", 4)},
                                  jobs);
  ASSERT_EQ(decisions.size(), 1u);
  EXPECT_EQ(decisions[0].target, "b1");
}

TEST(Balancer, APartnersGuestMovesWithinThisClusterOrBackToItsHome) {
  Balancer balancer("self", Options{}, 1);
  Job guest = MakeJob(5, "b1");
  guest.home_cluster = "b";
  Node other = PartnerNode("c1", 0, "c");
  EXPECT_TRUE(balancer.Round(100000, {Self(3), other}, {guest, guest}).empty());
  // Its own cluster's other nodes are not its home: only the home takes it back.
  Node sibling = PartnerNode("b2", 0);
  EXPECT_TRUE(balancer.Round(100000, {Self(3), other, sibling}, {guest}).empty());
  Node home = PartnerNode("b1", 0);
  home.accepts_guests = false;  // b takes no jobs of this cluster: still its own
  auto decisions = balancer.Round(100000, {Self(3), other, sibling, home}, {guest});
  ASSERT_EQ(decisions.size(), 1u);
  EXPECT_EQ(decisions[0].target, "b1");
  decisions = balancer.Round(100000, {Self(3), other, home, MakeNode("a2", 0)}, {guest});
  ASSERT_EQ(decisions.size(), 1u);
  EXPECT_EQ(decisions[0].target, "a2");
}

// A partner's guest here, of home `home` in cluster "b", with precedence `priority`.
Job PartnerGuest(uint64_t id, int priority, std::string home = "b1") {
  Job job = MakeJob(id, std::move(home));
  job.home_cluster = "b";
  job.priority = priority;
  job.resident_ms = 0;  // forced departures do not wait
  return job;
}

TEST(Balancer, LocalWorkForcesAPartnersGuestOutToANodeWithRoom) {
  Balancer balancer("self", Options{}, 1);
  Job guest = PartnerGuest(1, 100);
  // One core: the guest and one process of this node's own (not a job) want it.
  auto decisions = balancer.Round(100000, {Self(2), MakeNode("a2", 0), PartnerNode("b1", 1)},
                                  {guest});
  ASSERT_EQ(decisions.size(), 1u);
  EXPECT_EQ(decisions[0].target, "a2");  // this cluster's node with room first
  EXPECT_EQ(decisions[0].reason, "priority");
  // No room in this cluster: home, busy or not.
  decisions = balancer.Round(100000, {Self(2), MakeNode("a2", 1), PartnerNode("b1", 3)}, {guest});
  ASSERT_EQ(decisions.size(), 1u);
  EXPECT_EQ(decisions[0].target, "b1");
  // The guest alone, or with room to spare: it stays.
  EXPECT_TRUE(balancer.Round(100000, {Self(1), PartnerNode("b1", 0)}, {guest}).empty());
  Node wide = Self(2);
  wide.cores = 2;
  EXPECT_TRUE(balancer.Round(100000, {wide, PartnerNode("b1", 0)}, {guest}).empty());
  // Even a locked guest (mosrun -L) leaves; its home gone from the picture, it stays.
  guest.locked = true;
  EXPECT_EQ(balancer.Round(100000, {Self(2), PartnerNode("b1", 3)}, {guest}).size(), 1u);
  EXPECT_TRUE(balancer.Round(100000, {Self(2), MakeNode("a2", 2)}, {guest}).empty());
}

TEST(Balancer, TheLowestPrecedenceGuestLeavesFirst) {
  Balancer balancer("self", Options{}, 1);
  Job better = PartnerGuest(1, 50);
  Job worse = PartnerGuest(2, 200, "b2");
  std::vector<Node> nodes{Self(2), PartnerNode("b1", 0), PartnerNode("b2", 0)};
  auto decisions = balancer.Round(100000, nodes, {better, worse});
  ASSERT_EQ(decisions.size(), 1u);
  EXPECT_EQ(decisions[0].job, 2u);
  // Guests of one precedence, with nothing better waiting: the load rule's business.
  Job same = PartnerGuest(3, 200, "b2");
  for (const auto& d : balancer.Round(100000, nodes, {worse, same})) {
    EXPECT_NE(d.reason, "priority");
  }
  // This cluster's jobs are of higher precedence than any guest.
  Job own = MakeJob(4);
  own.resident_ms = 0;
  decisions = balancer.Round(100000, nodes, {own, worse});
  ASSERT_EQ(decisions.size(), 1u);
  EXPECT_EQ(decisions[0].job, 2u);
}

TEST(JobPrecedence, RanksGuestsByGroupLengthAndPartner) {
  PrecedenceRules open;  // a node of no group, for jobs of any length
  EXPECT_EQ(JobPrecedence(open, true, 0, {"chem"}, 3600000), 0);
  EXPECT_EQ(JobPrecedence(open, true, 100, {}, 0), 100);  // a partner's guest
  PrecedenceRules physics{"physics", 50, 0, 200};
  EXPECT_EQ(JobPrecedence(physics, false, 0, {"chem"}, 0), 0);  // the node's home jobs
  EXPECT_EQ(JobPrecedence(physics, true, 0, {"users", "physics"}, 0), 0);
  EXPECT_EQ(JobPrecedence(physics, true, 0, {"chem"}, 0), 50);
  EXPECT_EQ(JobPrecedence(physics, true, 100, {"chem"}, 0), 100);  // the highest applies
  PrecedenceRules short_jobs{"", 50, 600000, 200};
  EXPECT_EQ(JobPrecedence(short_jobs, true, 0, {}, 599999), 0);
  EXPECT_EQ(JobPrecedence(short_jobs, true, 0, {}, 600000), 200);
  EXPECT_EQ(JobPrecedence(short_jobs, false, 0, {}, 600000), 0);
  EXPECT_EQ(JobPrecedence(short_jobs, true, 300, {}, 600000), 300);
}

Node GroupNode(std::string name, double load, std::string group) {
  Node node = MakeNode(std::move(name), load);
  node.group = std::move(group);
  return node;
}

TEST(Balancer, AGroupsJobsGoFirstToTheGroupsNodes) {
  Options options;
  options.max_moves_per_round = 1;
  auto jobs = Jobs(4);
  for (auto& job : jobs) job.groups = {"physics"};
  // The chemists' node is idler, but the physicists' node has room too.
  std::vector<Node> nodes{Self(4), GroupNode("chem1", 0, "chem"), GroupNode("phys1", 1, "physics")};
  for (uint64_t seed = 1; seed <= 20; ++seed) {
    Balancer balancer("self", options, seed);
    auto decisions = balancer.Round(100000, nodes, jobs);
    ASSERT_EQ(decisions.size(), 1u);
    EXPECT_EQ(decisions[0].target, "phys1");
  }
  // With no room on their own, they take another group's idle node.
  nodes[2].load = 4;
  Balancer balancer("self", options, 1);
  auto decisions = balancer.Round(100000, nodes, jobs);
  ASSERT_EQ(decisions.size(), 1u);
  EXPECT_EQ(decisions[0].target, "chem1");
}

TEST(Balancer, ALongJobKeepsOffNodesForShortJobsWhileOthersHaveRoom) {
  Node short_node = MakeNode("short1", 0);
  short_node.long_job_after_ms = 600000;
  auto jobs = Jobs(4);  // each has run a minute: a short job there
  Balancer young("self", Options{}, 1);
  auto decisions = young.Round(100000, {Self(4), short_node, MakeNode("any1", 3)}, jobs);
  ASSERT_EQ(decisions.size(), 1u);
  EXPECT_EQ(decisions[0].target, "short1");
  // Run for an hour, they take a node with less room rather than the one for short jobs.
  for (auto& job : jobs) job.run_ms = 3600000;
  for (uint64_t seed = 1; seed <= 20; ++seed) {
    Balancer old("self", Options{}, seed);
    decisions = old.Round(100000, {Self(4), short_node, MakeNode("any1", 1)}, jobs);
    ASSERT_EQ(decisions.size(), 1u);
    EXPECT_EQ(decisions[0].target, "any1");
  }
}

TEST(Balancer, AGroupsWorkForcesAnotherGroupsGuestOut) {
  // This is a physics node: a chemist's guest (50) and a physicist's (0), and one more
  // runnable process than the core holds.
  Balancer balancer("self", Options{}, 1);
  Job chemist = MakeJob(1, "home1");
  chemist.groups = {"chem"};
  chemist.priority = 50;
  chemist.resident_ms = 0;  // forced out whatever its residency
  Job physicist = MakeJob(2, "home1");
  physicist.groups = {"physics"};
  physicist.resident_ms = 0;
  std::vector<Node> nodes{Self(2), GroupNode("chem1", 0, "chem"), MakeNode("home1", 1)};
  auto decisions = balancer.Round(100000, nodes, {chemist, physicist});
  ASSERT_EQ(decisions.size(), 1u);
  EXPECT_EQ(decisions[0].job, 1u);
  EXPECT_EQ(decisions[0].target, "chem1");  // a node of its own group, with room
  EXPECT_EQ(decisions[0].reason, "priority");
  // Alone, the chemist's guest stays: nothing of higher precedence waits.
  EXPECT_TRUE(balancer.Round(100000, {Self(1), GroupNode("chem1", 0, "chem")}, {chemist}).empty());
  // A locked guest (mosrun -L) that ranks low is forced out all the same.
  chemist.locked = true;
  decisions = balancer.Round(100000, nodes, {chemist, physicist});
  ASSERT_EQ(decisions.size(), 1u);
  EXPECT_EQ(decisions[0].job, 1u);
}

TEST(Balancer, LockedJobsOnlyLeaveWhenForced) {
  Balancer balancer("self", Options{}, 1);
  auto jobs = Jobs(4);
  for (auto& job : jobs) job.locked = true;
  EXPECT_TRUE(balancer.Round(100000, {Self(4), MakeNode("idle", 0)}, jobs).empty());
}

TEST(Balancer, AvoidsATargetThatRefused) {
  Balancer balancer("self", Options{}, 1);
  std::vector<Node> nodes{Self(4), MakeNode("idle", 0)};
  auto decisions = balancer.Round(100000, nodes, Jobs(4));
  ASSERT_EQ(decisions.size(), 1u);
  balancer.Refused(decisions[0], 100000);
  EXPECT_TRUE(balancer.Round(105000, nodes, Jobs(4)).empty());
  EXPECT_EQ(balancer.Round(110000, nodes, Jobs(4)).size(), 1u);
}

TEST(Balancer, UshersAJobToANodeWithRoom) {
  Balancer balancer("self", Options{}, 1);
  auto jobs = Jobs(3);
  jobs[0].memory_mb = 200;
  jobs[1].memory_mb = 1000;
  jobs[2].memory_mb = 3000;
  for (auto& job : jobs) job.resident_ms = 0;  // ushering does not wait
  // Short of 156 MB: the 200 MB job is the smallest that covers it. "idle" has no room
  // for it and the reserve; "busy" has.
  std::vector<Node> nodes{Self(1, 100), MakeNode("idle", 0, 1, 300), MakeNode("busy", 2, 1, 4000)};
  auto decisions = balancer.Round(100000, nodes, jobs);
  ASSERT_EQ(decisions.size(), 1u);
  EXPECT_EQ(decisions[0].job, 1u);
  EXPECT_EQ(decisions[0].target, "busy");
  EXPECT_EQ(decisions[0].reason, "memory");
  // No job covers a shortage of 256 MB when none is larger than 50: the largest goes.
  for (auto& job : jobs) job.memory_mb = 10 * static_cast<uint32_t>(job.id);
  decisions = balancer.Round(100000, {Self(1, 0), MakeNode("b", 0)}, jobs);
  ASSERT_EQ(decisions.size(), 1u);
  EXPECT_EQ(decisions[0].job, 3u);
  // Nowhere has room: nothing moves.
  EXPECT_TRUE(balancer.Round(100000, {Self(1, 0), MakeNode("b", 0, 1, 100)}, jobs).empty());
}

TEST(Balancer, AGuestTalkingToItsHomeGoesHome) {
  Balancer balancer("self", Options{}, 1);
  Job guest = MakeJob(7, "home");
  guest.home_io_bytes_per_s = 4 << 20;
  guest.cpu_use = 0.1;
  guest.run_ms = 2000;  // too young to move for load
  guest.resident_ms = 5000;
  std::vector<Node> nodes{Self(1), MakeNode("home", 3)};
  auto decisions = balancer.Round(100000, nodes, {guest});
  ASSERT_EQ(decisions.size(), 1u);
  EXPECT_EQ(decisions[0].target, "home");
  EXPECT_EQ(decisions[0].reason, "home I/O");
  // Not while it computes, nor when its home is not in the picture.
  guest.cpu_use = 0.9;
  EXPECT_TRUE(balancer.Round(100000, nodes, {guest}).empty());
  guest.cpu_use = 0.1;
  EXPECT_TRUE(balancer.Round(100000, {Self(1), MakeNode("other", 0)}, {guest}).empty());
}

TEST(Balancer, OwnMovesCountUntilTheirEffectShowsAndThenFade) {
  Balancer balancer("self", Options{}, 1);
  std::vector<Node> nodes{Self(2), MakeNode("b", 0)};
  auto decisions = balancer.Round(100000, nodes, Jobs(2));
  ASSERT_EQ(decisions.size(), 1u);
  balancer.Moved(decisions[0], 1.0, 100000);
  // The picture still shows the old loads: with the move counted the loads are 1 and 1.
  nodes[1].age_ms = 3000;
  EXPECT_TRUE(balancer.Round(101000, nodes, Jobs(2)).empty());
  // A minute later the adjustment has faded: the same picture means a move again.
  nodes[1].age_ms = 1000;
  EXPECT_EQ(balancer.Round(160000, nodes, Jobs(2)).size(), 1u);
}

TEST(Balancer, ArrivalsCountHereAtOnce) {
  Balancer balancer("self", Options{}, 1);
  std::vector<Node> nodes{Self(1), MakeNode("idle", 0)};
  EXPECT_TRUE(balancer.Round(100000, nodes, Jobs(1)).empty());
  // The published load (1) lags: two jobs just arrived, so three run here and the old
  // one should go.
  balancer.Arrived(1.0, 100000);
  balancer.Arrived(1.0, 100000);
  EXPECT_EQ(balancer.Round(100000, nodes, Jobs(1)).size(), 1u);
}

TEST(Balancer, UshersOnceUntilTheMoveShowsInFreeMemory) {
  Balancer balancer("self", Options{}, 1);
  auto jobs = Jobs(2);
  for (auto& job : jobs) {
    job.memory_mb = 300;
    job.resident_ms = 0;
  }
  std::vector<Node> nodes{Self(0, 100), MakeNode("b", 0, 1, 700)};
  auto decisions = balancer.Round(100000, nodes, jobs);
  ASSERT_EQ(decisions.size(), 1u);
  EXPECT_EQ(decisions[0].memory_mb, 300u);
  balancer.Moved(decisions[0], 0.0, 100000);
  jobs.erase(jobs.begin() + (decisions[0].job == 1 ? 0 : 1));
  // The published memory still predates the move: with it, this node has 400 MB free
  // and "b" has no room for another 300 MB and the reserve.
  EXPECT_TRUE(balancer.Round(101000, nodes, jobs).empty());
}

TEST(Balancer, AMovesRiseCountsUntilTwoSamplesShowIt) {
  Balancer balancer("self", Options{}, 1);
  std::vector<Node> nodes{Self(4), MakeNode("b", 0)};
  auto decisions = balancer.Round(100000, nodes, Jobs(4));
  ASSERT_EQ(decisions.size(), 1u);
  balancer.Moved(decisions[0], 1.0, 100000);
  nodes[0].runnable_now = 3;
  nodes[1].age_ms = 0;  // measured after the move, but only one sample since: still 0
  auto second = balancer.Round(101000, nodes, Jobs(3));  // 3 against 0 + 1
  ASSERT_EQ(second.size(), 1u);
  balancer.Moved(second[0], 1.0, 101000);
  nodes[0].runnable_now = 2;
  EXPECT_TRUE(balancer.Round(101500, nodes, Jobs(2)).empty());  // 2 against 0 + 2, not 0
}

TEST(Balancer, PlacementsCountAtTheirNode) {
  Balancer balancer("self", Options{}, 1);
  std::vector<Node> nodes{Self(3), MakeNode("idle", 0)};
  balancer.Placed("idle", 1.0, 100000);
  balancer.Placed("idle", 1.0, 100000);
  // Three here and, counting the two new jobs, two there: a third of a core either way.
  EXPECT_TRUE(balancer.Round(100000, nodes, Jobs(3)).empty());
}

TEST(Balancer, ThisNodesCountNowOverridesItsLaggingAverage) {
  Balancer balancer("self", Options{}, 1);
  std::vector<Node> nodes{Self(4), MakeNode("b", 0)};
  auto decisions = balancer.Round(100000, nodes, Jobs(4));
  ASSERT_EQ(decisions.size(), 1u);
  balancer.Moved(decisions[0], 1.0, 100000);
  // Three seconds on, the average here (still rising when the jobs started) says 2.2 and
  // the move's adjustment would take that lower still; the count now says 3, and "b"
  // now publishes the job it took: 3 against 1 is worth one more move.
  nodes[0].load = 2.2;
  nodes[0].runnable_now = 3;
  nodes[1].load = 1;
  nodes[1].age_ms = 500;
  auto next = balancer.Round(103000, nodes, Jobs(3));
  ASSERT_EQ(next.size(), 1u);
  EXPECT_EQ(next[0].target, "b");
  // Without the count now, the lagging average holds the move back.
  Balancer lagging("self", Options{}, 1);
  lagging.Moved(decisions[0], 1.0, 100000);
  nodes[0].runnable_now = -1;
  EXPECT_TRUE(lagging.Round(103000, nodes, Jobs(3)).empty());
}

}  // namespace
}  // namespace homeward::balance
