// execve's environment: the job's variables come back whatever the program did to its
// own, and the program's other variables and preloads are kept.
#include "env_inject.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

namespace homeward::preload {
namespace {

const char* const kEntries[] = {"LD_PRELOAD=/lib/libmosix_preload.so", "HOMEWARD_HOME=node1",
                                "HOMEWARD_HOME_PID=42"};
constexpr int kCount = 3;
constexpr const char* kLibrary = "/lib/libmosix_preload.so";

std::vector<std::string> Inject(std::vector<const char*> env, bool null_envp = false) {
  env.push_back(nullptr);
  auto* envp = null_envp ? nullptr : const_cast<char* const*>(env.data());
  size_t size = InjectEnvSize(envp, kEntries, kCount);
  std::vector<char> buffer(size);
  EXPECT_EQ(InjectEnv(envp, kEntries, kCount, kLibrary, buffer.data(), size - 1), nullptr);
  char** out = InjectEnv(envp, kEntries, kCount, kLibrary, buffer.data(), size);
  std::vector<std::string> result;
  for (char** p = out; *p != nullptr; ++p) result.push_back(*p);
  return result;
}

using V = std::vector<std::string>;

TEST(EnvInject, EmptyEnvironmentGetsTheJobVariables) {
  EXPECT_EQ(Inject({}), (V{kEntries[0], kEntries[1], kEntries[2]}));
  EXPECT_EQ(Inject({}, true), (V{kEntries[0], kEntries[1], kEntries[2]}));
}

TEST(EnvInject, KeepsOtherVariablesAndReplacesTheJobs) {
  EXPECT_EQ(Inject({"PATH=/bin", "HOMEWARD_HOME=elsewhere", "HOME=/root"}),
            (V{"PATH=/bin", "HOME=/root", kEntries[0], kEntries[1], kEntries[2]}));
}

TEST(EnvInject, MergesTheProgramsPreloads) {
  EXPECT_EQ(Inject({"LD_PRELOAD=/lib/other.so"}),
            (V{"LD_PRELOAD=/lib/libmosix_preload.so:/lib/other.so", kEntries[1], kEntries[2]}));
  EXPECT_EQ(Inject({"LD_PRELOAD=/lib/other.so /lib/libmosix_preload.so"}),
            (V{"LD_PRELOAD=/lib/other.so /lib/libmosix_preload.so", kEntries[1], kEntries[2]}));
  EXPECT_EQ(Inject({"LD_PRELOAD="}), (V{kEntries[0], kEntries[1], kEntries[2]}));
  // A name that only starts like the shim's is another library.
  EXPECT_EQ(Inject({"LD_PRELOAD=/lib/libmosix_preload.so.1"}),
            (V{"LD_PRELOAD=/lib/libmosix_preload.so:/lib/libmosix_preload.so.1", kEntries[1],
               kEntries[2]}));
}

TEST(EnvInject, NamesMatchWhole) {
  EXPECT_EQ(Inject({"HOMEWARD_HOME_PIDX=1", "LD_PRELOADED=1"}),
            (V{"HOMEWARD_HOME_PIDX=1", "LD_PRELOADED=1", kEntries[0], kEntries[1], kEntries[2]}));
}

}  // namespace
}  // namespace homeward::preload
