// PeerServer over real loopback sockets: strangers' idle connections cost no thread, are
// capped per address and closed at the deadline, while a peer with the key is served.
#include "peer_server.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <fstream>
#include <mutex>
#include <string>
#include <thread>

#include "error.h"

namespace homeward {
namespace {

using namespace std::chrono_literals;

std::vector<uint8_t> Key() {
  return std::vector<uint8_t>(32, 3);
}

int Threads() {
  std::ifstream status("/proc/self/status");
  std::string line;
  while (std::getline(status, line)) {
    if (line.rfind("Threads:", 0) == 0) return std::stoi(line.substr(8));
  }
  return -1;
}

// A connection from `source` that sends nothing.
Fd Idle(const char* source, uint16_t port) {
  Fd fd = Fd::Adopt(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  sockaddr_in from = Endpoint{source, 0}.ToSockaddr();
  EXPECT_EQ(::bind(fd.get(), reinterpret_cast<sockaddr*>(&from), sizeof from), 0);
  sockaddr_in to = Endpoint{"127.0.0.1", port}.ToSockaddr();
  // Under a flood the kernel may drop a SYN or two: a stranger's failure is no concern.
  ::connect(fd.get(), reinterpret_cast<sockaddr*>(&to), sizeof to);
  return fd;
}

// Waits up to `limit` for the server to close `fd`; returns how long that took.
std::chrono::milliseconds ClosedWithin(int fd, std::chrono::milliseconds limit) {
  auto start = std::chrono::steady_clock::now();
  pollfd p{fd, POLLIN, 0};
  if (::poll(&p, 1, static_cast<int>(limit.count())) <= 0) return limit + 1ms;
  char byte;
  ssize_t n = ::recv(fd, &byte, 1, 0);
  EXPECT_LE(n, 0) << "the server sent something to a stranger";
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() -
                                                               start);
}

class PeerServerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    PeerConfig limits;
    limits.max_pending_per_source = 4;
    limits.max_pending = 8;
    limits.handshake = 3s;
    server_ = std::make_unique<PeerServer>("127.0.0.1", 0, Key(), limits);
    server_->Register("echo", [](Fd fd, PeerIdentity) {
      char byte;
      while (::recv(fd.get(), &byte, 1, 0) == 1) ::send(fd.get(), &byte, 1, MSG_NOSIGNAL);
    });
    server_->Start();
  }
  void TearDown() override { server_->Stop(); }

  // A peer with the key: connects, asks for "echo", and gets its byte back.
  bool Echoes() {
    Fd fd = PeerConnect("127.0.0.1", server_->port(), Key(), "echo", 2s);
    char byte = 'x';
    if (::send(fd.get(), &byte, 1, MSG_NOSIGNAL) != 1) return false;
    byte = 0;
    return ::recv(fd.get(), &byte, 1, 0) == 1 && byte == 'x';
  }

  std::unique_ptr<PeerServer> server_;
};

TEST_F(PeerServerTest, IdleStrangersCostNoThreadAndStopNobody) {
  int before = Threads();
  auto start = std::chrono::steady_clock::now();
  std::vector<Fd> idle;
  for (int i = 0; i < 100; ++i) idle.push_back(Idle("127.0.0.2", server_->port()));
  // The stranger's address holds 4 places; the rest are closed at once, before the
  // deadline (3 s from accept). The exact count is PendingPeers' test; here a loaded
  // machine may leave one or two a little late.
  int closed = 0;
  auto soon = start + 2s;
  for (auto& fd : idle) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        soon - std::chrono::steady_clock::now());
    if (ClosedWithin(fd.get(), std::max(left, 0ms)) <= std::max(left, 0ms)) ++closed;
  }
  EXPECT_GE(closed, 90);
  EXPECT_LE(Threads(), before);
  // A peer with the key, from another address, is served meanwhile.
  EXPECT_TRUE(Echoes());
  // Every connection is gone by the deadline.
  for (auto& fd : idle) EXPECT_LE(ClosedWithin(fd.get(), 4s), 4s);
}

TEST_F(PeerServerTest, OneDeadlineHowEverThePeerSpacesItsBytes) {
  Fd fd = Idle("127.0.0.3", server_->port());
  auto start = std::chrono::steady_clock::now();
  // Half a hello, a byte at a time: each byte arrives well within any per-read timeout.
  std::string hello = PeerHandshake::Client(Key(), "echo").TakeOutput();
  for (size_t i = 0; i < hello.size() / 2; ++i) {
    if (::send(fd.get(), &hello[i], 1, MSG_NOSIGNAL) != 1) break;
    std::this_thread::sleep_for(30ms);
  }
  ClosedWithin(fd.get(), 5s);
  auto took = std::chrono::steady_clock::now() - start;
  EXPECT_GE(took, 2900ms);
  EXPECT_LT(took, 4500ms);
  EXPECT_TRUE(Echoes());
}

