#include "guest_icmp.h"

#include <arpa/inet.h>
#include <netinet/icmp6.h>
#include <netinet/in.h>
#include <netinet/ip.h>
#include <netinet/ip_icmp.h>
#include <spdlog/spdlog.h>
#include <sys/socket.h>

#include <cerrno>
#include <cstring>

namespace homeward {

namespace {

constexpr uint8_t kUdp = 17;

uint16_t InternetChecksum(const uint8_t* data, size_t size) {
  uint32_t sum = 0;
  for (size_t i = 0; i + 1 < size; i += 2) sum += static_cast<uint32_t>(data[i] << 8 | data[i + 1]);
  if (size % 2) sum += static_cast<uint32_t>(data[size - 1] << 8);
  while (sum >> 16) sum = (sum & 0xffff) + (sum >> 16);
  return static_cast<uint16_t>(~sum);
}

Fd RawSocket(int family, int protocol) {
  Fd raw = Fd::Adopt(::socket(family, SOCK_RAW | SOCK_CLOEXEC, protocol));
  if (!raw.valid()) {
    spdlog::warn("no raw {} socket in a guest's namespace ({}): its calls to unreachable "
                 "targets time out",
                 family == AF_INET ? "IPv4" : "ICMPv6", strerror(errno));
  }
  return raw;
}

}  // namespace

GuestIcmp::GuestIcmp()
    : raw4_(RawSocket(AF_INET, IPPROTO_RAW)), raw6_(RawSocket(AF_INET6, IPPROTO_ICMPV6)) {}

void GuestIcmp::Unreachable(const LoopbackTarget& job, int error, std::span<const uint8_t> head) {
  bool v6 = job.family == AF_INET6;
  const Fd& raw = v6 ? raw6_ : raw4_;
  if (!raw.valid()) return;
  size_t ip = v6 ? 0 : sizeof(iphdr);  // IPv4: the header is ours to write
  std::vector<uint8_t> packet(ip + 8 + head.size());
  if (!v6) {
    iphdr header{};
    header.version = 4;
    header.ihl = 5;
    header.ttl = 64;
    header.protocol = IPPROTO_ICMP;
    header.tot_len = htons(static_cast<uint16_t>(packet.size()));
    header.saddr = htonl(INADDR_LOOPBACK);
    std::memcpy(&header.daddr, job.address.data(), 4);
    std::memcpy(packet.data(), &header, sizeof header);  // the kernel fills in id and checksum
  }
  uint8_t* icmp = packet.data() + ip;
  if (v6) {
    icmp[0] = ICMP6_DST_UNREACH;
    icmp[1] = error == ECONNREFUSED  ? ICMP6_DST_UNREACH_NOPORT
              : error == ENETUNREACH ? ICMP6_DST_UNREACH_NOROUTE
                                     : ICMP6_DST_UNREACH_ADDR;
  } else {
    icmp[0] = ICMP_DEST_UNREACH;
    icmp[1] = error == ECONNREFUSED  ? ICMP_PORT_UNREACH
              : error == ENETUNREACH ? ICMP_NET_UNREACH
                                     : ICMP_HOST_UNREACH;
  }
  std::memcpy(icmp + 8, head.data(), head.size());
  if (!v6) {
    uint16_t checksum = InternetChecksum(icmp, packet.size() - ip);
    icmp[2] = static_cast<uint8_t>(checksum >> 8);
    icmp[3] = static_cast<uint8_t>(checksum);
  }
  socklen_t length = 0;
  LoopbackTarget to = job;
  to.port = 0;  // a raw socket's address has no port (IPv6: it would be the protocol)
  sockaddr_storage address = to.ToSockaddr(&length);
  if (::sendto(raw.get(), packet.data(), packet.size(), 0, reinterpret_cast<sockaddr*>(&address),
               length) < 0) {
    spdlog::warn("an ICMP error to {} not sent: {}", job.ToString(), strerror(errno));
  }
}

std::vector<uint8_t> GuestIcmp::UdpHead(const LoopbackTarget& source,
                                        const LoopbackTarget& target) {
  bool v6 = source.family == AF_INET6;
  size_t ip = v6 ? 40 : 20;
  std::vector<uint8_t> head(ip + 8);
  if (v6) {
    head[0] = 0x60;
    head[5] = 8;  // payload length: the UDP header
    head[6] = kUdp;
    head[7] = 64;
    std::memcpy(head.data() + 8, source.address.data(), 16);
    std::memcpy(head.data() + 24, target.address.data(), 16);
  } else {
    head[0] = 0x45;
    head[3] = static_cast<uint8_t>(ip + 8);
    head[8] = 64;
    head[9] = kUdp;
    std::memcpy(head.data() + 12, source.address.data(), 4);
    std::memcpy(head.data() + 16, target.address.data(), 4);
  }
  uint8_t* udp = head.data() + ip;
  udp[0] = static_cast<uint8_t>(source.port >> 8);
  udp[1] = static_cast<uint8_t>(source.port);
  udp[2] = static_cast<uint8_t>(target.port >> 8);
  udp[3] = static_cast<uint8_t>(target.port);
  udp[5] = 8;  // length
  return head;
}

}  // namespace homeward
