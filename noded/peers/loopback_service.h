// The home's side of a guest's loopback connections (peer service "loopback"): a guest's
// daemon asks for a connection to a port on this node's loopback for one of this home's
// jobs, and the connection then carries the job's bytes (loopback_stream.h).
//
// What a guest may reach: an address of this node's loopback (127.0.0.0/8, ::1), never
// the address of another node (a loopback cluster puts every node on 127.0.0.0/8 of one
// host), and only for a job of this home: its home pid must be a mosrun here, and the
// connection's socket belongs to that mosrun's user (its fsuid when the socket is made),
// so the home's firewall and `ss -e` see the user's connection, not root's.
//
// Who may ask: only the node the job runs on. The registry's table of where this home's
// jobs run (JobWhereabouts) names the job's node, and the asking peer must be that node:
// known by the address its connection comes from (the handshake proves the cluster key,
// which every node holds; each node's connections come from its own address, see
// SetPeerSourceAddress), never by anything the request says. A job at home, frozen,
// ended, or running on another node is refused (EPERM), so a peer with the key opens
// loopback connections only as the users of the jobs it hosts.
#pragma once

#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>

#include "job_whereabouts.h"
#include "loopback_stream.h"
#include "peer_auth.h"

namespace homeward {

class LoopbackService {
 public:
  // `own_address`: this node's address, which its guests' jobs may reach like 127.0.0.1.
  // `whereabouts`: where this home's jobs away run (the job registry's; outlives this).
  LoopbackService(std::string own_address, JobWhereabouts& whereabouts)
      : own_address_(std::move(own_address)), whereabouts_(whereabouts) {}
  LoopbackService(const LoopbackService&) = delete;
  LoopbackService& operator=(const LoopbackService&) = delete;

  // Another node (from gossip): its address is never connected to for a guest, and is
  // how a request from that node is told.
  void AddNode(const std::string& name, const std::string& address);
  // One request, on the peer server's thread; the connection is carried on a thread of
  // its own, so that the peer server's thread is free at once.
  void Serve(std::unique_ptr<SecureStream> stream, const PeerIdentity& peer);
  // Breaks every carried connection and waits for their threads.
  void Stop() { connections_.StopAll(); }

 private:
  void Carry(CarriedConnections::Slot& slot, const std::string& peer);
  // Refuses (an errno and why) a target that is not this node's loopback.
  std::pair<int, std::string> CheckTarget(const LoopbackTarget& target);
  // Refuses (EPERM and why) a request for a job that does not run on the asking peer
  // (`peer`: its address and port, as its connection came).
  std::pair<int, std::string> CheckAsker(pid_t home_pid, const std::string& peer);

  std::string own_address_;
  std::mutex mutex_;
  JobWhereabouts& whereabouts_;
  std::set<std::string> node_addresses_;
  std::map<std::string, std::string> node_address_by_name_;
  CarriedConnections connections_;
};

}  // namespace homeward
