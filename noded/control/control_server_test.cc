// The control server refuses a client that speaks another version of the control
// protocol, with a message that names the client and both versions, and serves one that
// speaks its own.
#include "control_server.h"

#include <stdlib.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <atomic>
#include <string>
#include <thread>

#include "control_client.h"
#include "control_permissions.h"
#include "uv_handle.h"
#include "scratch_dir.h"

namespace homeward {
namespace {

class ControlServerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_EQ(uv_loop_init(&loop_), 0);
    socket_ = dir_ + "/control.sock";
  }
  void TearDown() override {
    uv_run(&loop_, UV_RUN_DEFAULT);
    EXPECT_EQ(uv_loop_close(&loop_), 0);
  }

  // Serves requests on the loop while `client` runs on a thread of its own; the handler
  // answers a status request with done.
  void Serve(const std::function<void()>& client) {
    ControlServer server(&loop_, socket_,
                         [this](schema::ControlRequest::Reader, ReplySender reply) {
                           ++handled_;
                           capnp::MallocMessageBuilder message;
                           message.initRoot<schema::ControlReply>().setDone();
                           reply.Send(message);
                         });
    server.Start();
    UvHandle<uv_async_t> finished;
    ASSERT_EQ(
        uv_async_init(&loop_, finished.get(), [](uv_async_t* async) { uv_stop(async->loop); }), 0);
    std::thread thread([&] {
      client();
      uv_async_send(finished.get());
    });
    uv_run(&loop_, UV_RUN_DEFAULT);
    thread.join();
    server.Stop();
  }

  uv_loop_t loop_;
  ScratchDir scratch_{"homeward-control"};
  std::string dir_ = scratch_.path();
  std::string socket_;
  std::atomic<int> handled_{0};
};

TEST_F(ControlServerTest, OlderClientIsRefusedByName) {
  std::string message;
  Serve([&] {
    try {
      ControlClient::Connect(socket_).Call([](schema::ControlRequest::Builder request) {
        request.setVersion(schema::CONTROL_VERSION - 1);
        request.setStatus();
      });
    } catch (const Error& e) {
      message = e.what();
    }
  });
  EXPECT_EQ(handled_, 0);
  // This test's own program is the client the daemon names.
  EXPECT_EQ(message, fmt::format("control_server_test is older than this daemon: protocol version "
                                 "{}, need {}",
                                 schema::CONTROL_VERSION - 1, schema::CONTROL_VERSION));
}

TEST_F(ControlServerTest, NewerClientIsRefused) {
  std::string message;
  Serve([&] {
    try {
      ControlClient::Connect(socket_).Call([](schema::ControlRequest::Builder request) {
        request.setVersion(schema::CONTROL_VERSION + 1);
        request.setStatus();
      });
    } catch (const Error& e) {
      message = e.what();
    }
  });
  EXPECT_EQ(handled_, 0);
  EXPECT_NE(message.find("control_server_test is newer than this daemon"), std::string::npos)
      << message;
}

TEST_F(ControlServerTest, SameVersionIsServed) {
  bool done = false;
  Serve([&] {
    auto reply = ControlClient::Connect(socket_).Call(
        [](schema::ControlRequest::Builder request) { request.setStatus(); });
    done = reply.Root<schema::ControlReply>().isDone();
  });
  EXPECT_TRUE(done);
  EXPECT_EQ(handled_, 1);
}

// A connection the loop cannot serve (here a descriptor that is already closed) ends as a
// lost one does, through its on_close, and AdoptStream, called from loop callbacks, throws
// nothing.
TEST_F(ControlServerTest, UnservableAdoptedStreamEndsThroughOnClose) {
  ControlServer server(&loop_, socket_, [](schema::ControlRequest::Reader, ReplySender) {});
  server.Start();
  int stale = ::dup(0);
  ASSERT_GE(stale, 0);
  ::close(stale);
  bool closed = false;
  StreamHandlers handlers;
  handlers.on_close = [&] { closed = true; };
  Caller peer;
  peer.peer = true;
  peer.peer_address = "127.0.0.9";
  ControlStream stream;
  EXPECT_NO_THROW(stream = server.AdoptStream(Fd::Adopt(stale), peer, std::move(handlers)));
  EXPECT_TRUE(closed);
  EXPECT_FALSE(stream.open());
  server.Stop();
}

TEST(ControlPermissions, OnlyThisClustersNodesStartGuests) {
  using W = schema::ControlRequest::Which;
  Caller own;
  own.peer = true;
  own.peer_address = "10.0.0.2:40000";
  Caller partner = own;
  partner.peer_cluster = "b";
  Caller local;
  local.uid = 1000;
  EXPECT_NO_THROW(CheckPermission(W::START_GUEST, own));
  try {
    CheckPermission(W::START_GUEST, partner);
    ADD_FAILURE() << "a partner cluster's node may start a guest";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kPermissionDenied);
    EXPECT_NE(std::string(e.what()).find("partner cluster 'b' may not start a guest job"),
              std::string::npos)
        << e.what();
  }
  EXPECT_THROW(CheckPermission(W::START_GUEST, local), Error);
  // A job of this cluster's that runs on a partner's node attaches to its home from there.
  EXPECT_NO_THROW(CheckPermission(W::ATTACH_GUEST, partner));
  EXPECT_THROW(CheckPermission(W::START_JOB, partner), Error);
  EXPECT_THROW(CheckPermission(W::MIGRATE_JOB, partner), Error);
}

}  // namespace
}  // namespace homeward
