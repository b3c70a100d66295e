#include "home_grace.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

namespace homeward {
namespace {

using ::testing::ElementsAre;
using ::testing::IsEmpty;

TEST(HomeGraceTest, AHomeIsOverdueOnceAfterTheGrace) {
  HomeGrace grace(std::chrono::seconds(10));
  grace.Unreachable("node1", 1000);
  EXPECT_TRUE(grace.unreachable("node1"));
  EXPECT_THAT(grace.Overdue(10999), IsEmpty());
  EXPECT_THAT(grace.Overdue(11000), ElementsAre("node1"));
  EXPECT_THAT(grace.Overdue(50000), IsEmpty());  // its guests are frozen already
}

TEST(HomeGraceTest, ARepeatedVerdictKeepsTheStartOfTheOutage) {
  HomeGrace grace(std::chrono::seconds(10));
  grace.Unreachable("node1", 1000);
  grace.Unreachable("node1", 9000);
  EXPECT_THAT(grace.Overdue(11000), ElementsAre("node1"));
}

TEST(HomeGraceTest, AHomeBackInTimeIsNeverOverdue) {
  HomeGrace grace(std::chrono::seconds(10));
  grace.Unreachable("node1", 1000);
  grace.Reachable("node1");
  EXPECT_FALSE(grace.unreachable("node1"));
  EXPECT_THAT(grace.Overdue(60000), IsEmpty());
}

TEST(HomeGraceTest, ANewOutageHasANewGrace) {
  HomeGrace grace(std::chrono::seconds(10));
  grace.Unreachable("node1", 0);
  EXPECT_THAT(grace.Overdue(10000), ElementsAre("node1"));
  grace.Reachable("node1");
  grace.Unreachable("node1", 20000);
  EXPECT_THAT(grace.Overdue(29999), IsEmpty());
  EXPECT_THAT(grace.Overdue(30000), ElementsAre("node1"));
}

TEST(HomeGraceTest, HomesAreCountedApart) {
  HomeGrace grace(std::chrono::seconds(10));
  grace.Unreachable("node1", 0);
  grace.Unreachable("node3", 5000);
  EXPECT_THAT(grace.Overdue(10000), ElementsAre("node1"));
  EXPECT_THAT(grace.Overdue(15000), ElementsAre("node3"));
}

}  // namespace
}  // namespace homeward
