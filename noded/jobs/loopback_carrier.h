// A guest's loopback TCP connections carried to its home ("localhost means home"). A guest
// runs in a network namespace of its own with only its loopback. In it, two mangle rules
// (iptables and ip6tables) hand every TCP connection to an address of the loopback that
// no socket of the namespace owns to the carrier's transparent listener (TPROXY): a
// connection to a port the job itself listens on stays the job's own, as anywhere. The
// daemon's listener, made in the namespace but held by the daemon (so no part of the
// job's checkpoint), accepts it; its local address is where the job connected. The
// daemon carries it over a peer connection (service "loopback") to the job's home, whose
// daemon connects to that address and port on its own loopback (loopback_service.h).
// The guest's IPv4 TCP connections to other addresses come to the carrier the same way
// (a routing rule of the namespace), and the daemon makes them from this node as the
// job's user, never to an address of this node itself ("other outbound traffic leaves
// from the node").
#pragma once

#include <sys/types.h>

#include <atomic>
#include <cstdint>
#include <string>
#include <thread>
#include <vector>

#include "fd.h"
#include "fs_credentials.h"
#include "loopback_stream.h"

namespace homeward {

// Where the carrier listens in a guest's namespace: a port below 1024, which the job
// (without CAP_NET_BIND_SERVICE) cannot take first. A job's own connection to it is
// carried home like any other.
constexpr uint16_t kLoopbackCarrierPort = 1;

// A fresh network namespace with its loopback up; made on a thread of its own, so the
// caller's stays where it was.
Fd NewGuestNetwork();
// Sets the rules that hand the loopback's connections to the carrier in the network
// namespace `net_ns` (replacing its mangle table), and the routing rule that brings its
// IPv4 TCP connections to other addresses there too; throws Error naming the tool's
// complaint. IPv6 rules are skipped when the namespace has no IPv6 (and IPv6 targets
// other than ::1 stay unreachable).
void RedirectLoopbackConnections(int net_ns);

// Runs `work` on a thread of its own that has entered the network namespace `net_ns`,
// and waits for it: sockets it makes, and children it starts, are in that namespace.
void InNetworkNamespace(int net_ns, const std::function<void()>& work);

struct LoopbackHome {
  std::string home;  // its name, for the log
  std::string host;  // where its daemon's peer port is
  uint16_t port = 0;
  std::vector<uint8_t> key;
  pid_t home_pid = 0;  // the job
  FsIdentity user;     // the job's user: its connections made from this node are theirs
};

// The carrier of one guest: listens in the guest's namespace and carries each connection
// home on a thread of its own; destroyed, it stops listening and breaks what it carries.
class LoopbackCarrier {
 public:
  LoopbackCarrier(int net_ns, LoopbackHome home);
  LoopbackCarrier(const LoopbackCarrier&) = delete;
  LoopbackCarrier& operator=(const LoopbackCarrier&) = delete;
  ~LoopbackCarrier();

  uint64_t carried() const { return carried_; }

 private:
  void AcceptLoop();
  void Carry(CarriedConnections::Slot& slot);
  // A connection to an address that is not the loopback's: made from this node, as the
  // job's user, unless the target is this node's own (RefusedOutside).
  void CarryOut(CarriedConnections::Slot& slot, const LoopbackTarget& target);

  LoopbackHome home_;
  std::vector<Fd> listeners_;  // IPv4, and IPv6 when the namespace has it
  Fd wake_;                    // an eventfd: the destructor wakes the acceptor with it
  std::atomic<uint64_t> carried_{0};
  CarriedConnections connections_;
  std::thread acceptor_;
};

}  // namespace homeward
