// What a guest's loopback carrier listens on in the guest's network namespace. Made before
// any process of the job runs there (Job::Start for a job started here, PrepareLanding for
// one restored here): a datagram the job sends before the carrier's UDP socket is there is
// lost, and a SYN before its listener and gate waits a second for its resend. Made early,
// what comes waits in the sockets' queues until the carrier takes them (LoopbackCarrier).
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "fd.h"
#include "guest_icmp.h"
#include "syn_gate.h"

namespace homeward {

struct CarrierSockets {
  std::vector<Fd> listeners;  // TCP: IPv4, and IPv6 when the namespace has it
  std::vector<Fd> udp_listeners;
  std::unique_ptr<SynGate> gate;     // none: the kernel has no NFQUEUE
  std::unique_ptr<GuestIcmp> icmp;   // errors of the targets of the job's UDP flows outside

  // Made in the network namespace `net_ns` (this thread enters it and comes back); `job`
  // names the job in the log. Throws Error when the IPv4 sockets cannot be made.
  static CarrierSockets Open(int net_ns, const std::string& job);
  bool opened() const { return !listeners.empty(); }
};

}  // namespace homeward
