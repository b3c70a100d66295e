// ICMP errors sent into a guest's network namespace to one of the job's sockets, as the
// router or target host on the other side of its carrier would send them, so that the
// job's kernel reports the error a program at home would see: a connect to an unreachable
// host fails with EHOSTUNREACH (syn_gate.h), and a connected UDP socket whose target
// answered "port unreachable" gets ECONNREFUSED. The error names the job's packet by its
// head (IP header and the first 8 bytes after), by which the job's kernel finds the
// socket; an unconnected UDP socket ignores it, as at home.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "fd.h"
#include "loopback_stream.h"

namespace homeward {

class GuestIcmp {
 public:
  // Raw sockets in the network namespace the calling thread is in (the guest's). Without
  // them (logged), errors are not sent, and the job's call times out instead.
  GuestIcmp();

  // "Unreachable" to the job's socket `job` for its packet whose head is `head`: `error`
  // ECONNREFUSED (port unreachable), ENETUNREACH (no route), else host unreachable.
  void Unreachable(const LoopbackTarget& job, int error, std::span<const uint8_t> head);

  // The head of a UDP datagram from the job's socket `source` to `target`, as its kernel
  // sent it (for IPv4 the header's checksum is not checked, for IPv6 there is none).
  static std::vector<uint8_t> UdpHead(const LoopbackTarget& source, const LoopbackTarget& target);

 private:
  Fd raw4_;  // IPPROTO_RAW: the IPv4 header is ours, sent from the guest's loopback
  Fd raw6_;  // ICMPv6: the kernel adds the header and the checksum
};

}  // namespace homeward
