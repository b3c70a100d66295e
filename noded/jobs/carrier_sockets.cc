#include "carrier_sockets.h"

#include <netinet/in.h>
#include <spdlog/spdlog.h>
#include <sys/socket.h>

#include <cstring>

#include "error.h"
#include "guest_network.h"
#include "loopback_stream.h"

namespace homeward {

namespace {

Fd TransparentListener(int family) {
  Fd fd = Fd::Adopt(HW_SYSCALL(::socket(family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0),
                               "carrier socket"));
  int on = 1;
  sockaddr_storage storage{};
  socklen_t length = 0;
  if (family == AF_INET6) {
    HW_SYSCALL(::setsockopt(fd.get(), SOL_IPV6, IPV6_TRANSPARENT, &on, sizeof on),
               "IPV6_TRANSPARENT");
    HW_SYSCALL(::setsockopt(fd.get(), IPPROTO_IPV6, IPV6_V6ONLY, &on, sizeof on), "IPV6_V6ONLY");
    auto& in6 = reinterpret_cast<sockaddr_in6&>(storage);
    in6.sin6_family = AF_INET6;
    in6.sin6_addr = in6addr_loopback;
    in6.sin6_port = htons(kLoopbackCarrierPort);
    length = sizeof in6;
  } else {
    HW_SYSCALL(::setsockopt(fd.get(), SOL_IP, IP_TRANSPARENT, &on, sizeof on), "IP_TRANSPARENT");
    auto& in = reinterpret_cast<sockaddr_in&>(storage);
    in.sin_family = AF_INET;
    in.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    in.sin_port = htons(kLoopbackCarrierPort);
    length = sizeof in;
  }
  HW_SYSCALL(::bind(fd.get(), reinterpret_cast<sockaddr*>(&storage), length),
             "bind the carrier to port {} of the guest's loopback", kLoopbackCarrierPort);
  HW_SYSCALL(::listen(fd.get(), 128), "listen on the guest's loopback");
  return fd;
}

// The carrier's UDP socket on port 1 of the namespace's loopback: TPROXY hands it every
// datagram that starts a flow, with the datagram's target as its original destination.
Fd TransparentDatagramSocket(int family) {
  Fd fd = Fd::Adopt(HW_SYSCALL(::socket(family, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0),
                               "carrier's UDP socket"));
  int on = 1;
  if (family == AF_INET6) {
    HW_SYSCALL(::setsockopt(fd.get(), SOL_IPV6, IPV6_TRANSPARENT, &on, sizeof on),
               "IPV6_TRANSPARENT");
    HW_SYSCALL(::setsockopt(fd.get(), SOL_IPV6, IPV6_RECVORIGDSTADDR, &on, sizeof on),
               "IPV6_RECVORIGDSTADDR");
    HW_SYSCALL(::setsockopt(fd.get(), IPPROTO_IPV6, IPV6_V6ONLY, &on, sizeof on), "IPV6_V6ONLY");
  } else {
    HW_SYSCALL(::setsockopt(fd.get(), SOL_IP, IP_TRANSPARENT, &on, sizeof on), "IP_TRANSPARENT");
    HW_SYSCALL(::setsockopt(fd.get(), SOL_IP, IP_RECVORIGDSTADDR, &on, sizeof on),
               "IP_RECVORIGDSTADDR");
  }
  LoopbackTarget where;
  where.family = family;
  if (family == AF_INET6) {
    std::memcpy(where.address.data(), &in6addr_loopback, 16);
  } else {
    where.address[0] = 127;
    where.address[3] = 1;
  }
  where.port = kLoopbackCarrierPort;
  socklen_t length = 0;
  sockaddr_storage storage = where.ToSockaddr(&length);
  HW_SYSCALL(::bind(fd.get(), reinterpret_cast<sockaddr*>(&storage), length),
             "bind the carrier to UDP port {} of the guest's loopback", kLoopbackCarrierPort);
  return fd;
}

}  // namespace

CarrierSockets CarrierSockets::Open(int net_ns, const std::string& job) {
  CarrierSockets sockets;
  InNetworkNamespace(net_ns, [&] {
    try {
      sockets.gate = std::make_unique<SynGate>();
    } catch (const Error& e) {
      // The rules queue no SYN where the kernel has no NFQUEUE; if they do, the job's
      // connections wait until a carrier holds the queue.
      spdlog::error("{}: its connections are not held for their target's answer: {}", job,
                    e.what());
    }
    sockets.icmp = std::make_unique<GuestIcmp>();
    sockets.listeners.push_back(TransparentListener(AF_INET));
    sockets.udp_listeners.push_back(TransparentDatagramSocket(AF_INET));
    if (!HasIpv6()) return;
    try {
      sockets.listeners.push_back(TransparentListener(AF_INET6));
      sockets.udp_listeners.push_back(TransparentDatagramSocket(AF_INET6));
    } catch (const Error& e) {
      spdlog::warn("{}: its IPv6 connections and datagrams are not carried: {}", job, e.what());
    }
  });
  return sockets;
}

}  // namespace homeward
