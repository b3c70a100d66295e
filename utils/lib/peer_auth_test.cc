// The peer handshake: good keys agree, a wrong key or a tampered byte is refused.
#include "peer_auth.h"

#include <gtest/gtest.h>
#include <sys/socket.h>

#include <atomic>
#include <thread>

#include "error.h"

namespace homeward {
namespace {

std::vector<uint8_t> Key(uint8_t fill) {
  return std::vector<uint8_t>(32, fill);
}

// Runs both sides in memory; `tamper` may change bytes in flight.
void Exchange(PeerHandshake& client, PeerHandshake& server,
              const std::function<void(std::string&)>& tamper = {}) {
  for (int round = 0; round < 8; ++round) {
    std::string c = client.TakeOutput();
    if (tamper) tamper(c);
    if (!c.empty()) server.Feed(c);
    std::string s = server.TakeOutput();
    if (!s.empty()) client.Feed(s);
  }
}

TEST(PeerHandshake, SameKeyAgrees) {
  auto client = PeerHandshake::Client(Key(7), "files");
  auto server = PeerHandshake::Server(Key(7));
  Exchange(client, server);
  EXPECT_EQ(client.state(), PeerHandshake::State::kDone) << client.error();
  EXPECT_EQ(server.state(), PeerHandshake::State::kDone) << server.error();
  EXPECT_EQ(server.service(), "files");
}

TEST(PeerHandshake, WrongKeyFailsBothWays) {
  auto client = PeerHandshake::Client(Key(7), "files");
  auto server = PeerHandshake::Server(Key(8));
  Exchange(client, server);
  EXPECT_EQ(client.state(), PeerHandshake::State::kFailed);
  EXPECT_NE(server.state(), PeerHandshake::State::kDone);
  EXPECT_NE(client.error().find("did not prove"), std::string::npos);
}

TEST(PeerHandshake, ClientWithoutKeyCannotPass) {
  // A client that replays the server's own tag (reflection) is refused.
  auto server = PeerHandshake::Server(Key(1));
  auto honest = PeerHandshake::Client(Key(1), "files");
  std::string hello = honest.TakeOutput();
  server.Feed(hello);
  std::string reply = server.TakeOutput();
  ASSERT_EQ(reply.size(), 8 + kPeerNonceBytes + kPeerTagBytes);
  server.Feed(reply.substr(8 + kPeerNonceBytes));
  EXPECT_EQ(server.state(), PeerHandshake::State::kFailed);
  EXPECT_NE(server.error().find("client did not prove"), std::string::npos);
}

TEST(PeerHandshake, TamperedServiceIsRefused) {
  auto client = PeerHandshake::Client(Key(3), "files");
  auto server = PeerHandshake::Server(Key(3));
  bool first = true;
  Exchange(client, server, [&](std::string& bytes) {
    if (first && !bytes.empty()) {
      bytes.back() = 'X';  // "fileX": the tags no longer match the client's view
      first = false;
    }
  });
  EXPECT_EQ(client.state(), PeerHandshake::State::kFailed);
  EXPECT_NE(server.state(), PeerHandshake::State::kDone);
}

TEST(PeerHandshake, TamperedNonceIsRefused) {
  auto client = PeerHandshake::Client(Key(3), "files");
  auto server = PeerHandshake::Server(Key(3));
  bool first = true;
  Exchange(client, server, [&](std::string& bytes) {
    if (first && bytes.size() > 20) {
      bytes[12] ^= 1;
      first = false;
    }
  });
  EXPECT_EQ(client.state(), PeerHandshake::State::kFailed);
}

TEST(PeerHandshake, GarbageIsRefused) {
  auto server = PeerHandshake::Server(Key(3));
  server.Feed(std::string(41, 'x'));
  EXPECT_EQ(server.state(), PeerHandshake::State::kFailed);
}

TEST(PeerHandshake, BlockingHelpersOverASocketPair) {
  int fds[2];
  ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM, 0, fds), 0);
  Fd a = Fd::Adopt(fds[0]), b = Fd::Adopt(fds[1]);
  std::string service;
  std::thread server([&] { service = PeerAccept(b.get(), Key(5), std::chrono::seconds(5)); });
  auto client = PeerHandshake::Client(Key(5), "migration");
  // Drive the client by hand over the socket, as PeerConnect does after connect().
  for (;;) {
    std::string out = client.TakeOutput();
    if (!out.empty()) {
      ASSERT_EQ(::send(a.get(), out.data(), out.size(), 0), (ssize_t)out.size());
    }
    if (client.state() != PeerHandshake::State::kRunning) break;
    std::string in(client.wanted(), '\0');
    ssize_t n = ::recv(a.get(), in.data(), in.size(), 0);
    ASSERT_GT(n, 0);
    in.resize(n);
    client.Feed(in);
  }
  server.join();
  EXPECT_EQ(client.state(), PeerHandshake::State::kDone);
  EXPECT_EQ(service, "migration");
}

TEST(PeerHandshake, BlockingServerRejectsWrongKey) {
  int fds[2];
  ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM, 0, fds), 0);
  Fd a = Fd::Adopt(fds[0]), b = Fd::Adopt(fds[1]);
  std::thread client([&] {
    auto h = PeerHandshake::Client(Key(9), "files");
    std::string out = h.TakeOutput();
    ::send(a.get(), out.data(), out.size(), 0);
    std::string in(h.wanted(), '\0');
    ssize_t n = ::recv(a.get(), in.data(), in.size(), 0);
    if (n > 0) {
      in.resize(n);
      h.Feed(in);
    }
    // The client sees the server fail to prove *its* key and stops; close.
    a.Reset();
  });
  EXPECT_THROW(PeerAccept(b.get(), Key(5), std::chrono::seconds(5)), Error);
  client.join();
}

TEST(PeerHandshake, OneDeadlineForTheWholeHandshake) {
  // A peer that sends a byte of its hello every 100 ms never lets a single receive wait
  // long, but the handshake as a whole runs out of time.
  int fds[2];
  ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM, 0, fds), 0);
  Fd a = Fd::Adopt(fds[0]), b = Fd::Adopt(fds[1]);
  std::atomic<bool> done = false;
  std::thread trickle([&] {
    std::string hello = PeerHandshake::Client(Key(5), "files").TakeOutput();
    for (char byte : hello) {
      if (done) break;
      ::send(a.get(), &byte, 1, MSG_NOSIGNAL);
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
  });
  auto start = std::chrono::steady_clock::now();
  try {
    PeerAccept(b.get(), Key(5), std::chrono::milliseconds(700));
    ADD_FAILURE() << "a trickling peer finished its handshake";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("not done within 700 ms"), std::string::npos) << e.what();
  }
  auto took = std::chrono::steady_clock::now() - start;
  EXPECT_GE(took, std::chrono::milliseconds(650));
  EXPECT_LT(took, std::chrono::milliseconds(2000));
  done = true;
  trickle.join();
}

}  // namespace
}  // namespace homeward
