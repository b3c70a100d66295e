#include "output_base.h"

#include <gtest/gtest.h>

#include "error.h"

namespace homeward {
namespace {

TEST(SettleOutputBase, MosrunAtOrPastTheOriginChangesNothing) {
  uint64_t origin[3] = {0, 100, 20};
  const uint64_t had[3] = {0, 150, 20};
  SettledBase settled = SettleOutputBase(7, false, false, origin, had);
  EXPECT_FALSE(settled.changed);
  EXPECT_EQ(origin[1], 100u);
  EXPECT_EQ(origin[2], 20u);
  EXPECT_EQ(settled.lost[1], 0u);
  EXPECT_EQ(settled.lost[2], 0u);
}

TEST(SettleOutputBase, OutputStillInTheKilledDaemonIsLostAndTheNodeSendsAgain) {
  uint64_t origin[3] = {0, 100, 20};
  const uint64_t had[3] = {0, 60, 20};
  SettledBase settled = SettleOutputBase(7, false, false, origin, had);
  EXPECT_TRUE(settled.changed);
  EXPECT_EQ(origin[1], 60u);  // the current node's output goes on where mosrun is
  EXPECT_EQ(settled.lost[1], 40u);
  EXPECT_EQ(origin[2], 20u);
  EXPECT_EQ(settled.lost[2], 0u);
}

TEST(SettleOutputBase, APendingBaseStartsWhereMosrunIsEitherWay) {
  // The old node's last word went with the restart: mosrun's offsets are the base, ahead
  // of the journaled origin or behind it, and no loss is counted (it cannot be known).
  uint64_t origin[3] = {0, 100, 20};
  const uint64_t had[3] = {0, 180, 5};
  SettledBase settled = SettleOutputBase(7, true, false, origin, had);
  EXPECT_TRUE(settled.changed);
  EXPECT_EQ(origin[1], 180u);
  EXPECT_EQ(origin[2], 5u);
  EXPECT_EQ(settled.lost[1], 0u);
  EXPECT_EQ(settled.lost[2], 0u);
}

TEST(SettleOutputBase, AFrozenJobRefusesAMosrunThatHasLessThanItsOrigin) {
  uint64_t origin[3] = {0, 100, 20};
  const uint64_t had[3] = {0, 100, 19};
  try {
    SettleOutputBase(7, false, true, origin, had);
    FAIL() << "accepted";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kInvalidInput);
    EXPECT_NE(std::string(e.what()).find("job 7: mosrun has 19 bytes of its fd 2, fewer than 20"),
              std::string::npos)
        << e.what();
  }
  uint64_t at[3] = {0, 100, 20};
  const uint64_t same[3] = {0, 100, 20};
  EXPECT_FALSE(SettleOutputBase(7, false, true, at, same).changed);
}

}  // namespace
}  // namespace homeward
