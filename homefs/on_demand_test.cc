// What makes a home's cost follow its use: an on-demand FileClient connects for the first
// call, DisconnectIdle ends its connection and its threads only when nothing is in
// flight and it was unused for the idle time, and the next call connects again (a new
// generation); a WorkThread exists only while it has work; the daemon's list of live
// nodes reads back as written and refuses a malformed line.
#include <gtest/gtest.h>

#include <atomic>
#include <future>

#include "client.h"
#include "error.h"
#include "file_server.h"
#include "live_nodes.h"
#include "peer_server.h"
#include "scratch_dir.h"
#include "work_thread.h"

namespace homeward {
namespace {

using namespace std::chrono_literals;

class OnDemandTest : public ::testing::Test {
 protected:
  void SetUp() override {
    server_.RegisterStream("files", [this](std::unique_ptr<SecureStream> stream,
                                           PeerIdentity peer) {
      files_.Serve(std::move(stream), peer);
    });
    server_.Start();
  }
  void TearDown() override { server_.Stop(); }

  ClientOptions Options() {
    ClientOptions options{"127.0.0.1", server_.port(), key_, 5000ms};
    options.on_demand = true;
    return options;
  }
  // The attributes of the export root: one round trip.
  int RoundTrip(FileClient& client, uint64_t generation) {
    capnp::MallocMessageBuilder message;
    auto rq = message.initRoot<schema::FileRequest>();
    rq.setOp(schema::FileOp::GETATTR);
    rq.setNode(1);
    std::optional<IncomingMessage> reply;
    return client.Call(message, generation, reply);
  }

  ScratchDir scratch_{"homeward-on-demand"};
  std::vector<uint8_t> key_ = std::vector<uint8_t>(32, 7);
  FileServer files_{scratch_.path(), 2};
  PeerServer server_{"127.0.0.1", 0, key_, PeerConfig{}};
};

TEST_F(OnDemandTest, ConnectsOnFirstUseAndDisconnectsWhenIdle) {
  FileClient client(Options());
  client.Start();
  EXPECT_FALSE(client.running());  // nothing asked yet: no connection, no thread
  uint64_t first = 0;
  ASSERT_EQ(client.WaitConnected(&first), 0);
  EXPECT_TRUE(client.running());
  EXPECT_EQ(RoundTrip(client, first), 0);
  EXPECT_FALSE(client.DisconnectIdle(1h));  // used just now
  EXPECT_TRUE(client.DisconnectIdle(0ms));
  EXPECT_FALSE(client.running());
  EXPECT_FALSE(client.DisconnectIdle(0ms));  // nothing left to end
  uint64_t second = 0;
  ASSERT_EQ(client.WaitConnected(&second), 0);  // the next call connects again
  EXPECT_GT(second, first);
  EXPECT_EQ(RoundTrip(client, second), 0);
  client.Stop();
}

TEST_F(OnDemandTest, ProbesConnectionIsKeptUntilIdle) {
  FileClient client(Options());
  client.Probe();
  client.Start();
  EXPECT_TRUE(client.running());  // the probe's connection is served
  uint64_t generation = 0;
  ASSERT_EQ(client.WaitConnected(&generation), 0);
  EXPECT_EQ(RoundTrip(client, generation), 0);
  EXPECT_TRUE(client.DisconnectIdle(0ms));
  client.Stop();
}

TEST_F(OnDemandTest, ARequestRacingTheDisconnectionIsLostNotFailed) {
  FileClient client(Options());
  client.Start();
  uint64_t generation = 0;
  ASSERT_EQ(client.WaitConnected(&generation), 0);
  ASSERT_TRUE(client.DisconnectIdle(0ms));
  // Sent on the generation that was: handed back to be sent again (hard, resend).
  capnp::MallocMessageBuilder message;
  auto rq = message.initRoot<schema::FileRequest>();
  rq.setOp(schema::FileOp::GETATTR);
  rq.setNode(1);
  std::promise<int> answer;
  client.Send(message, generation, [&](int err, IncomingMessage*) { answer.set_value(err); },
              {}, false, true);
  EXPECT_EQ(answer.get_future().get(), FileClient::kLost);
  client.Stop();
}

TEST(WorkThreadTest, ExistsOnlyWhileItHasWork) {
  WorkThread worker("test", 50ms);
  EXPECT_FALSE(worker.running());
  std::promise<void> ran;
  ASSERT_TRUE(worker.Post([&](bool stopping) {
    EXPECT_FALSE(stopping);
    ran.set_value();
  }));
  ran.get_future().get();
  for (auto end = std::chrono::steady_clock::now() + 10s;
       worker.running() && std::chrono::steady_clock::now() < end;) {
    std::this_thread::sleep_for(5ms);
  }
  EXPECT_FALSE(worker.running());  // gone after the linger
  EXPECT_TRUE(worker.idle());
  std::promise<void> again;
  ASSERT_TRUE(worker.Post([&](bool) { again.set_value(); }));  // started again
  again.get_future().get();
  EXPECT_FALSE(worker.Post([](bool) {}, 0));  // the limit
}

TEST(WorkThreadTest, WaitIdleReturnsWhenTheLastJobIsDoneOrGivenUp) {
  WorkThread worker("test", 10s);
  std::promise<void> release;
  std::shared_future<void> released = release.get_future().share();
  std::atomic<bool> second_done{false};
  worker.Post([released](bool) { released.wait(); });
  worker.Post([&](bool) { second_done = true; });
  // Given up while the first job holds the thread.
  int asked = 0;
  EXPECT_FALSE(worker.WaitIdle([&] { return ++asked == 2; }, 10ms));
  EXPECT_EQ(asked, 2);
  std::thread waiter([&] {
    EXPECT_TRUE(worker.WaitIdle([] { return false; }, 10s));  // woken, not polled
    EXPECT_TRUE(second_done);
  });
  release.set_value();
  waiter.join();
  EXPECT_TRUE(worker.idle());
}

TEST(WorkThreadTest, StopRunsWhatIsLeftAsStopping) {
  WorkThread worker("test", 10s);
  std::promise<void> release;
  std::shared_future<void> released = release.get_future().share();
  std::atomic<int> stopped{0};
  worker.Post([released](bool) { released.wait(); });
  worker.Post([&](bool stopping) { stopped += stopping ? 1 : 100; });
  std::thread stopper([&] { worker.Stop(); });
  std::this_thread::sleep_for(20ms);
  release.set_value();
  stopper.join();
  EXPECT_EQ(stopped.load(), 1);
  EXPECT_FALSE(worker.Post([](bool) {}));
}

TEST(LiveNodesTest, ReadsBackAsWrittenAndRefusesMalformedLines) {
  LiveNodes live = {{"node1", {"10.0.0.1", 4701, ""}},
                    {"node-2", {"10.0.0.2", 4800, ""}},
                    {"b1", {"10.0.1.1", 4701, "b"}}};  // a partner cluster's node
  EXPECT_EQ(ParseLiveNodes(FormatLiveNodes(live)), live);
  EXPECT_TRUE(ParseLiveNodes(FormatLiveNodes({})).empty());
  EXPECT_FALSE(FormatLiveNodes({}).empty());  // never an empty datagram
  for (const char* bad : {"node1 10.0.0.1\n", "node1 10.0.0.1 0\n", "node1 10.0.0.1 70000\n",
                          "../x 10.0.0.1 1\n", "node1 10.0.0.1 1 b extra\n",
                          "node1 10.0.0.1 1 ../b\n"}) {
    EXPECT_THROW(ParseLiveNodes(bad), Error) << bad;
  }
}

}  // namespace
}  // namespace homeward