TEST_F(PeerServerTest, AWrongKeyIsRefusedAndTheServerGoesOn) {
  EXPECT_THROW(PeerConnect("127.0.0.1", server_->port(), std::vector<uint8_t>(32, 9), "echo", 2s),
               Error);
  // A service this node does not run: the key is proven, and the verdict is no.
  try {
    PeerConnect("127.0.0.1", server_->port(), Key(), "nothing-here", 2s);
    ADD_FAILURE() << "connected to a service the server does not run";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("refused"), std::string::npos) << e.what();
  }
  EXPECT_TRUE(Echoes());
}

TEST(PeerServerFaults, NoThreadCostsOnlyThatConnection) {
  // As under a pids limit: the authenticated connection is closed unserved, and the
  // server, the process and the next peers carry on.
  PeerServer server("127.0.0.1", 0, Key(), PeerConfig{}, FaultPoints::Parse("peer-thread"));
  std::atomic<int> served = 0;
  server.Register("echo", [&](Fd, PeerIdentity) { ++served; });
  server.Start();
  for (int i = 0; i < 3; ++i) {
    Fd fd = PeerConnect("127.0.0.1", server.port(), Key(), "echo", 2s);
    EXPECT_LE(ClosedWithin(fd.get(), 2s), 2s);
  }
  EXPECT_EQ(served, 0);
  server.Stop();  // returns: no thread is counted as running
}

TEST(PeerServerPartners, APartnerIsServedWhatItsClusterMayUseAndTold) {
  // This node is of cluster "a"; cluster "b" is a partner with a key of its own, allowed
  // "echo" but not "files".
  std::vector<uint8_t> partnership(32, 5);
  std::vector<std::string> seen;
  std::mutex seen_mutex;
  PeerServer server(
      "127.0.0.1", 0,
      [&](const std::string& cluster) -> const std::vector<uint8_t>* {
        static const std::vector<uint8_t> own = Key();
        if (cluster.empty()) return &own;
        return cluster == "b" ? &partnership : nullptr;
      },
      [](const PeerIdentity& peer) {
        return peer.service == "echo" ? std::string() : std::string("not for partners");
      },
      PeerConfig{});
  auto serve = [&](Fd fd, PeerIdentity peer) {
    {
      std::lock_guard lock(seen_mutex);
      seen.push_back(peer.service + "/" + peer.cluster);
    }
    char byte;
    while (::recv(fd.get(), &byte, 1, 0) == 1) ::send(fd.get(), &byte, 1, MSG_NOSIGNAL);
  };
  server.Register("echo", serve);
  server.Register("files", serve);
  server.Start();
  auto echoes = [&](const PeerCredentials& credentials, const std::string& service) {
    Fd fd = PeerConnect("127.0.0.1", server.port(), credentials, service, 2s);
    char byte = 'x';
    EXPECT_EQ(::send(fd.get(), &byte, 1, MSG_NOSIGNAL), 1);
    return ::recv(fd.get(), &byte, 1, 0) == 1 && byte == 'x';
  };
  EXPECT_TRUE(echoes(PeerCredentials(partnership, "b"), "echo"));
  EXPECT_TRUE(echoes(PeerCredentials(Key()), "files"));  // this cluster's own node
  try {
    PeerConnect("127.0.0.1", server.port(), PeerCredentials(partnership, "b"), "files", 2s);
    ADD_FAILURE() << "a partner was served what its cluster may not use";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("does not serve 'files' to cluster 'b'"),
              std::string::npos)
        << e.what();
  }
  // The partnership's key names cluster b only; this cluster's key is not b's.
  EXPECT_THROW(PeerConnect("127.0.0.1", server.port(), PeerCredentials(partnership, "c"), "echo",
                           2s),
               Error);
  EXPECT_THROW(PeerConnect("127.0.0.1", server.port(), PeerCredentials(Key(), "b"), "echo", 2s),
               Error);
  server.Stop();
  std::sort(seen.begin(), seen.end());
  EXPECT_EQ(seen, (std::vector<std::string>{"echo/b", "files/"}));
}

}  // namespace
}  // namespace homeward
