#include "job_whereabouts.h"

#include <gtest/gtest.h>

namespace homeward {
namespace {

TEST(JobWhereabouts, AnswersFromTheLastTable) {
  JobWhereabouts where;
  EXPECT_FALSE(where.RunsOn(100, "node2"));
  EXPECT_TRUE(where.Publish({{100, {"node2"}}, {200, {"node2", "node3"}}}));
  EXPECT_TRUE(where.RunsOn(100, "node2"));
  EXPECT_FALSE(where.RunsOn(100, "node3"));
  EXPECT_TRUE(where.RunsOn(200, "node3"));
  EXPECT_FALSE(where.Publish({{100, {"node2"}}, {200, {"node2", "node3"}}}));
  EXPECT_TRUE(where.Publish({{200, {"node3"}}}));
  EXPECT_FALSE(where.RunsOn(100, "node2"));  // came home, or ended
  EXPECT_TRUE(where.NodesOf(100).empty());
}

}  // namespace
}  // namespace homeward
