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

constexpr size_t kHello = 8 + kPeerNonceBytes + kPeerPublicKeyBytes + 1;

// Runs both sides in memory; `tamper` may change the client's bytes in flight,
// `tamper_server` the server's.
void Exchange(PeerHandshake& client, PeerHandshake& server,
              const std::function<void(std::string&)>& tamper = {},
              const std::function<void(std::string&)>& tamper_server = {}) {
  for (int round = 0; round < 8; ++round) {
    std::string c = client.TakeOutput();
    if (tamper) tamper(c);
    if (!c.empty()) server.Feed(c);
    std::string s = server.TakeOutput();
    if (tamper_server) tamper_server(s);
    if (!s.empty()) client.Feed(s);
  }
}

// Restores the process's defaults when a test changed them.
struct SecurityGuard {
  ~SecurityGuard() { SetPeerSecurityForTesting({}); }
};

TEST(PeerHandshake, SameKeyAgrees) {
  auto client = PeerHandshake::Client(Key(7), "files");
  auto server = PeerHandshake::Server(Key(7));
  Exchange(client, server);
  EXPECT_EQ(client.state(), PeerHandshake::State::kDone) << client.error();
  EXPECT_EQ(server.state(), PeerHandshake::State::kDone) << server.error();
  EXPECT_EQ(server.service(), "files");
  // Both derive the same pair of keys, one for each direction, and they differ.
  EXPECT_EQ(client.session().send_key, server.session().receive_key);
  EXPECT_EQ(client.session().receive_key, server.session().send_key);
  EXPECT_NE(client.session().send_key, client.session().receive_key);
  EXPECT_EQ(client.session().cipher, server.session().cipher);
  EXPECT_FALSE(client.session().plaintext);
  EXPECT_FALSE(server.session().plaintext);
}

TEST(PeerHandshake, APartnerIsKnownByItsClusterAndItsKey) {
  std::vector<uint8_t> own = Key(1), with_b = Key(5), with_c = Key(6);
  auto choose = [&](const std::string& cluster) -> const std::vector<uint8_t>* {
    if (cluster.empty()) return &own;
    if (cluster == "b") return &with_b;
    if (cluster == "c") return &with_c;
    return nullptr;
  };
  auto client = PeerHandshake::Client(with_b, "jobs", "b");
  auto server = PeerHandshake::Server(choose);
  Exchange(client, server);
  ASSERT_EQ(client.state(), PeerHandshake::State::kDone) << client.error();
  ASSERT_EQ(server.state(), PeerHandshake::State::kDone) << server.error();
  EXPECT_EQ(server.cluster(), "b");
  EXPECT_EQ(server.service(), "jobs");
  EXPECT_EQ(client.session().send_key, server.session().receive_key);

  // A node of the server's own cluster names none.
  auto local = PeerHandshake::Client(own, "files");
  auto local_server = PeerHandshake::Server(choose);
  Exchange(local, local_server);
  ASSERT_EQ(local_server.state(), PeerHandshake::State::kDone) << local_server.error();
  EXPECT_EQ(local_server.cluster(), "");

  // b's key does not make a node of c, nor of the server's own cluster.
  for (std::string claimed : {"c", ""}) {
    auto liar = PeerHandshake::Client(with_b, "files", claimed);
    auto liar_server = PeerHandshake::Server(choose);
    Exchange(liar, liar_server);
    EXPECT_EQ(liar.state(), PeerHandshake::State::kFailed) << claimed;
    EXPECT_NE(liar_server.state(), PeerHandshake::State::kDone) << claimed;
  }
}

TEST(PeerHandshake, AClusterNameChangedInFlightIsRefused) {
  std::vector<uint8_t> shared = Key(5);
  auto choose = [&](const std::string& cluster) -> const std::vector<uint8_t>* {
    return cluster == "b" || cluster == "c" ? &shared : nullptr;
  };
  auto client = PeerHandshake::Client(shared, "files", "b");
  auto server = PeerHandshake::Server(choose);
  bool first = true;
  Exchange(client, server, [&](std::string& bytes) {
    if (first && !bytes.empty()) {
      bytes.back() = 'c';  // the last byte of the hello: the cluster's name
      first = false;
    }
  });
  EXPECT_EQ(client.state(), PeerHandshake::State::kFailed);
  EXPECT_NE(client.error().find("server did not prove the partnership's key"), std::string::npos)
      << client.error();
}

