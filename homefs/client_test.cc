#include "client.h"

#include <gtest/gtest.h>

namespace homeward {
namespace {

using std::chrono::milliseconds;
using std::chrono::seconds;

TEST(ClientTest, AHardMountKeepsASilentConnectionForTheGrace) {
  ClientOptions hard;
  hard.timeout = seconds(10);
  hard.grace = seconds(71);
  EXPECT_EQ(SilenceLimit(hard), seconds(71));
  hard.grace = seconds(1);  // never shorter than the timeout
  EXPECT_EQ(SilenceLimit(hard), seconds(10));
  ClientOptions soft = hard;
  soft.hard = false;
  soft.grace = seconds(300);
  EXPECT_EQ(SilenceLimit(soft), seconds(10));
}

TEST(ClientTest, AnInterruptEndsACallOnlyWhenTheHomeIsSilent) {
  EXPECT_FALSE(EndsInterrupted(true, milliseconds(1999)));  // its answer is about to come
  EXPECT_TRUE(EndsInterrupted(true, milliseconds(2000)));
  EXPECT_FALSE(EndsInterrupted(false, seconds(60)));  // hard: no signal, it waits
}

TEST(ClientTest, OnlyCachedAnswersGoStaleAndOnlyWhenTheHomeIsSilent) {
  EXPECT_FALSE(GoesStale(true, milliseconds(1999)));
  EXPECT_TRUE(GoesStale(true, milliseconds(2000)));
  EXPECT_FALSE(GoesStale(false, seconds(60)));
}

}  // namespace
}  // namespace homeward
