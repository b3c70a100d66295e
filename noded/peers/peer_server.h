// PeerServer: the daemon's TCP endpoint for other nodes (address:peer_port). Before a
// connection proves the cluster key it costs no thread: one gate thread runs every
// pending handshake over non-blocking sockets with poll(), within the limits of
// PeerConfig (per source address, in all, one deadline each; noded/peers/peer_admission.h).
// A client proves its own cluster's key or, from a partner cluster, the partnership's
// (peer_auth.h); what a partner's node may use is then asked of PartnerAdmission.
// Only an authenticated connection gets a thread, for the service it asked for
// ("files", "jobs", "migration", "loopback"), and encryption (secure_channel.h): a stream service is
// handed a SecureStream that seals and opens in place on its thread, an fd service the
// plain end of a SecureChannel; never the TCP socket in clear. A stranger gets nothing,
// and refusals are logged at a bounded rate.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "config.h"
#include "fault.h"
#include "fd.h"
#include "peer_admission.h"
#include "peer_auth.h"
#include "secure_channel.h"

namespace homeward {

using PeerService = std::function<void(Fd, PeerIdentity)>;
// Whether a partner cluster's node may use the service it asked for: empty to serve it,
// otherwise why not (logged; the client learns that its cluster is refused). Nodes of
// this cluster use every service.
using PartnerAdmission = std::function<std::string(const PeerIdentity& peer)>;
using PeerStreamService = std::function<void(std::unique_ptr<SecureStream>, PeerIdentity)>;

class PeerServer {
 public:
  // Fault point "peer-thread": no thread can be had for an authenticated connection, as
  // under a pids limit.
  // `keys` gives the key a client of each cluster proves (partners of this cluster), and
  // `admit` what a partner's node may use.
  PeerServer(std::string address, uint16_t port, PeerHandshake::KeyChooser keys,
             PartnerAdmission admit, PeerConfig limits, FaultPoints faults = {});
  // Nodes of this cluster only, which prove `key`.
  PeerServer(std::string address, uint16_t port, std::vector<uint8_t> key, PeerConfig limits,
             FaultPoints faults = {});
  PeerServer(const PeerServer&) = delete;
  PeerServer& operator=(const PeerServer&) = delete;
  ~PeerServer();

  // Registers the handler of `service`; it runs on a thread of its own and owns the
  // connection. Register before Start.
  void Register(const std::string& service, PeerService handler);
  // The same for a service that reads and writes the SecureStream itself (the bulk
  // services: no pump thread, no socket pair).
  void RegisterStream(const std::string& service, PeerStreamService handler);
  // Binds and listens; throws Error naming the address when it cannot.
  void Start();
  // Stops accepting, closes every pending handshake and waits for the services' threads
  // (the services end their own connections first).
  void Stop();
  uint16_t port() const { return port_; }

 private:
  // A connection in its handshake; owned by the gate thread.
  struct Pending {
    Fd fd;
    std::string who;  // "A.B.C.D:PORT", for the log
    PeerHandshake handshake;
    std::string out;  // handshake bytes the socket has not taken yet
  };

  void GateLoop();
  void GateRound();
  void AcceptSome(int64_t now_ms);
  void Step(int fd, short revents);
  void Refuse(int fd, PeerRefusal reason, const std::string& why);
  void HandOff(int fd);
  void Launch(std::unique_ptr<SecureStream> stream, PeerIdentity peer,
              PeerStreamService* handler);
  int64_t NowMs() const;

  std::string address_;
  uint16_t port_;
  PeerHandshake::KeyChooser keys_;
  PartnerAdmission admit_;
  std::map<std::string, PeerStreamService> services_;
  FaultPoints faults_;
  Fd listener_;
  Fd wake_;  // an eventfd: Stop wakes the gate thread with it
  std::thread gate_;
  // The gate thread's own state.
  PendingPeers admission_;
  RefusalLog refusals_;
  std::map<int, std::unique_ptr<Pending>> pending_;
  int64_t listen_again_ms_ = 0;  // accepting pauses briefly when descriptors run out
  // Shared with the services' threads.
  std::mutex mutex_;
  std::condition_variable idle_;
  int running_ = 0;  // services' threads
  bool stopping_ = false;
};

}  // namespace homeward
