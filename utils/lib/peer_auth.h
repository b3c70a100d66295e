// Peer authentication and key agreement: the handshake that opens every connection
// between nodes (file service, migration, job relay). Sans-I/O: the handshake objects
// consume and produce bytes; PeerConnect/PeerAccept run one on a socket within one
// deadline for the whole exchange (the daemon's PeerServer runs many at once on
// non-blocking sockets, noded/peers/peer_server.h).
//
//   client -> server  "HWPEER03" | client nonce (32) | client X25519 public key (32) |
//                     flags (1) | service length (1) | service | cluster length (1) | cluster
//   server -> client  "HWPEER03" | server nonce (32) | server X25519 public key (32) |
//                     flags (1) | tag("server")
//   client -> server  tag("client")
//   server -> client  1 byte: 1 = accepted, 0 = no such service, 2 = not for the
//                     client's cluster (the partnership does not allow that service)
//
// Both public keys are ephemeral, made for this connection and forgotten after it (forward
// secrecy: the cluster key alone does not open a recorded connection). With
//   T    = BLAKE2b-256 of both hellos, byte for byte (nonces, public keys, flags, service,
//          cluster)
//   PRK  = BLAKE2b-256 keyed with the cluster key (the pre-shared key) of
//          X25519(own secret, peer's public) | T
// the tags and the per-connection keys are crypto_kdf subkeys of PRK: tag(role) =
// crypto_auth (HMAC-SHA512-256) of role | T under the role's subkey, and one key for each
// direction of the data (secure_channel.h). So each tag proves the cluster key and the
// shared secret over the whole transcript: a peer without the key cannot substitute a
// public key, a nonce, the flags or the service; fresh nonces and ephemeral keys on both
// sides make a recorded exchange useless to replay; the role stops a server's proof being
// reflected back as a client's. A peer without the key learns nothing but the server's
// hello and a tag it cannot check.
//
// Cluster: empty from a node of the server's own cluster, whose key is the cluster key;
// otherwise the client's cluster, a partner of the server's, and the key is the one the
// two clusters share for their partnership (utils/lib/config.h, PartnerConfig). The server
// picks the key by the name, and the tags prove it, so a partner is known by its key and
// cannot pass as another cluster, or as the server's own.
//
// Flags: bit 0, this side has AES-256-GCM in hardware (both must, or the records use
// ChaCha20-Poly1305); bit 1, records in clear (only a benchmark's baseline sets it, and
// both sides must agree, or the handshake fails).
#pragma once

#include <array>
#include <chrono>
#include <functional>
#include <memory>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "fd.h"

namespace homeward {

inline constexpr size_t kPeerNonceBytes = 32;
inline constexpr size_t kPeerTagBytes = 32;
inline constexpr size_t kMaxServiceName = 64;
inline constexpr size_t kMaxClusterName = 63;
inline constexpr size_t kPeerPublicKeyBytes = 32;
inline constexpr size_t kPeerSessionKeyBytes = 32;

enum class PeerCipher : uint8_t { kChaCha20Poly1305, kAes256Gcm };

// What the handshake agreed on for the data that follows it.
struct PeerSession {
  PeerCipher cipher = PeerCipher::kChaCha20Poly1305;
  bool plaintext = false;  // only in a benchmark's baseline
  std::array<uint8_t, kPeerSessionKeyBytes> send_key{};
  std::array<uint8_t, kPeerSessionKeyBytes> receive_key{};
};

// How this process offers to protect its peer connections. Only tests and benchmarks
// change it; the daemon always runs with the defaults.
struct PeerSecurity {
  bool allow_aes = true;   // offer AES-256-GCM when the CPU has it
  bool plaintext = false;  // records in clear: a benchmark's baseline, never a setting
};
void SetPeerSecurityForTesting(const PeerSecurity& security);
PeerSecurity CurrentPeerSecurity();

class PeerHandshake {
 public:
  enum class State { kRunning, kDone, kFailed };
  // The key for a client of `cluster` (empty: the server's own), or nullptr when the
  // server knows no such partner.
  using KeyChooser = std::function<const std::vector<uint8_t>*(const std::string& cluster)>;

  // The connecting side, asking for `service` ("files", "migration", "relay"); `cluster`
  // is this node's cluster when it connects to a partner's node with the partnership's
  // key, and empty within its own cluster.
  static PeerHandshake Client(std::vector<uint8_t> key, std::string service,
                              std::string cluster = {});
  // The accepting side; the service and the client's cluster become known once the
  // client's hello arrives. With one key, only clients of the server's own cluster.
  static PeerHandshake Server(std::vector<uint8_t> key);
  static PeerHandshake Server(KeyChooser choose_key);

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
  // The client's cluster, as its hello named it (empty: the server's own); proven once done.
  const std::string& cluster() const { return cluster_; }
  // The keys for the data after the handshake; valid once done.
  const PeerSession& session() const { return session_; }

