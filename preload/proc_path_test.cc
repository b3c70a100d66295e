// /proc/<home id> paths name the job's processes by their inner pids; nothing else changes.
#include "proc_path.h"

#include <gtest/gtest.h>

#include <string>

namespace homeward::preload {
namespace {

constexpr PidMap kMap{.home_pid = 31337, .home_ppid = 31000, .base = 5 * kPidSpan};

std::string T(const char* path) {
  char out[kProcPathMax];
  return TranslateProcPath(kMap, path, out);
}

TEST(ProcPath, HomeIdsBecomeInnerPids) {
  EXPECT_EQ(T("/proc/31337/status"), "/proc/2/status");
  EXPECT_EQ(T("/proc/31337"), "/proc/2");
  EXPECT_EQ(T("/proc/31000/cmdline"), "/proc/1/cmdline");
  EXPECT_EQ(T("/proc/20971537/task/20971540/stat"), "/proc/17/task/20/stat");
}

TEST(ProcPath, TidsUnderTaskBecomeInner) {
  EXPECT_EQ(T("/proc/self/task/20971540/status"), "/proc/self/task/20/status");
  EXPECT_EQ(T("/proc/self/task/31337"), "/proc/self/task/2");
  EXPECT_EQ(T("/proc/31337/task/20971540"), "/proc/2/task/20");
  EXPECT_EQ(T("/proc/7/task/20971540/comm"), "/proc/7/task/20/comm");
  EXPECT_EQ(T("/proc/self/task/7/stat"), "/proc/self/task/7/stat");
  EXPECT_EQ(T("/proc/self/task/"), "/proc/self/task/");
  EXPECT_EQ(T("/proc/self/task/20971540x"), "/proc/self/task/20971540x");
  EXPECT_EQ(T("/proc/selfish/task/20971540"), "/proc/selfish/task/20971540");
  char out[kProcPathMax];
  // The caller's own pid becomes "self".
  EXPECT_STREQ(TranslateProcPath(kMap, "/proc/20971540/task/20971541", out, 20),
               "/proc/self/task/21");
}

TEST(ProcPath, OtherPathsAreUntouched) {
  EXPECT_EQ(T("/proc/self/status"), "/proc/self/status");
  EXPECT_EQ(T("/proc/7/status"), "/proc/7/status");
  EXPECT_EQ(T("/proc/31337x"), "/proc/31337x");
  EXPECT_EQ(T("/proc/"), "/proc/");
  EXPECT_EQ(T("/proc"), "/proc");
  EXPECT_EQ(T("/data/31337"), "/data/31337");
  EXPECT_EQ(T("proc/31337"), "proc/31337");
  EXPECT_EQ(T("/proc/99999999999999999999"), "/proc/99999999999999999999");
  char out[kProcPathMax];
  EXPECT_EQ(TranslateProcPath(kMap, nullptr, out), nullptr);
}

}  // namespace
}  // namespace homeward::preload