TEST(PeerHandshake, AnUnknownClusterIsRefusedWithItsName) {
  auto client = PeerHandshake::Client(Key(5), "files", "stranger");
  auto server = PeerHandshake::Server(Key(5));  // one key: its own cluster's nodes only
  Exchange(client, server);
  EXPECT_EQ(server.state(), PeerHandshake::State::kFailed);
  EXPECT_NE(server.error().find("cluster 'stranger' is no partner"), std::string::npos)
      << server.error();
  EXPECT_NE(client.state(), PeerHandshake::State::kDone);
  EXPECT_THROW(PeerHandshake::Client(Key(5), "files", std::string(64, 'x')), Error);
}

TEST(PeerHandshake, EveryConnectionHasFreshKeys) {
  // Ephemeral keys and nonces: the same two nodes never use the same keys twice.
  auto c1 = PeerHandshake::Client(Key(7), "files");
  auto s1 = PeerHandshake::Server(Key(7));
  Exchange(c1, s1);
  auto c2 = PeerHandshake::Client(Key(7), "files");
  auto s2 = PeerHandshake::Server(Key(7));
  Exchange(c2, s2);
  ASSERT_EQ(c1.state(), PeerHandshake::State::kDone);
  ASSERT_EQ(c2.state(), PeerHandshake::State::kDone);
  EXPECT_NE(c1.session().send_key, c2.session().send_key);
  EXPECT_NE(c1.session().receive_key, c2.session().receive_key);
}

TEST(PeerHandshake, TamperedClientPublicKeyIsRefused) {
  auto client = PeerHandshake::Client(Key(3), "files");
  auto server = PeerHandshake::Server(Key(3));
  bool first = true;
  Exchange(client, server, [&](std::string& bytes) {
    if (first && bytes.size() > kHello) {
      bytes[8 + kPeerNonceBytes + 5] ^= 0x40;  // a byte of the client's public key
      first = false;
    }
  });
  EXPECT_EQ(client.state(), PeerHandshake::State::kFailed);
  EXPECT_NE(client.error().find("server did not prove"), std::string::npos) << client.error();
  EXPECT_NE(server.state(), PeerHandshake::State::kDone);
}

TEST(PeerHandshake, TamperedServerPublicKeyIsRefused) {
  auto client = PeerHandshake::Client(Key(3), "files");
  auto server = PeerHandshake::Server(Key(3));
  bool first = true;
  Exchange(client, server, {}, [&](std::string& bytes) {
    if (first && bytes.size() > kHello) {
      bytes[8 + kPeerNonceBytes + 9] ^= 0x01;  // a byte of the server's public key
      first = false;
    }
  });
  EXPECT_EQ(client.state(), PeerHandshake::State::kFailed);
  EXPECT_NE(server.state(), PeerHandshake::State::kDone);
}

TEST(PeerHandshake, SubstitutedPublicKeysAreRefused) {
  // A man in the middle without the cluster key puts his own public keys in both hellos
  // (so that he could decrypt both halves): neither side accepts.
  auto mitm_client = PeerHandshake::Client(Key(1), "files");
  auto mitm_server = PeerHandshake::Server(Key(1));
  std::string mitm_client_hello = mitm_client.TakeOutput();
  auto client = PeerHandshake::Client(Key(3), "files");
  auto server = PeerHandshake::Server(Key(3));
  std::string hello = client.TakeOutput();
  hello.replace(8 + kPeerNonceBytes, kPeerPublicKeyBytes,
                mitm_client_hello.substr(8 + kPeerNonceBytes, kPeerPublicKeyBytes));
  server.Feed(hello);
  std::string reply = server.TakeOutput();
  mitm_server.Feed(mitm_client_hello);
  std::string mitm_reply = mitm_server.TakeOutput();
  reply.replace(8 + kPeerNonceBytes, kPeerPublicKeyBytes,
                mitm_reply.substr(8 + kPeerNonceBytes, kPeerPublicKeyBytes));
  client.Feed(reply);
  EXPECT_EQ(client.state(), PeerHandshake::State::kFailed);
  EXPECT_TRUE(client.TakeOutput().empty());
}

