// The SYN gate in real network namespaces, without a cluster: a "node" namespace of the
// test's own, a guest's namespace with its rules, and a carrier whose home cannot be
// reached. The job's connect must fail as the target did, at once, not succeed at the
// carrier and reset later; a listener of the job's own stays its own. Needs root.
#include "syn_gate.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <cerrno>
#include <thread>

#include "error.h"
#include "loopback_carrier.h"

namespace homeward {
namespace {

// Connects from the guest's namespace; returns 0 or the errno connect gave.
int ConnectFrom(int net_ns, const char* address, uint16_t port) {
  int error = 0;
  InNetworkNamespace(net_ns, [&] {
    Fd fd = Fd::Adopt(HW_SYSCALL(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0), "socket"));
    sockaddr_in to{};
    to.sin_family = AF_INET;
    to.sin_port = htons(port);
    ::inet_pton(AF_INET, address, &to.sin_addr);
    timeval limit{20, 0};  // a held SYN that is never answered must not hang the test
    ::setsockopt(fd.get(), SOL_SOCKET, SO_SNDTIMEO, &limit, sizeof limit);
    error = ::connect(fd.get(), reinterpret_cast<sockaddr*>(&to), sizeof to) == 0 ? 0 : errno;
  });
  return error;
}

TEST(SynGate, AGuestsConnectFailsAsItsTargetDid) {
  if (::geteuid() != 0) GTEST_SKIP() << "needs root: network namespaces and netfilter rules";
  // Everything on a thread in a namespace of the test's own, which stands for the node:
  // the carrier makes its connections from there.
  Fd node = NewGuestNetwork();
  std::thread([&] {
    HW_SYSCALL(::setns(node.get(), CLONE_NEWNET), "enter the test's node namespace");
    Fd guest = NewGuestNetwork();
    RedirectLoopbackConnections(guest.get());
    LoopbackHome home;
    home.home = "home";
    home.host = "127.0.0.1";  // nothing listens there: the home cannot be reached
    home.port = 9;
    home.credentials.key.assign(32, 7);
    home.home_pid = 1;
    LoopbackCarrier carrier(guest.get(), home);

    // The loopback goes home, which cannot be reached: the host is unreachable.
    EXPECT_EQ(ConnectFrom(guest.get(), "127.0.0.1", 5432), EHOSTUNREACH);
    // Elsewhere from the node, which has no route there.
    EXPECT_EQ(ConnectFrom(guest.get(), "198.51.100.7", 80), ENETUNREACH);
    EXPECT_EQ(carrier.carried(), 0u);

    // A listener of the job's own keeps its connections.
    Fd listener;
    uint16_t port = 0;
    InNetworkNamespace(guest.get(), [&] {
      listener = Fd::Adopt(HW_SYSCALL(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0), "socket"));
      sockaddr_in at{};
      at.sin_family = AF_INET;
      at.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
      HW_SYSCALL(::bind(listener.get(), reinterpret_cast<sockaddr*>(&at), sizeof at), "bind");
      HW_SYSCALL(::listen(listener.get(), 4), "listen");
      socklen_t length = sizeof at;
      ::getsockname(listener.get(), reinterpret_cast<sockaddr*>(&at), &length);
      port = ntohs(at.sin_port);
    });
    EXPECT_EQ(ConnectFrom(guest.get(), "127.0.0.1", port), 0);
  }).join();
}

}  // namespace
}  // namespace homeward
