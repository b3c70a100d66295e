// Tests of the /proc parsers and the load average.
#include "node_metrics.h"

#include <gtest/gtest.h>

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

TEST(NodeMetrics, ParsesProcsRunning) {
  EXPECT_EQ(ParseProcsRunning("cpu 1 2 3\nprocs_running 3\nprocs_blocked 0\n"), 3);
  EXPECT_EQ(ParseProcsRunning("cpu 1 2 3\n"), std::nullopt);
}

TEST(NodeMetrics, LoadAverageFollowsWithItsTimeConstant) {
  LoadAverage load(1000);
  load.Sample(0, 0);
  EXPECT_DOUBLE_EQ(load.value(), 0);
  load.Sample(4, 1000);  // one time constant: 1 - 1/e of the way
  EXPECT_NEAR(load.value(), 4 * (1 - 0.36788), 1e-3);
  for (int i = 0; i < 20; ++i) load.Sample(4, 1000);
  EXPECT_NEAR(load.value(), 4, 1e-3);
}

TEST(NodeMetrics, MeasuresThisMachine) {
  NodeMetrics metrics;
  EXPECT_GE(metrics.cores(), 1);
  EXPECT_GT(metrics.speed(), 0);
  EXPECT_GT(metrics.memory().mem_total_mb, 0u);
}

}  // namespace
}  // namespace homeward
