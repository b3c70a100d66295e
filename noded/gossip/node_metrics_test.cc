// Tests of the /proc parsers and the load average.
#include "node_metrics.h"

#include <gtest/gtest.h>

#include <unistd.h>

#include <atomic>
#include <thread>

namespace homeward {
namespace {

TEST(NodeMetrics, ParsesMemInfo) {
  auto info = ParseMemInfo(
      "MemTotal:       24683520 kB\nMemFree:        24000000 kB\n"
      "MemAvailable:   20480000 kB\nSwapTotal:       2097152 kB\nSwapFree:        1048576 kB\n");
  EXPECT_EQ(info.mem_total_mb, 24105u);
  EXPECT_EQ(info.mem_free_mb, 20000u);
  EXPECT_EQ(info.swap_total_mb, 2048u);
  EXPECT_EQ(info.swap_free_mb, 1024u);
}

TEST(NodeMetrics, ParsesBootTime) {
  EXPECT_EQ(ParseBootTime("cpu  1 2 3\nintr 5\nctxt 9\nbtime 1796000000\nprocesses 7\n"),
            1796000000u);
  EXPECT_EQ(ParseBootTime("cpu  1 2 3\nctxt 9\n"), 0u);
  EXPECT_EQ(ParseBootTime("cpu  1 2 3\nbtime x\n"), 0u);
}

TEST(NodeMetrics, ParsesProcsRunning) {
  EXPECT_EQ(ParseProcsRunning("cpu 1 2 3\nprocs_running 3\nprocs_blocked 0\n"), 3);
  EXPECT_EQ(ParseProcsRunning("cpu 1 2 3\n"), std::nullopt);
}

// A real line of /proc/<pid>/task/<tid>/stat with the command name replaced: fields 3
// (state) and 39 (processor) are "R" and 5.
std::string TaskLine(const std::string& comm, const std::string& state = "R") {
  return "4242 (" + comm + ") " + state +
         " 1 4242 4242 0 -1 4194560 120 0 0 0 7 3 0 0 20 0 1 0 1234 10000000 200 "
         "18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 5 0 0 0 0 0 0 0 0 0 0 0 0 0\n";
}

TEST(NodeMetrics, ParsesTaskStat) {
  auto stat = ParseTaskStat(TaskLine("busy"));
  ASSERT_TRUE(stat);
  EXPECT_EQ(stat->state, 'R');
  EXPECT_EQ(stat->processor, 5);
  // Names with spaces and parentheses, even a ") S 1", do not shift the fields.
  for (std::string comm : {"a b", "x) S 1 2 (y", "((", ")", ""}) {
    auto odd = ParseTaskStat(TaskLine(comm, "S"));
    ASSERT_TRUE(odd) << comm;
    EXPECT_EQ(odd->state, 'S') << comm;
    EXPECT_EQ(odd->processor, 5) << comm;
  }
  EXPECT_FALSE(ParseTaskStat("4242 (cut) R 1 2 3"));
  EXPECT_FALSE(ParseTaskStat("no parenthesis at all"));
  EXPECT_FALSE(ParseTaskStat(""));
}

TEST(NodeMetrics, ParsesCpuLists) {
  auto set = ParseCpuList("0-2,5,7-8\n");
  ASSERT_TRUE(set);
  EXPECT_EQ(CPU_COUNT(&*set), 6);
  for (int cpu : {0, 1, 2, 5, 7, 8}) EXPECT_TRUE(CPU_ISSET(cpu, &*set)) << cpu;
  EXPECT_FALSE(CPU_ISSET(3, &*set));
  auto one = ParseCpuList("0");
  ASSERT_TRUE(one);
  EXPECT_EQ(CPU_COUNT(&*one), 1);
  EXPECT_FALSE(ParseCpuList(""));
  EXPECT_FALSE(ParseCpuList("3-1"));
  EXPECT_FALSE(ParseCpuList("1,,2"));
  EXPECT_FALSE(ParseCpuList("x"));
  EXPECT_FALSE(ParseCpuList("0-99999"));
}

TEST(NodeMetrics, CountsARunnableThreadOnItsCores) {
  std::atomic<bool> stop{false};
  std::thread busy([&] {
    while (!stop.load(std::memory_order_relaxed)) {
    }
  });
  cpu_set_t all;
  CPU_ZERO(&all);
  for (int cpu = 0; cpu < CPU_SETSIZE; ++cpu) CPU_SET(cpu, &all);
  cpu_set_t none;
  CPU_ZERO(&none);
  // The spinning thread is always runnable; this thread, the sampler, is left out.
  EXPECT_GE(CountRunnableTasks(all, gettid()), 1);
  EXPECT_EQ(CountRunnableTasks(none, gettid()), 0);
  stop = true;
  busy.join();
}

TEST(NodeMetrics, FindsTheMemoryCgroup) {
  auto v1 = ParseMemoryCgroup(
      "12:pids:/a\n4:memory:/homeward/cluster3/node1\n3:cpuset:/x\n0::/user.slice\n");
  ASSERT_TRUE(v1);
  EXPECT_EQ(v1->version, 1);
  EXPECT_EQ(v1->path, "/homeward/cluster3/node1");
  auto joint = ParseMemoryCgroup("5:cpu,memory,blkio:/a:b\n");
  ASSERT_TRUE(joint);
  EXPECT_EQ(joint->version, 1);
  EXPECT_EQ(joint->path, "/a:b");
  auto v2 = ParseMemoryCgroup("0::/system.slice/mosnoded.service\n");
  ASSERT_TRUE(v2);
  EXPECT_EQ(v2->version, 2);
  EXPECT_EQ(v2->path, "/system.slice/mosnoded.service");
  EXPECT_FALSE(ParseMemoryCgroup("3:memoryless:/x\n1:name=systemd:/\n"));
  EXPECT_FALSE(ParseMemoryCgroup(""));
}

TEST(NodeMetrics, ParsesMemoryLimits) {
  EXPECT_EQ(ParseMemoryLimit("536870912\n"), 536870912u);
  EXPECT_EQ(ParseMemoryLimit("max\n"), std::nullopt);
  EXPECT_EQ(ParseMemoryLimit("9223372036854771712\n"), std::nullopt);  // v1: none
  EXPECT_EQ(ParseMemoryLimit(""), std::nullopt);
  EXPECT_EQ(ParseMemoryLimit("12abc"), std::nullopt);
  const std::string v1 = "cache 100\ninactive_file 8192\ntotal_inactive_file 72630272\n";
  EXPECT_EQ(ParseMemoryStat(v1, "total_inactive_file"), 72630272u);
  EXPECT_EQ(ParseMemoryStat(v1, "inactive_file"), 8192u);
  EXPECT_EQ(ParseMemoryStat(v1, "active_file"), std::nullopt);
  EXPECT_EQ(ParseMemoryStat("anon 1\ninactive_file 4096", "inactive_file"), 4096u);
}

TEST(NodeMetrics, NarrowsMemoryToTheCgroup) {
  MemInfo host;
  host.mem_total_mb = 24000;
  host.mem_free_mb = 20000;
  host.swap_total_mb = 2048;
  host.swap_free_mb = 1024;
  constexpr uint64_t kMb = 1 << 20;
  // 512 MB limit, 200 MB charged of which 50 MB inactive cache: 362 MB left.
  auto info = LimitMemInfo(host, {512 * kMb, 200 * kMb, 50 * kMb});
  EXPECT_EQ(info.mem_total_mb, 512u);
  EXPECT_EQ(info.mem_free_mb, 362u);
  EXPECT_EQ(info.swap_total_mb, 2048u);
  EXPECT_EQ(info.swap_free_mb, 1024u);
  // Usage over the limit leaves nothing; a limit above the host changes nothing.
  EXPECT_EQ(LimitMemInfo(host, {512 * kMb, 600 * kMb, 0}).mem_free_mb, 0u);
  auto roomy = LimitMemInfo(host, {64000 * kMb, 1000 * kMb, 0});
  EXPECT_EQ(roomy.mem_total_mb, 24000u);
  EXPECT_EQ(roomy.mem_free_mb, 20000u);
  // A host short of memory bounds the cgroup's room.
  host.mem_free_mb = 100;
  EXPECT_EQ(LimitMemInfo(host, {512 * kMb, 0, 0}).mem_free_mb, 100u);
}

TEST(NodeMetrics, LoadAverageFollowsWithItsTimeConstant) {
  LoadAverage load(1000);
  load.Sample(0, 0);
  EXPECT_DOUBLE_EQ(load.value(), 0);
  load.Sample(4, 1000);  // one time constant: 1 - 1/e of the way
  EXPECT_NEAR(load.smoothed(), 4 * (1 - 0.36788), 1e-3);
  EXPECT_NEAR(load.value(), load.smoothed(), 1e-9);  // one sample is a burst, maybe
  load.Sample(4, 1000);
  EXPECT_DOUBLE_EQ(load.value(), 4);  // a rise that lasted a round shows in full
  for (int i = 0; i < 20; ++i) load.Sample(4, 1000);
  EXPECT_NEAR(load.value(), 4, 1e-3);
  load.Sample(0, 1000);  // a fall follows the average
  EXPECT_NEAR(load.value(), 4 * 0.36788, 1e-3);
}

TEST(NodeMetrics, PublishesTheAdministratorsSpeedAsItIs) {
  NodeMetrics metrics(2.5);
  metrics.Sample(1000);
  EXPECT_EQ(metrics.speed(), 2.5);
}

TEST(NodeMetrics, MeasuresSpeedInCpuTimeOrWallTime) {
  EXPECT_GT(MeasureCpuSpeed(1, SpeedClock::kThreadCpu), 0);
  EXPECT_GT(MeasureCpuSpeed(1, SpeedClock::kWall), 0);
}

TEST(NodeMetrics, MeasuresThisMachine) {
  NodeMetrics metrics;
  EXPECT_GE(metrics.cores(), 1);
  EXPECT_GT(metrics.speed(), 0);
  EXPECT_GT(metrics.memory().mem_total_mb, 0u);
  EXPECT_LE(metrics.memory().mem_free_mb, metrics.memory().mem_total_mb);
  auto runnable = NodeMetrics::RunnableNow();
  ASSERT_TRUE(runnable);
  EXPECT_GE(*runnable, 0);
}

}  // namespace
}  // namespace homeward