 private:
  enum class Step {
    kClientHello,
    kServiceName,
    kClusterName,
    kServerHello,
    kClientTag,
    kVerdict,
    kEnd
  };
  PeerHandshake(std::vector<uint8_t> key, bool client);
  std::string Hello(std::string_view nonce, const std::array<uint8_t, 32>& public_key) const;
  std::string Tag(std::string_view role) const;
  bool Agree(std::string_view peer_public_key);
  void Fail(std::string why);
  void Advance();
  void Reply();  // the server's hello and tag, once the client's hello is in

  KeyChooser choose_key_;
  std::vector<uint8_t> key_;
  bool client_;
  Step step_;
  State state_ = State::kRunning;
  std::string service_;
  size_t service_length_ = 0;
  std::string cluster_;
  size_t cluster_length_ = 0;
  std::string client_nonce_;
  std::string server_nonce_;
  PeerSecurity security_;
  std::array<uint8_t, 32> public_key_{};
  std::array<uint8_t, 32> secret_key_{};
  uint8_t peer_flags_ = 0;
  std::string transcript_;  // the client's hello, then the server's (without its tag)
  std::string transcript_hash_;
  std::array<uint8_t, 32> tag_keys_[2]{};  // server's, client's
  PeerSession session_;
  std::string input_;
  std::string output_;
  std::string error_;
};

// The server's verdicts, the handshake's last byte.
inline constexpr char kPeerAccepted = 1;
inline constexpr char kPeerNoService = 0;
inline constexpr char kPeerNotForCluster = 2;

// What a node connects with: the key, and its cluster's name when the server is a partner
// cluster's node (the partnership's key then); empty within its own cluster.
struct PeerCredentials {
  PeerCredentials() = default;
  PeerCredentials(std::vector<uint8_t> key, std::string cluster = {})  // NOLINT: implicit
      : key(std::move(key)), cluster(std::move(cluster)) {}
  std::vector<uint8_t> key;
  std::string cluster;
};

// Who is at the other end of an authenticated connection.
struct PeerIdentity {
  std::string address;  // "A.B.C.D:PORT"
  std::string service;
  std::string cluster;  // empty: a node of this cluster; otherwise the partner it is of
};

// Options of the TCP socket itself (keepalive, user timeout), applied by `tune`.
using TuneSocket = std::function<void(int tcp_fd)>;

// The address every later PeerConnect of this process binds its socket to before it
// connects (empty: the kernel chooses). A node's daemon and its homefs set the node's
// configured address, so that its peers see its connections come from the address they
// know it by, and a link between two nodes can be told (and cut, by a firewall rule)
// by the pair of addresses, even when several nodes share one host.
void SetPeerSourceAddress(const std::string& address);

// Connects to host:port, runs the client handshake for `service` and returns the
// authenticated, encrypted connection: one end of a socket pair whose other end a
// SecureChannel (secure_channel.h) relays, in records sealed with this connection's keys,
// to and from the TCP socket. It is used like the socket itself, but TCP options must be
// set with `tune`, which is applied to the TCP socket. Throws Error(kDisconnected) when
// the peer cannot be reached or the time runs out, Error(kFailed) when the peer refuses or
// fails to prove the key.
Fd PeerConnect(const std::string& host, uint16_t port, const PeerCredentials& credentials,
               const std::string& service, std::chrono::milliseconds timeout,
               const TuneSocket& tune = {});
// The same connection as a SecureStream (secure_channel.h), read and written in place on
// the caller's thread: for the bulk paths (homefs, the migration stream), where a pump
// thread and a socket pair would cost more than the cipher.
class SecureStream;
std::unique_ptr<SecureStream> PeerConnectStream(const std::string& host, uint16_t port,
                                                const PeerCredentials& credentials,
                                                const std::string& service,
                                                std::chrono::milliseconds timeout,
                                                const TuneSocket& tune = {});
// Runs the server handshake on an accepted socket; returns the requested service and,
// when `session` is given, the agreed keys. Throws Error naming the cause when the client
// does not prove the key.
std::string PeerAccept(int fd, const std::vector<uint8_t>& key, std::chrono::milliseconds timeout,
                       PeerSession* session = nullptr);

}  // namespace homeward
