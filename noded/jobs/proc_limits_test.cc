#include "proc_limits.h"

#include <gtest/gtest.h>
#include <sys/resource.h>

#include <map>

#include "fd.h"

namespace homeward {
namespace {

// The file as Linux 6.x writes it, for a process that lowered a few of its limits.
constexpr std::string_view kSample =
    "Limit                     Soft Limit           Hard Limit           Units     \n"
    "Max cpu time              unlimited            unlimited            seconds   \n"
    "Max file size             unlimited            unlimited            bytes     \n"
    "Max data size             unlimited            unlimited            bytes     \n"
    "Max stack size            8388608              unlimited            bytes     \n"
    "Max core file size        0                    unlimited            bytes     \n"
    "Max resident set          unlimited            unlimited            bytes     \n"
    "Max processes             63439                63439                processes \n"
    "Max open files            1000                 2000                 files     \n"
    "Max locked memory         8388608              8388608              bytes     \n"
    "Max address space         unlimited            unlimited            bytes     \n"
    "Max file locks            unlimited            unlimited            locks     \n"
    "Max pending signals       63439                63439                signals   \n"
    "Max msgqueue size         819200               819200               bytes     \n"
    "Max nice priority         0                    0                    \n"
    "Max realtime priority     0                    0                    \n"
    "Max realtime timeout      unlimited            unlimited            us        \n";

std::map<int, ProcLimit> ByResource(const std::vector<ProcLimit>& limits) {
  std::map<int, ProcLimit> map;
  for (const ProcLimit& limit : limits) map.emplace(limit.resource, limit);
  return map;
}

TEST(ParseProcLimits, ReadsEveryLimitOfTheKernelsFormat) {
  std::vector<ProcLimit> limits = ParseProcLimits(kSample);
  ASSERT_EQ(limits.size(), 16u);
  std::map<int, ProcLimit> map = ByResource(limits);
  EXPECT_EQ(map.at(RLIMIT_CPU).soft, RLIM_INFINITY);
  EXPECT_EQ(map.at(RLIMIT_STACK).soft, 8388608u);
  EXPECT_EQ(map.at(RLIMIT_STACK).hard, RLIM_INFINITY);
  EXPECT_EQ(map.at(RLIMIT_CORE).soft, 0u);
  EXPECT_EQ(map.at(RLIMIT_NOFILE).soft, 1000u);
  EXPECT_EQ(map.at(RLIMIT_NOFILE).hard, 2000u);
  EXPECT_EQ(map.at(RLIMIT_NICE).hard, 0u);
  EXPECT_EQ(map.at(RLIMIT_RTPRIO).soft, 0u);
  EXPECT_EQ(map.at(RLIMIT_RTTIME).hard, RLIM_INFINITY);
}

TEST(ParseProcLimits, LeavesOutUnknownAndBrokenLines) {
  std::vector<ProcLimit> limits = ParseProcLimits(
      "Limit                     Soft Limit           Hard Limit           Units\n"
      "Max open files            12x                  2000                 files\n"
      "Max stack size            100\n"
      "Max teleports             1                    2\n"
      "Max file sizes            1                    2                    bytes\n"
      "Max processes             10                   18446744073709551616 processes\n"
      "Max core file size        0                    5                    bytes");
  ASSERT_EQ(limits.size(), 1u);
  EXPECT_EQ(limits[0].resource, RLIMIT_CORE);
  EXPECT_EQ(limits[0].soft, 0u);
  EXPECT_EQ(limits[0].hard, 5u);
  EXPECT_TRUE(ParseProcLimits("").empty());
}

TEST(ParseProcLimits, AgreesWithGetrlimitForThisProcess) {
  rlimit lowered = {};
  ASSERT_EQ(getrlimit(RLIMIT_CORE, &lowered), 0);
  lowered.rlim_cur = 0;  // lowering is allowed without any capability
  ASSERT_EQ(setrlimit(RLIMIT_CORE, &lowered), 0);

  std::map<int, ProcLimit> map = ByResource(ParseProcLimits(ReadTextFile("/proc/self/limits")));
  ASSERT_EQ(map.size(), static_cast<size_t>(RLIM_NLIMITS));
  for (int resource = 0; resource < RLIM_NLIMITS; ++resource) {
    rlimit limit = {};
    ASSERT_EQ(getrlimit(static_cast<__rlimit_resource>(resource), &limit), 0);
    EXPECT_EQ(map.at(resource).soft, limit.rlim_cur) << "resource " << resource;
    EXPECT_EQ(map.at(resource).hard, limit.rlim_max) << "resource " << resource;
  }
}

}  // namespace
}  // namespace homeward
