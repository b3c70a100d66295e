// A guest's loopback TCP connections carried to its home ("localhost means home"). A guest
// runs in a network namespace of its own with only its loopback. In it, two mangle rules
// (iptables and ip6tables) hand every TCP connection to an address of the loopback that
// no socket of the namespace owns to the carrier's transparent listener (TPROXY): a
// connection to a port the job itself listens on stays the job's own, as anywhere. The
// daemon's listener, made in the namespace but held by the daemon (so no part of the
// job's checkpoint), accepts it; its local address is where the job connected. The
// daemon carries it over a peer connection (service "loopback") to the job's home, whose
// daemon connects to that address and port on its own loopback (loopback_service.h).
// The guest's TCP connections to other addresses (IPv4, and IPv6 where the node has it)
// come to the carrier the same way (routing rules of the namespace), and the daemon makes
// them from this node as the job's user, never to an address of this node itself ("other
// outbound traffic leaves from the node").
//
// UDP the same way: a datagram of the job's to an address of its loopback that no socket
// of the namespace owns (a resolver at the home's 127.0.0.53, say) starts a flow carried
// home (the peer service "loopback" with transport udp); one to another address starts a
// flow sent from this node, as the job's user, under the same refusals. A flow is one
// socket of the job and one target: the carrier receives its first datagram on a
// transparent UDP socket (TPROXY keeps the target as the datagram's original destination),
// then makes the flow's own socket in the namespace, bound to the target and connected to
// the job's socket, which takes the flow's later datagrams and sends the replies, with the
// target's address and port as their source. Flows are capped per guest (the oldest ends
// when one more starts) and end when idle.
#pragma once

#include <sys/types.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "carrier_sockets.h"
#include "fd.h"
#include "fs_credentials.h"
#include "guest_icmp.h"
#include "guest_network.h"
#include "loopback_stream.h"
#include "peer_auth.h"
#include "syn_gate.h"

namespace homeward {

// A guest's UDP flows: at most this many at once (one more ends the oldest), each ended
// after this long without a datagram either way.
constexpr size_t kMaxUdpFlows = 64;
constexpr auto kUdpFlowIdle = std::chrono::seconds(30);

struct LoopbackHome {
  std::string home;  // its name, for the log
  std::string host;  // where its daemon's peer port is
  uint16_t port = 0;
  PeerCredentials credentials;
  pid_t home_pid = 0;  // the job
  FsIdentity user;     // the job's user: its connections made from this node are theirs
  // This node's daemon ports (peer, gossip): never a target of the job's from this node.
  std::vector<uint16_t> daemon_ports;
};

// The carrier of one guest: listens in the guest's namespace and carries each connection
// home on a thread of its own; destroyed, it stops listening and breaks what it carries.
class LoopbackCarrier {
 public:
  // `sockets`: made in the guest's namespace before the job ran there; else made now.
  LoopbackCarrier(int net_ns, LoopbackHome home, CarrierSockets sockets = {});
  LoopbackCarrier(const LoopbackCarrier&) = delete;
  LoopbackCarrier& operator=(const LoopbackCarrier&) = delete;
  ~LoopbackCarrier();

  uint64_t carried() const { return carried_; }

 private:
  void AcceptLoop();
  // A connection the carrier accepted without its SYN held first (a kernel without the
  // gate): its target is opened now, and a refusal resets the job's connection.
  void Carry(CarriedConnections::Slot& slot);
  // Opens the connection the job makes to `target` into the slot: at home for the
  // loopback (OpenAtHome), else from this node; 0 or the errno (and why).
  int Open(CarriedConnections::Slot& slot, const LoopbackTarget& target, std::string* why);
  // A connection to an address that is not the loopback's: made from this node, as the
  // job's user, unless the target is this node's own (RefusedOutside).
  int ConnectOut(CarriedConnections::Slot& slot, const LoopbackTarget& target, std::string* why);
  void CarryOpened(CarriedConnections::Slot& slot, const LoopbackTarget& target);
  void LogNotMade(const LoopbackTarget& target, const std::string& why);

  // SYNs the gate holds: each new connection is opened on a thread of its own, its SYNs
  // then given their verdict, and a passed one's accepted socket handed to that thread.
  struct Held;
  void HoldSyns();
  void OpenHeld(CarriedConnections::Slot& slot, const std::shared_ptr<Held>& held);
  // The thread of a held connection that is waiting for the job's socket takes it: true.
  bool HandOver(Fd& socket);
  // Opens a connection (or a UDP flow) to `target` at home, asking again for a moment
  // while the home does not know the job is here; the stream goes into the slot. Returns
  // 0, the errno of the refusal (and why), or ECANCELED when the carrier stops.
  int OpenAtHome(CarriedConnections::Slot& slot, const LoopbackTarget& target,
                 LoopbackTransport transport, std::string* why);

  struct UdpFlow;
  // Takes the datagrams waiting on a transparent UDP listener: each joins its flow, or
  // starts one.
  void ReceiveDatagrams(int listener);
  void StopFlows();
  void StartFlow(const LoopbackTarget& source, const LoopbackTarget& target, std::string first);
  // The flow's own socket in the guest's namespace (made there by this thread, which
  // enters it and comes back).
  Fd FlowSocket(const LoopbackTarget& source, const LoopbackTarget& target);
  void CarryFlowHome(CarriedConnections::Slot& slot, UdpFlow& flow);
  void CarryFlowOut(CarriedConnections::Slot& slot, UdpFlow& flow);

  LoopbackHome home_;
  Fd guest_net_;  // the guest's network namespace, and the daemon's own
  Fd own_net_;
  std::vector<Fd> listeners_;  // IPv4, and IPv6 when the namespace has it
  std::vector<Fd> udp_listeners_;
  std::mutex flows_mutex_;
  std::map<std::string, std::shared_ptr<UdpFlow>> flows_;  // by "source>target"
  uint64_t flows_started_ = 0;
  Fd wake_;                    // an eventfd: the destructor wakes the acceptor with it
  std::unique_ptr<SynGate> gate_;  // none: the kernel has no NFQUEUE
  std::unique_ptr<GuestIcmp> icmp_;  // errors of the targets of its UDP flows outside
  std::mutex held_mutex_;
  std::condition_variable handed_;
  std::map<std::string, std::shared_ptr<Held>> held_;  // by "source>target"
  bool stopping_ = false;                              // under held_mutex_
  std::atomic<uint64_t> carried_{0};
  CarriedConnections connections_;
  std::thread acceptor_;
};

}  // namespace homeward
