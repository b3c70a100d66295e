// A guest's network: a namespace of its own with only its loopback up, whose mangle rules
// and routes hand every TCP connection and UDP datagram it makes (to its loopback, or
// elsewhere) to the daemon's carrier in it (loopback_carrier.h). ICMP and other
// protocols find no route.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "fd.h"
#include "loopback_stream.h"

namespace homeward {

// Where the carrier listens in a guest's namespace (TCP and UDP): a port below 1024, which
// the job (without CAP_NET_BIND_SERVICE) cannot take first. A job's own connection to it
// is carried home like any other.
constexpr uint16_t kLoopbackCarrierPort = 1;
// The mark of the UDP sockets the carrier makes in the namespace (a flow's own, bound to
// its target): their datagrams to the job are the job's replies, never a new flow, also
// when the job's socket has gone meanwhile. The job cannot set a mark (CAP_NET_ADMIN).
constexpr uint32_t kFlowMark = 0x2710;

// A fresh network namespace with its loopback up; made on a thread of its own, so the
// caller's stays where it was.
Fd NewGuestNetwork();
// Sets the rules that hand the loopback's TCP connections and UDP datagrams to the carrier
// in the network namespace `net_ns` (replacing its mangle table), and the routing rules
// that bring its TCP and UDP to other addresses there too; throws Error naming the tool's
// complaint. IPv6 rules are skipped when the namespace has no IPv6 (and IPv6 targets
// other than ::1 stay unreachable).
void RedirectLoopbackConnections(int net_ns);

// Runs `work` on a thread of its own that has entered the network namespace `net_ns`,
// and waits for it: sockets it makes, and children it starts, are in that namespace.
void InNetworkNamespace(int net_ns, const std::function<void()>& work);

// Whether this node's kernel has IPv6 (then so does every namespace made on it).
bool HasIpv6();

// Why the carrier does not make a connection (or send a datagram, `udp`) to `target` from
// this node (empty: it does): the node's own addresses (a guest must not reach its host's
// services, which a connection from the node itself would), the daemons' `ports` (peer,
// gossip), and for UDP multicast and broadcast (a guest talks to one host at a time).
std::string RefusedOutside(const LoopbackTarget& target, const std::vector<uint16_t>& ports,
                           bool udp);

}  // namespace homeward
