// The loopback service's messages and the carrying pump, over socket pairs: the request
// and answer go through as sent, a malformed request is refused, and 8 MiB cross the pump
// both ways at once with a slow reader at one end (back-pressure, no byte lost or
// reordered, half-closes passed on); a UDP flow's request says so, and its datagrams (an
// empty one too) cross with their boundaries, those fed first, until the flow is idle.
#include "loopback_stream.h"

#include <arpa/inet.h>
#include <sys/socket.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <chrono>
#include <cstring>
#include <string>
#include <thread>

#include "error.h"

namespace homeward {
namespace {

struct Pair {
  Fd a, b;
};

Pair StreamPair() {
  int fds[2];
  HW_SYSCALL(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds), "socketpair");
  return {Fd::Adopt(fds[0]), Fd::Adopt(fds[1])};
}

LoopbackTarget V4(const char* text, uint16_t port) {
  sockaddr_storage storage{};
  auto& in = reinterpret_cast<sockaddr_in&>(storage);
  in.sin_family = AF_INET;
  ::inet_pton(AF_INET, text, &in.sin_addr);
  in.sin_port = htons(port);
  return LoopbackTarget::FromSockaddr(storage);
}

TEST(LoopbackTarget, OnlyTheLoopbackIsLoopback) {
  EXPECT_TRUE(V4("127.0.0.1", 1).IsLoopback());
  EXPECT_TRUE(V4("127.77.3.2", 1).IsLoopback());
  EXPECT_FALSE(V4("10.0.0.1", 1).IsLoopback());
  EXPECT_FALSE(V4("128.0.0.1", 1).IsLoopback());
  EXPECT_EQ(V4("127.0.0.1", 5432).ToString(), "127.0.0.1:5432");
  sockaddr_storage storage{};
  auto& in6 = reinterpret_cast<sockaddr_in6&>(storage);
  in6.sin6_family = AF_INET6;
  in6.sin6_addr = in6addr_loopback;
  in6.sin6_port = htons(80);
  LoopbackTarget six = LoopbackTarget::FromSockaddr(storage);
  EXPECT_TRUE(six.IsLoopback());
  EXPECT_EQ(six.ToString(), "[::1]:80");
  ::inet_pton(AF_INET6, "::ffff:127.0.0.1", &in6.sin6_addr);
  EXPECT_FALSE(LoopbackTarget::FromSockaddr(storage).IsLoopback());
  socklen_t length = 0;
  sockaddr_storage back = six.ToSockaddr(&length);
  EXPECT_EQ(length, sizeof(sockaddr_in6));
  EXPECT_EQ(std::memcmp(&reinterpret_cast<sockaddr_in6&>(back).sin6_addr, &in6addr_loopback, 16),
            0);
}

TEST(LoopbackMessages, RequestAndAnswerGoThrough) {
  Pair pair = StreamPair();
  auto guest = SecureStream::Plain(std::move(pair.a), "guest");
  auto home = SecureStream::Plain(std::move(pair.b), "home");
  SendLoopbackOpen(*guest, 4242, V4("127.0.0.1", 5432));
  LoopbackOpenRequest request = ReadLoopbackOpen(*home);
  EXPECT_EQ(request.home_pid, 4242);
  EXPECT_EQ(request.target.ToString(), "127.0.0.1:5432");
  SendLoopbackOpened(*home, ECONNREFUSED, "connect: refused");
  std::string why;
  EXPECT_EQ(ReadLoopbackOpened(*guest, &why), ECONNREFUSED);
  EXPECT_EQ(why, "connect: refused");
}

TEST(LoopbackMessages, AUdpFlowSaysSo) {
  Pair pair = StreamPair();
  auto guest = SecureStream::Plain(std::move(pair.a), "guest");
  auto home = SecureStream::Plain(std::move(pair.b), "home");
  SendLoopbackOpen(*guest, 7, V4("127.0.0.53", 53), LoopbackTransport::kUdp);
  SendLoopbackOpen(*guest, 8, V4("127.0.0.1", 80));
  LoopbackOpenRequest udp = ReadLoopbackOpen(*home);
  EXPECT_EQ(udp.transport, LoopbackTransport::kUdp);
  EXPECT_EQ(udp.target.ToString(), "127.0.0.53:53");
  EXPECT_EQ(ReadLoopbackOpen(*home).transport, LoopbackTransport::kTcp);
}

TEST(CarryDatagrams, DatagramsKeepTheirBoundariesUntilIdle) {
  int fds[2];
  HW_SYSCALL(::socketpair(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0, fds), "socketpair");
  Fd job = Fd::Adopt(fds[0]), flow = Fd::Adopt(fds[1]);  // the job's socket, the flow's
  Pair peer = StreamPair();
  auto stream = SecureStream::Plain(std::move(peer.a), "carrier");
  auto home = SecureStream::Plain(std::move(peer.b), "home");
  DatagramFeed feed;
  ASSERT_TRUE(feed.Push("first"));
  DatagramCarry how;
  how.idle = std::chrono::milliseconds(300);
  how.feed = &feed;
  auto started = std::chrono::steady_clock::now();
  CarriedBytes carried;
  std::thread pump([&] { carried = CarryDatagrams(*stream, flow.get(), how); });
  std::string datagram;
  ASSERT_TRUE(ReadDatagram(*home, &datagram));
  EXPECT_EQ(datagram, "first");
  ASSERT_EQ(::send(job.get(), "", 0, 0), 0);
  ASSERT_EQ(::send(job.get(), "second", 6, 0), 6);
  ASSERT_TRUE(ReadDatagram(*home, &datagram));
  EXPECT_EQ(datagram, "");
  ASSERT_TRUE(ReadDatagram(*home, &datagram));
  EXPECT_EQ(datagram, "second");
  std::string big(kMaxDatagram / 2, 'x');
  WriteDatagram(*home, "reply", 5);
  WriteDatagram(*home, big.data(), big.size());
  char buffer[kMaxDatagram];
  EXPECT_EQ(::recv(job.get(), buffer, sizeof buffer, 0), 5);
  EXPECT_EQ(std::string(buffer, 5), "reply");
  EXPECT_EQ(::recv(job.get(), buffer, sizeof buffer, 0), static_cast<ssize_t>(big.size()));
  // Nothing more either way: the flow ends by itself, and the home sees its stream end (a
  // plain stream ends; an encrypted one breaks without its end record).
  pump.join();
  EXPECT_GE(std::chrono::steady_clock::now() - started, how.idle);
  EXPECT_EQ(carried.to_stream, 11u);
  EXPECT_EQ(carried.from_stream, 5 + big.size());
  bool more = true;
  try {
    more = ReadDatagram(*home, &datagram);
  } catch (const Error&) {
    more = false;
  }
  EXPECT_FALSE(more);
}

TEST(LoopbackMessages, MalformedRequestIsRefused) {
  Pair pair = StreamPair();
  auto home = SecureStream::Plain(std::move(pair.b), "home");
  uint32_t huge = htole32(1u << 30);
  ASSERT_EQ(::write(pair.a.get(), &huge, sizeof huge), static_cast<ssize_t>(sizeof huge));
  try {
    ReadLoopbackOpen(*home);
    FAIL() << "a 1 GiB message was taken";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kInvalidInput);
  }
}

