// The home's side of a guest's loopback connections (peer service "loopback"): a guest's
// daemon asks for a connection to a port on this node's loopback for one of this home's
// jobs, and the connection then carries the job's bytes (loopback_stream.h).
//
// What a guest may reach: an address of this node's loopback (127.0.0.0/8, ::1), never
// the address of another node (a loopback cluster puts every node on 127.0.0.0/8 of one
// host), and only for a job of this home: its home pid must be a mosrun here, and the
// connection's socket belongs to that mosrun's user (its fsuid when the socket is made),
// so the home's firewall and `ss -e` see the user's connection, not root's.
#pragma once

#include <memory>
#include <mutex>
#include <set>
#include <string>

#include "loopback_stream.h"
#include "peer_auth.h"

namespace homeward {

class LoopbackService {
 public:
  // `own_address`: this node's address, which its guests' jobs may reach like 127.0.0.1.
  explicit LoopbackService(std::string own_address) : own_address_(std::move(own_address)) {}
  LoopbackService(const LoopbackService&) = delete;
  LoopbackService& operator=(const LoopbackService&) = delete;

  // Another node's address (from gossip): never connected to for a guest.
  void AddNodeAddress(const std::string& address);
  // One request, on the peer server's thread; the connection is carried on a thread of
  // its own, so that the peer server's thread is free at once.
  void Serve(std::unique_ptr<SecureStream> stream, const PeerIdentity& peer);
  // Breaks every carried connection and waits for their threads.
  void Stop() { connections_.StopAll(); }

 private:
  void Carry(CarriedConnections::Slot& slot, const std::string& peer);
  // Refuses (an errno and why) a target that is not this node's loopback.
  std::pair<int, std::string> CheckTarget(const LoopbackTarget& target);

  std::string own_address_;
  std::mutex mutex_;
  std::set<std::string> node_addresses_;
  CarriedConnections connections_;
};

}  // namespace homeward
