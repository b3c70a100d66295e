// The pid mapping: ids round-trip, the job's two known pids map to mosrun and its
// parent, and values that are not the job's home ids pass as inner pids.
#include "pid_map.h"

#include <gtest/gtest.h>

namespace homeward::preload {
namespace {

constexpr PidMap kMap{.home_pid = 31337, .home_ppid = 31000, .base = 5 * kPidSpan};

TEST(PidMap, ProgramAndInitAreMosrunAndItsParent) {
  EXPECT_EQ(kMap.ToHome(2), 31337);
  EXPECT_EQ(kMap.ToHome(1), 31000);
  EXPECT_EQ(kMap.ToInner(31337), 2);
  EXPECT_EQ(kMap.ToInner(31000), 1);
}

TEST(PidMap, OtherPidsGoAboveAnyRealPid) {
  EXPECT_EQ(kMap.ToHome(3), 5 * kPidSpan + 3);
  EXPECT_EQ(kMap.ToHome(kPidSpan - 1), 6 * kPidSpan - 1);
  for (long p = 1; p < 5000; ++p) EXPECT_EQ(kMap.ToInner(kMap.ToHome(p)), p) << p;
}

TEST(PidMap, NonPositiveValuesPass) {
  EXPECT_EQ(kMap.ToHome(0), 0);
  EXPECT_EQ(kMap.ToHome(-1), -1);
  EXPECT_EQ(kMap.ToInner(0), 0);
  EXPECT_EQ(kMap.ToInner(-3), -3);
}

TEST(PidMap, ForeignValuesAreTakenAsInner) {
  EXPECT_EQ(kMap.ToInner(7), 7);
  EXPECT_TRUE(kMap.IsInnerForm(7));
  EXPECT_FALSE(kMap.IsInnerForm(31337));
  EXPECT_FALSE(kMap.IsInnerForm(5 * kPidSpan + 7));
  EXPECT_FALSE(kMap.IsInnerForm(-1));
  // Another job's block is not this job's: it stays as is (and names no process here).
  EXPECT_EQ(kMap.ToInner(6 * kPidSpan + 7), 6 * kPidSpan + 7);
}

TEST(PidMap, KillTargetsKeepTheirMeaning) {
  EXPECT_EQ(kMap.TargetToInner(0), 0);
  EXPECT_EQ(kMap.TargetToInner(-1), -1);
  EXPECT_EQ(kMap.TargetToInner(31337), 2);
  EXPECT_EQ(kMap.TargetToInner(-31337), -2);  // The program's process group.
  EXPECT_EQ(kMap.TargetToInner(-(5 * kPidSpan + 9)), -9);
}

TEST(PidMap, ParsesTheEnvironment) {
  PidMap map;
  ASSERT_TRUE(MakePidMap("31337", "31000", "20971520", &map));
  EXPECT_EQ(map.home_pid, 31337);
  EXPECT_EQ(map.home_ppid, 31000);
  EXPECT_EQ(map.base, 20971520);
  EXPECT_FALSE(MakePidMap("31337", "31000", "12345", &map));  // Not a multiple of 2^22.
  EXPECT_FALSE(MakePidMap("31337", "31000", "0", &map));
  EXPECT_FALSE(MakePidMap("x", "31000", "20971520", &map));
  EXPECT_FALSE(MakePidMap(nullptr, "31000", "20971520", &map));
  EXPECT_FALSE(MakePidMap("", "31000", "20971520", &map));
  EXPECT_FALSE(MakePidMap("31337", "-4", "20971520", &map));
  EXPECT_FALSE(MakePidMap("99999999999999999999999", "1", "20971520", &map));
}

}  // namespace
}  // namespace homeward::preload