TEST(CarryBothWays, EightMegabytesEachWayWithASlowReader) {
  constexpr size_t kBytes = 8 << 20;
  Pair job = StreamPair();   // the job's connection: a is the job, b the carrier's side
  Pair peer = StreamPair();  // the peer connection: a the carrier's stream, b the home
  auto stream = SecureStream::Plain(std::move(peer.a), "carrier");
  auto home = SecureStream::Plain(std::move(peer.b), "home");
  std::string sent(kBytes, '\0');
  for (size_t i = 0; i < kBytes; ++i) sent[i] = static_cast<char>(i * 7 + i / 4096);

  CarriedBytes carried;
  std::thread pump([&] { carried = CarryBothWays(*stream, job.b.get()); });
  // The home echoes what it reads, slowly at first: the job's writes must wait, not pile up.
  std::thread echo([&] {
    char buffer[16384];
    int rounds = 0;
    for (;;) {
      size_t n = home->Read(buffer, sizeof buffer);
      if (n == 0) break;
      if (++rounds < 20) std::this_thread::sleep_for(std::chrono::milliseconds(5));
      home->Write(buffer, n);
    }
    home->CloseWrite();
  });
  std::thread writer([&] {
    size_t at = 0;
    while (at < kBytes) {
      ssize_t n = ::write(job.a.get(), sent.data() + at, std::min<size_t>(65536, kBytes - at));
      ASSERT_GT(n, 0);
      at += static_cast<size_t>(n);
    }
    ::shutdown(job.a.get(), SHUT_WR);
  });
  std::string got;
  char buffer[65536];
  for (;;) {
    ssize_t n = ::read(job.a.get(), buffer, sizeof buffer);
    ASSERT_GE(n, 0);
    if (n == 0) break;
    got.append(buffer, static_cast<size_t>(n));
  }
  writer.join();
  echo.join();
  pump.join();
  EXPECT_EQ(got.size(), kBytes);
  EXPECT_TRUE(got == sent);
  EXPECT_EQ(carried.to_stream, kBytes);
  EXPECT_EQ(carried.from_stream, kBytes);
}

TEST(CarriedConnections, StopAllBreaksWhatIsCarried) {
  CarriedConnections connections;
  Pair job = StreamPair();
  Pair peer = StreamPair();
  ASSERT_TRUE(connections.Launch(std::move(job.b), SecureStream::Plain(std::move(peer.a), "c"),
                                 [](CarriedConnections::Slot& slot) {
                                   CarryBothWays(*slot.stream, slot.socket.get());
                                 }));
  // Nothing moves on either side: only StopAll ends it.
  connections.StopAll();
  char byte;
  EXPECT_EQ(::read(job.a.get(), &byte, 1), 0);
  EXPECT_FALSE(connections.Launch(Fd(), nullptr, [](CarriedConnections::Slot&) {}));
}

}  // namespace
}  // namespace homeward
