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

TEST(WritesBehind, AWaitForAnswersSendsWhatIsHeldFirst) {
  WritesBehind behind(1 << 20, 1);
  // The held writes are "sent" by the hook: here it answers them, as the home would.
  std::shared_ptr<WritesBehind::Ticket> out;
  int sent = 0;
  behind.BeforeWaiting([&] {
    ++sent;
    out.reset();
  });
  EXPECT_TRUE(behind.Drain({}));  // nothing out: no wait, nothing sent
  EXPECT_EQ(sent, 0);
  out = behind.Start(1, 100, {});
  ASSERT_TRUE(out);
  EXPECT_TRUE(behind.Drain({}));  // would wait for ever unless the hook sent it
  EXPECT_EQ(sent, 1);
  out = behind.Start(1, 100, {});
  auto next = behind.Start(1, 100, {});  // the window (1 write) is full: it waits too
  EXPECT_TRUE(next);
  EXPECT_EQ(sent, 2);
  next.reset();
  EXPECT_TRUE(behind.Idle());
}

TEST(WritesBehind, AHandlesDrainWaitsForItsOwnWritesOnly) {
  WritesBehind behind(1 << 20, 16);
  auto mine = behind.Start(1, 100, {});
  auto mine_too = behind.Start(1, 100, {});
  auto other = behind.Start(2, 100, {});
  ASSERT_TRUE(mine && mine_too && other);
  std::atomic<bool> drained{false};
  std::thread closer([&] {
    EXPECT_TRUE(behind.DrainHandle(1, {}));
    drained = true;
  });
  mine->Finish(0);
  mine.reset();
  std::this_thread::sleep_for(WritesBehind::kPoll * 2);
  EXPECT_FALSE(drained);  // handle 1 has one more out
  mine_too->Finish(0);
  mine_too.reset();
  closer.join();  // done with handle 2's write still out
  EXPECT_TRUE(drained);
  EXPECT_FALSE(behind.Idle());
  // A handle with nothing out does not wait; give-up ends a wait for one that has.
  EXPECT_TRUE(behind.DrainHandle(3, [] { return true; }));
  EXPECT_FALSE(behind.DrainHandle(2, [] { return true; }));
  other->Finish(0);
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

TEST(WritesBehind, ARequestWhoseFailuresAreToldElsewhereLeavesNoErrorUnanswered) {
  WritesBehind behind(1 << 20, 16);
  behind.Start(0, 0, {}, 0);  // a removal behind, dropped at unmount: no handle to tell
  EXPECT_TRUE(behind.Idle());
  EXPECT_FALSE(behind.HasErrors());
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
