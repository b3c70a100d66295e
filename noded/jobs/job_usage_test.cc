#include "job_usage.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <atomic>
#include <thread>

namespace homeward {
namespace {

TEST(ParseProcessStat, ReadsStateAndTimesPastAnOddCommand) {
  auto stat = ParseProcessStat(
      "42 (a (b) c) R 1 42 42 0 -1 4194304 100 0 0 0 250 50 7 3 20 0 1 0 100 1000 10");
  ASSERT_TRUE(stat);
  EXPECT_EQ(stat->state, 'R');
  EXPECT_EQ(stat->cpu_ticks, 300u);
  EXPECT_EQ(stat->child_ticks, 10u);
}

TEST(ParseProcessStat, RefusesTruncatedText) {
  EXPECT_FALSE(ParseProcessStat(""));
  EXPECT_FALSE(ParseProcessStat("42 (x) S 1 2"));
}

TEST(ParseIoBytes, AddsReadAndWrittenCharacters) {
  EXPECT_EQ(ParseIoBytes("rchar: 1000\nwchar: 24\nsyscr: 5\nsyscw: 2\nread_bytes: 4096\n"), 1024u);
  EXPECT_EQ(ParseIoBytes(""), 0u);
}

TEST(ParseResidentPages, ReadsTheSecondField) {
  EXPECT_EQ(ParseResidentPages("5000 1200 300 10 0 900 0\n"), 1200u);
}

TEST(SampleProcesses, SeesThisProcessRunAndItsMemory) {
  std::atomic<bool> stop{false};
  std::thread spinner([&] {
    while (!stop) {
    }
  });
  UsageSample sample;
  for (int i = 0; i < 50 && sample.runnable == 0; ++i) sample = SampleProcesses({::getpid()});
  stop = true;
  spinner.join();
  EXPECT_GE(sample.runnable, 1);
  EXPECT_GT(sample.rss_bytes, 0u);
  EXPECT_TRUE(SampleProcesses({}).runnable == 0);
}

TEST(UsageMeter, SmoothsRatesTowardsWhatIsMeasured) {
  UsageMeter meter(1000);
  meter.Add({.runnable = 1, .cpu_ms = 0, .rss_bytes = 64u << 20, .io_bytes = 0}, 0);
  EXPECT_EQ(meter.memory_mb(), 64u);
  EXPECT_DOUBLE_EQ(meter.demand(), 1.0);
  for (int64_t t = 1; t <= 10; ++t) {
    meter.Add({.runnable = 1,
               .cpu_ms = static_cast<uint64_t>(t) * 1000,
               .rss_bytes = 64u << 20,
               .io_bytes = static_cast<uint64_t>(t) << 20},
              t * 1000);
  }
  EXPECT_NEAR(meter.cpu_use(), 1.0, 0.01);
  EXPECT_NEAR(meter.io_bytes_per_s(), 1 << 20, (1 << 20) * 0.01);
  // A process that ends takes its counters with it: no negative use.
  meter.Add({.runnable = 0, .cpu_ms = 0, .rss_bytes = 0, .io_bytes = 0}, 11000);
  EXPECT_GE(meter.cpu_use(), 0.0);
  EXPECT_LT(meter.demand(), 1.0);
}

}  // namespace
}  // namespace homeward
