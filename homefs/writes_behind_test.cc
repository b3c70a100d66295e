#include "writes_behind.h"

#include <gtest/gtest.h>

#include <atomic>
#include <thread>

namespace homeward {
namespace {

TEST(WritesBehind, DrainWaitsForEveryWriteOut) {
  WritesBehind behind(1 << 20, 16);
  auto first = behind.Start(1, 100, {});
  auto second = behind.Start(2, 100, {});
  ASSERT_TRUE(first && second);
  std::atomic<bool> drained{false};
  std::thread waiter([&] {
    EXPECT_TRUE(behind.Drain({}));
    drained = true;
  });
  first->Finish(0);
  first.reset();
  std::this_thread::sleep_for(WritesBehind::kPoll * 2);
  EXPECT_FALSE(drained);  // the second is still out
  second->Finish(0);
  second.reset();
  waiter.join();
  EXPECT_TRUE(drained);
  EXPECT_TRUE(behind.Idle());
  EXPECT_FALSE(behind.HasErrors());
}

TEST(WritesBehind, AFailedWriteIsReportedOnceForItsHandle) {
  WritesBehind behind(1 << 20, 16);
  behind.Start(7, 10, {})->Finish(ENOSPC);
  behind.Start(7, 10, {})->Finish(EIO);  // the first error is the one told
  behind.Start(8, 10, {})->Finish(0);
  EXPECT_TRUE(behind.HasErrors());
  EXPECT_EQ(behind.TakeError(8), 0);
  EXPECT_EQ(behind.TakeError(7), ENOSPC);
  EXPECT_EQ(behind.TakeError(7), 0);
  EXPECT_FALSE(behind.HasErrors());
}

TEST(WritesBehind, AWriteDroppedUnansweredFailed) {
  WritesBehind behind(1 << 20, 16);
  behind.Start(3, 10, {});  // no Finish: the request went without an answer
  EXPECT_TRUE(behind.Idle());
  EXPECT_EQ(behind.TakeError(3), EIO);
}

TEST(WritesBehind, AFullWindowWaitsForRoomOrGivesUp) {
  WritesBehind behind(1000, 2);
  auto a = behind.Start(1, 600, {});
  ASSERT_TRUE(a);
  // Over the byte limit: waits until the give-up says stop.
  int asked = 0;
  EXPECT_EQ(behind.Start(1, 600, [&] { return ++asked >= 2; }), nullptr);
  EXPECT_GE(asked, 2);
  // Room made by an answer lets it out.
  std::thread answer([&] {
    std::this_thread::sleep_for(WritesBehind::kPoll);
    a->Finish(0);
    a.reset();
  });
  auto b = behind.Start(1, 600, {});
  answer.join();
  EXPECT_TRUE(b);
  // The count limit holds too.
  auto small = behind.Start(1, 1, {});
  EXPECT_TRUE(small);
  EXPECT_EQ(behind.Start(1, 1, [] { return true; }), nullptr);  // two out already
  EXPECT_FALSE(behind.Drain([] { return true; }));
  b.reset();
  small.reset();
  // One write is let out whatever its size.
  EXPECT_TRUE(behind.Start(1, 5000, {}));
}

}  // namespace
}  // namespace homeward