TEST(PeerHandshake, ReplayedHelloIsRefused) {
  // Record an honest client's whole side of a handshake and play it to a new server.
  auto client = PeerHandshake::Client(Key(4), "files");
  auto server = PeerHandshake::Server(Key(4));
  std::string recorded;
  Exchange(client, server, [&](std::string& bytes) { recorded += bytes; });
  ASSERT_EQ(server.state(), PeerHandshake::State::kDone);
  auto again = PeerHandshake::Server(Key(4));
  again.Feed(recorded.substr(0, recorded.size() - kPeerTagBytes));
  ASSERT_EQ(again.state(), PeerHandshake::State::kRunning);
  EXPECT_FALSE(again.TakeOutput().empty());  // a fresh nonce and key of its own
  again.Feed(recorded.substr(recorded.size() - kPeerTagBytes));
  EXPECT_EQ(again.state(), PeerHandshake::State::kFailed);
  EXPECT_NE(again.error().find("client did not prove"), std::string::npos) << again.error();
}

TEST(PeerHandshake, DegeneratePublicKeyIsRefused) {
  // An all-zero public key (a small-order point) would make the shared secret zero.
  auto client = PeerHandshake::Client(Key(3), "files");
  auto server = PeerHandshake::Server(Key(3));
  std::string hello = client.TakeOutput();
  std::fill(hello.begin() + 8 + kPeerNonceBytes,
            hello.begin() + 8 + kPeerNonceBytes + kPeerPublicKeyBytes, '\0');
  server.Feed(hello);
  EXPECT_EQ(server.state(), PeerHandshake::State::kFailed);
  EXPECT_NE(server.error().find("degenerate"), std::string::npos) << server.error();
}

TEST(PeerHandshake, CipherIsAgreed) {
  SecurityGuard guard;
  // A side without AES (or not offering it) makes both use ChaCha20-Poly1305.
  auto server = PeerHandshake::Server(Key(2));
  SetPeerSecurityForTesting({.allow_aes = false});
  auto client = PeerHandshake::Client(Key(2), "files");
  Exchange(client, server);
  ASSERT_EQ(client.state(), PeerHandshake::State::kDone) << client.error();
  EXPECT_EQ(client.session().cipher, PeerCipher::kChaCha20Poly1305);
  EXPECT_EQ(server.session().cipher, PeerCipher::kChaCha20Poly1305);
}

TEST(PeerHandshake, PlaintextMustBeAgreed) {
  SecurityGuard guard;
  // Only a benchmark's baseline turns encryption off, and then on both sides; a node
  // with it off cannot talk a node with it on into clear text.
  SetPeerSecurityForTesting({.plaintext = true});
  auto client = PeerHandshake::Client(Key(2), "files");
  SetPeerSecurityForTesting({});
  auto server = PeerHandshake::Server(Key(2));
  Exchange(client, server);
  EXPECT_EQ(server.state(), PeerHandshake::State::kFailed);
  EXPECT_NE(server.error().find("encryption turned off"), std::string::npos);
  EXPECT_NE(client.state(), PeerHandshake::State::kDone);
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
  ASSERT_EQ(reply.size(), kHello + kPeerTagBytes);
  server.Feed(reply.substr(kHello));
  EXPECT_EQ(server.state(), PeerHandshake::State::kFailed);
  EXPECT_NE(server.error().find("client did not prove"), std::string::npos);
}

TEST(PeerHandshake, TamperedServiceIsRefused) {
  auto client = PeerHandshake::Client(Key(3), "files");
  auto server = PeerHandshake::Server(Key(3));
  bool first = true;
  Exchange(client, server, [&](std::string& bytes) {
    if (first && !bytes.empty()) {
      // "fileX" (the last byte is the cluster name's length, 0): the tags no longer match
      // the client's view.
      bytes[bytes.size() - 2] = 'X';
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
  server.Feed(std::string(kHello + 1, 'x'));
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
