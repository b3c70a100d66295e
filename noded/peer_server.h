// PeerServer: the daemon's TCP endpoint for other nodes (address:peer_port). Every
// connection runs the cluster-key handshake on its own thread, so a slow or hostile peer
// never blocks the event loop or other peers; an authenticated connection is handed to
// the service it asked for ("files"; later "migration", "relay"). A peer without the key
// gets nothing, and the refusal is logged.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <map>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "fd.h"
#include "peer_auth.h"

namespace homeward {

using PeerService = std::function<void(Fd, PeerIdentity)>;

class PeerServer {
 public:
  PeerServer(std::string address, uint16_t port, std::vector<uint8_t> key);
  PeerServer(const PeerServer&) = delete;
  PeerServer& operator=(const PeerServer&) = delete;
  ~PeerServer();

  // Registers the handler of `service`; it runs on the connection's own thread and owns
  // the connection. Register before Start.
  void Register(const std::string& service, PeerService handler);
  // Binds and listens; throws Error naming the address when it cannot.
  void Start();
  // Stops accepting, shuts every connection down and waits for their threads.
  void Stop();
  uint16_t port() const { return port_; }

 private:
  void AcceptLoop();
  void RunConnection(Fd fd, std::string who);

  std::string address_;
  uint16_t port_;
  std::vector<uint8_t> key_;
  std::map<std::string, PeerService> services_;
  Fd listener_;
  std::thread acceptor_;
  std::mutex mutex_;
  std::condition_variable idle_;
  std::set<int> connections_;  // in their handshake; services track their own
  int running_ = 0;
  bool stopping_ = false;
};

}  // namespace homeward
