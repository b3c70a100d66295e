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

TEST(ClientTest, AHardMountHandsLostCallsBackToBeSentAgain) {
  EXPECT_EQ(LostCallError(true, true), FileClient::kLost);
  EXPECT_EQ(LostCallError(true, false), EIO);  // a forget, a release: not worth it
  EXPECT_EQ(LostCallError(false, true), EIO);  // soft: fails as before
}

TEST(ClientTest, ARequestSentAgainKeepsItsFirstId) {
  ClientOptions options;
  FileClient client(options);  // never connected: every send finds no connection
  EXPECT_NE(client.id(), 0u);
  EXPECT_NE(FileClient(options).id(), client.id());  // one id per mount
  capnp::MallocMessageBuilder message;
  message.initRoot<schema::FileRequest>().setOp(schema::FileOp::MKDIR);
  int err = -1;
  client.Send(message, 1, [&](int e, IncomingMessage*) { err = e; }, {}, false, true);
  EXPECT_EQ(err, FileClient::kLost);
  uint64_t id = message.getRoot<schema::FileRequest>().getId();
  EXPECT_NE(id, 0u);
  client.Send(message, 1, [&](int e, IncomingMessage*) { err = e; }, {}, false, true);
  EXPECT_EQ(message.getRoot<schema::FileRequest>().getId(), id);
  client.Abandon(id);
  // Not resendable: fails at once, as before.
  capnp::MallocMessageBuilder other;
  other.initRoot<schema::FileRequest>().setOp(schema::FileOp::GETATTR);
  client.Send(other, 1, [&](int e, IncomingMessage*) { err = e; });
  EXPECT_EQ(err, EIO);
  EXPECT_NE(other.getRoot<schema::FileRequest>().getId(), id);
}

}  // namespace
}  // namespace homeward
