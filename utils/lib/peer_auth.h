// Peer authentication: the mutual challenge-response handshake that opens every
// connection between nodes (file service, migration, job relay). Sans-I/O: the handshake
// objects consume and produce bytes; PeerConnect/PeerAccept run one on a socket within
// one deadline for the whole exchange (the daemon's PeerServer runs many at once on
// non-blocking sockets, noded/peer_server.h).
//
//   client -> server  "HWPEER01" | client nonce (32) | service length (1) | service
//   server -> client  "HWPEER01" | server nonce (32) | tag("server")
//   client -> server  tag("client")
//   server -> client  1 byte: 1 = accepted, 0 = no such service
//
// tag(role) = crypto_auth (HMAC-SHA512-256) under the cluster key of
// role | client nonce | server nonce | service. Each side proves the key over both fresh
// nonces, so a recorded exchange cannot be replayed, and the role in the tag stops a
// server's proof being reflected back as a client's. A peer without the key learns
// nothing but the server's nonce and a tag it cannot check.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "fd.h"

namespace homeward {

inline constexpr size_t kPeerNonceBytes = 32;
inline constexpr size_t kPeerTagBytes = 32;
inline constexpr size_t kMaxServiceName = 64;

class PeerHandshake {
 public:
  enum class State { kRunning, kDone, kFailed };

  // The connecting side, asking for `service` ("files", "migration", "relay").
  static PeerHandshake Client(std::vector<uint8_t> key, std::string service);
  // The accepting side; the service becomes known once the client's hello arrives.
  static PeerHandshake Server(std::vector<uint8_t> key);

  // Bytes to send now (empty when waiting for the peer).
  std::string TakeOutput();
  // How many more bytes the next step needs; a blocking caller reads exactly this many,
  // so nothing after the handshake is consumed. 0 when done or failed.
  size_t wanted() const;
  // Consumes received bytes (at most wanted()).
  void Feed(std::string_view bytes);

  State state() const { return state_; }
  // Why the handshake failed, for the log.
  const std::string& error() const { return error_; }
  const std::string& service() const { return service_; }

 private:
  enum class Step { kClientHello, kServiceName, kServerHello, kClientTag, kVerdict, kEnd };
  PeerHandshake(std::vector<uint8_t> key, bool client);
  std::string Tag(std::string_view role) const;
  void Fail(std::string why);
  void Advance();

  std::vector<uint8_t> key_;
  bool client_;
  Step step_;
  State state_ = State::kRunning;
  std::string service_;
  size_t service_length_ = 0;
  std::string client_nonce_;
  std::string server_nonce_;
  std::string input_;
  std::string output_;
  std::string error_;
};

// Who is at the other end of an authenticated connection.
struct PeerIdentity {
  std::string address;  // "A.B.C.D:PORT"
  std::string service;
};

// Connects to host:port, runs the client handshake for `service` and returns the
// connected, authenticated socket. Throws Error(kDisconnected) when the peer cannot be
// reached or the time runs out, Error(kFailed) when the peer refuses or fails to prove
// the key.
Fd PeerConnect(const std::string& host, uint16_t port, const std::vector<uint8_t>& key,
               const std::string& service, std::chrono::milliseconds timeout);
// Runs the server handshake on an accepted socket; returns the requested service.
// Throws Error naming the cause when the client does not prove the key.
std::string PeerAccept(int fd, const std::vector<uint8_t>& key, std::chrono::milliseconds timeout);

}  // namespace homeward
