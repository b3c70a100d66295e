// The peer handshake (sans-I/O) and the blocking helpers that run it on a socket.
#include "peer_auth.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sodium.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstring>
#include <mutex>

#include "config.h"
#include "error.h"
#include "secure_channel.h"

namespace homeward {

namespace {

constexpr std::string_view kMagic{"HWPEER03", 8};
constexpr char kKdfContext[crypto_kdf_CONTEXTBYTES + 1] = "HWPEER03";
constexpr uint8_t kFlagAes = 1;
constexpr uint8_t kFlagPlaintext = 2;
// magic | nonce | public key | flags
constexpr size_t kHelloBytes = 8 + kPeerNonceBytes + kPeerPublicKeyBytes + 1;
enum KdfId : uint64_t { kServerTagKey = 1, kClientTagKey, kClientToServer, kServerToClient };

std::mutex security_mutex;
PeerSecurity security_now;

std::string RandomNonce() {
  std::string nonce(kPeerNonceBytes, '\0');
  randombytes_buf(nonce.data(), nonce.size());
  return nonce;
}

const unsigned char* Bytes(std::string_view s) {
  return reinterpret_cast<const unsigned char*>(s.data());
}

}  // namespace

namespace {
std::mutex source_mutex;
std::string source_address;
}  // namespace

void SetPeerSourceAddress(const std::string& address) {
  std::lock_guard lock(source_mutex);
  source_address = address;
}

void SetPeerSecurityForTesting(const PeerSecurity& security) {
  std::lock_guard lock(security_mutex);
  security_now = security;
}

PeerSecurity CurrentPeerSecurity() {
  std::lock_guard lock(security_mutex);
  return security_now;
}

PeerHandshake::PeerHandshake(std::vector<uint8_t> key, bool client)
    : key_(std::move(key)), client_(client), security_(CurrentPeerSecurity()) {
  if (sodium_init() < 0) throw Error(ErrorKind::kFailed, "libsodium failed to initialise");
  // The ephemeral key pair of this connection.
  crypto_box_keypair(public_key_.data(), secret_key_.data());
}

std::string PeerHandshake::Hello(std::string_view nonce,
                                 const std::array<uint8_t, 32>& public_key) const {
  std::string hello(kMagic);
  hello += nonce;
  hello.append(reinterpret_cast<const char*>(public_key.data()), public_key.size());
  uint8_t flags = 0;
  if (security_.allow_aes && crypto_aead_aes256gcm_is_available()) flags |= kFlagAes;
  if (security_.plaintext) flags |= kFlagPlaintext;
  hello += static_cast<char>(flags);
  return hello;
}

PeerHandshake PeerHandshake::Client(std::vector<uint8_t> key, std::string service,
                                    std::string cluster) {
  PeerHandshake h(std::move(key), true);
  if (service.empty() || service.size() > kMaxServiceName) {
    throw Error(ErrorKind::kInvalidInput, fmt::format("bad service name '{}'", service));
  }
  if (cluster.size() > kMaxClusterName) {
    throw Error(ErrorKind::kInvalidInput, fmt::format("bad cluster name '{}'", cluster));
  }
  h.service_ = std::move(service);
  h.cluster_ = std::move(cluster);
  h.client_nonce_ = RandomNonce();
  h.output_ = h.Hello(h.client_nonce_, h.public_key_);
  h.output_ += static_cast<char>(h.service_.size());
  h.output_ += h.service_;
  h.output_ += static_cast<char>(h.cluster_.size());
  h.output_ += h.cluster_;
  h.transcript_ = h.output_;
  h.step_ = Step::kServerHello;
  if (h.key_.size() != crypto_auth_KEYBYTES) h.Fail("the cluster key is not 32 bytes");
  return h;
}

PeerHandshake PeerHandshake::Server(std::vector<uint8_t> key) {
  return Server([key = std::move(key)](const std::string& cluster) {
    return cluster.empty() ? &key : nullptr;
  });
}

PeerHandshake PeerHandshake::Server(KeyChooser choose_key) {
  PeerHandshake h({}, false);
  h.choose_key_ = std::move(choose_key);
  h.step_ = Step::kClientHello;
  return h;
}

std::string PeerHandshake::TakeOutput() {
  return std::exchange(output_, {});
}

size_t PeerHandshake::wanted() const {
  if (state_ != State::kRunning) return 0;
  size_t need = 0;
  switch (step_) {
    case Step::kClientHello:
      need = kHelloBytes + 1;
      break;
    case Step::kServiceName:
      need = service_length_ + 1;  // and the cluster name's length
      break;
    case Step::kClusterName:
      need = cluster_length_;
      break;
    case Step::kServerHello:
      need = kHelloBytes + kPeerTagBytes;
      break;
    case Step::kClientTag:
      need = kPeerTagBytes;
      break;
    case Step::kVerdict:
      need = 1;
      break;
    case Step::kEnd:
      need = 0;
      break;
  }
  return need - input_.size();
}

void PeerHandshake::Feed(std::string_view bytes) {
  while (!bytes.empty() && state_ == State::kRunning) {
    size_t take = std::min(bytes.size(), wanted());
    input_.append(bytes.substr(0, take));
    bytes.remove_prefix(take);
    if (wanted() == 0) Advance();
  }
  if (!bytes.empty() && state_ == State::kRunning) Fail("peer sent bytes out of turn");
}

// The key agreement, once both hellos are in the transcript: X25519 with the peer's
// public key, mixed with the transcript under the cluster key, split into the tag keys
// and the data keys of this connection.
bool PeerHandshake::Agree(std::string_view peer_public_key) {
  if (((peer_flags_ & kFlagPlaintext) != 0) != security_.plaintext) {
    Fail("one side has encryption turned off (a benchmark's setting)");
    return false;
  }
  unsigned char shared[crypto_scalarmult_BYTES];
  int bad = crypto_scalarmult(shared, secret_key_.data(), Bytes(peer_public_key));
  sodium_memzero(secret_key_.data(), secret_key_.size());
  if (bad != 0) {
    Fail("the peer sent a degenerate public key");
    return false;
  }
  unsigned char material[crypto_scalarmult_BYTES + crypto_generichash_BYTES];
  std::memcpy(material, shared, sizeof shared);
  sodium_memzero(shared, sizeof shared);
  crypto_generichash(material + crypto_scalarmult_BYTES, crypto_generichash_BYTES,
                     Bytes(transcript_), transcript_.size(), nullptr, 0);
  transcript_hash_.assign(reinterpret_cast<char*>(material + crypto_scalarmult_BYTES),
                          crypto_generichash_BYTES);
  unsigned char prk[crypto_kdf_KEYBYTES];
  crypto_generichash(prk, sizeof prk, material, sizeof material, key_.data(), key_.size());
  sodium_memzero(material, sizeof material);
  crypto_kdf_derive_from_key(tag_keys_[0].data(), 32, kServerTagKey, kKdfContext, prk);
  crypto_kdf_derive_from_key(tag_keys_[1].data(), 32, kClientTagKey, kKdfContext, prk);
  auto& to_server = client_ ? session_.send_key : session_.receive_key;
  auto& to_client = client_ ? session_.receive_key : session_.send_key;
  crypto_kdf_derive_from_key(to_server.data(), to_server.size(), kClientToServer, kKdfContext,
                             prk);
  crypto_kdf_derive_from_key(to_client.data(), to_client.size(), kServerToClient, kKdfContext,
                             prk);
  sodium_memzero(prk, sizeof prk);
  bool aes = security_.allow_aes && crypto_aead_aes256gcm_is_available() &&
             (peer_flags_ & kFlagAes) != 0;
  session_.cipher = aes ? PeerCipher::kAes256Gcm : PeerCipher::kChaCha20Poly1305;
  session_.plaintext = security_.plaintext;
  return true;
}

std::string PeerHandshake::Tag(std::string_view role) const {
  std::string text(role);
  text += transcript_hash_;
  std::string tag(crypto_auth_BYTES, '\0');
  crypto_auth(reinterpret_cast<unsigned char*>(tag.data()), Bytes(text), text.size(),
              tag_keys_[role == "server" ? 0 : 1].data());
  return tag;
}

void PeerHandshake::Fail(std::string why) {
  state_ = State::kFailed;
  error_ = std::move(why);
  output_.clear();
}

// The server's answer to a whole client hello: the key the client's cluster calls for,
// then the server's hello and its proof.
void PeerHandshake::Reply() {
  const std::vector<uint8_t>* key = choose_key_ ? choose_key_(cluster_) : nullptr;
  if (!key) {
    return Fail(fmt::format("cluster '{}' is no partner of this node's cluster", cluster_));
  }
  if (key->size() != crypto_auth_KEYBYTES) return Fail("the cluster key is not 32 bytes");
  key_ = *key;
  std::string_view hello(transcript_);
  client_nonce_ = hello.substr(kMagic.size(), kPeerNonceBytes);
  std::string client_public(hello.substr(kMagic.size() + kPeerNonceBytes, kPeerPublicKeyBytes));
  peer_flags_ = static_cast<uint8_t>(hello[kHelloBytes - 1]);
  server_nonce_ = RandomNonce();
  std::string reply = Hello(server_nonce_, public_key_);
  transcript_ += reply;
  if (!Agree(client_public)) return;
  output_ = reply + Tag("server");
  step_ = Step::kClientTag;
}

void PeerHandshake::Advance() {
  std::string in = std::exchange(input_, {});
  switch (step_) {
    case Step::kClientHello:
      if (in.compare(0, kMagic.size(), kMagic) != 0) {
        return Fail("not a Homeward peer of this release (HWPEER03)");
      }
      if (in.back() == 0 || static_cast<uint8_t>(in.back()) > kMaxServiceName) {
        return Fail("bad service name length");
      }
      transcript_ = in;
      service_length_ = static_cast<uint8_t>(in.back());
      step_ = Step::kServiceName;
      return;
    case Step::kServiceName:
      service_ = in.substr(0, service_length_);
      transcript_ += in;
      cluster_length_ = static_cast<uint8_t>(in.back());
      if (cluster_length_ > kMaxClusterName) return Fail("bad cluster name length");
      step_ = Step::kClusterName;
      if (cluster_length_ == 0) Reply();
      return;
    case Step::kClusterName:
      cluster_ = in;
      transcript_ += in;
      Reply();
      return;
    case Step::kServerHello: {
      if (in.compare(0, kMagic.size(), kMagic) != 0) {
        return Fail("not a Homeward peer of this release (HWPEER03)");
      }
      server_nonce_ = in.substr(kMagic.size(), kPeerNonceBytes);
      std::string server_public = in.substr(kMagic.size() + kPeerNonceBytes, kPeerPublicKeyBytes);
      peer_flags_ = static_cast<uint8_t>(in[kHelloBytes - 1]);
      std::string tag = in.substr(kHelloBytes);
      transcript_ += in.substr(0, kHelloBytes);
      if (!Agree(server_public)) return;
      if (sodium_memcmp(tag.data(), Tag("server").data(), kPeerTagBytes) != 0) {
        return Fail(cluster_.empty() ? "the server did not prove the cluster key"
                                     : "the server did not prove the partnership's key");
      }
      output_ = Tag("client");
      step_ = Step::kVerdict;
      return;
    }
    case Step::kClientTag:
      if (sodium_memcmp(in.data(), Tag("client").data(), kPeerTagBytes) != 0) {
        return Fail(cluster_.empty() ? "the client did not prove the cluster key"
                                     : fmt::format("the client did not prove the key of the "
                                                   "partnership with cluster '{}'",
                                                   cluster_));
      }
      output_ = std::string(1, kPeerAccepted);
      step_ = Step::kEnd;
      state_ = State::kDone;
      return;
    case Step::kVerdict:
      if (in[0] == kPeerNotForCluster) {
        return Fail(fmt::format("the server's cluster does not serve '{}' to cluster '{}' "
                                "(the partnership's send and accept settings)",
                                service_, cluster_));
      }
      if (in[0] != kPeerAccepted) {
        return Fail(
            fmt::format("the server refused the connection (it runs no '{}' service)", service_));
      }
      step_ = Step::kEnd;
      state_ = State::kDone;
      return;
    case Step::kEnd:
      return;
  }
}

namespace {

// Runs the handshake on a socket (blocking or not) within one deadline for the whole
// exchange, not per call: a peer trickling a byte at a time still runs out of time.
void Run(int fd, PeerHandshake& h, std::chrono::milliseconds timeout, const std::string& who) {
  auto deadline = std::chrono::steady_clock::now() + timeout;
  auto wait_for = [&](short events, const char* step) {
    for (;;) {
      auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
                      deadline - std::chrono::steady_clock::now())
                      .count();
      if (left <= 0) {
        throw SystemError(ETIMEDOUT, fmt::format("peer handshake with {}: {} (not done within "
                                                 "{} ms)",
                                                 who, step, timeout.count()));
      }
      pollfd p{fd, events, 0};
      int ready = ::poll(&p, 1, static_cast<int>(left));
      if (ready < 0 && errno != EINTR) {
        throw SystemError(errno, fmt::format("peer handshake with {}: poll", who));
      }
      if (ready > 0) return;
    }
  };
  for (;;) {
    std::string out = h.TakeOutput();
    size_t sent = 0;
    while (sent < out.size()) {
      wait_for(POLLOUT, "send");
      ssize_t n = ::send(fd, out.data() + sent, out.size() - sent, MSG_NOSIGNAL | MSG_DONTWAIT);
      if (n < 0 && (errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK)) continue;
      if (n < 0) throw SystemError(errno, fmt::format("peer handshake with {}: send", who));
      sent += static_cast<size_t>(n);
    }
    if (h.state() == PeerHandshake::State::kFailed) {
      throw Error(ErrorKind::kFailed, fmt::format("peer handshake with {}: {}", who, h.error()));
    }
    if (h.state() == PeerHandshake::State::kDone) break;
    wait_for(POLLIN, "receive");
    std::string in(h.wanted(), '\0');
    ssize_t n = ::recv(fd, in.data(), in.size(), MSG_DONTWAIT);
    if (n < 0 && (errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK)) continue;
    if (n < 0) throw SystemError(errno, fmt::format("peer handshake with {}: receive", who));
    if (n == 0) {
      throw Error(
          ErrorKind::kDisconnected,
          fmt::format("peer handshake with {}: connection closed (wrong cluster key, or the "
                      "node refused more connections from this address)",
                      who));
    }
    in.resize(static_cast<size_t>(n));
    h.Feed(in);
  }
}

}  // namespace

std::unique_ptr<SecureStream> PeerConnectStream(const std::string& host, uint16_t port,
                                                const PeerCredentials& credentials,
                                                const std::string& service,
                                                std::chrono::milliseconds timeout,
                                                const TuneSocket& tune) {
  std::string who = fmt::format("{}:{}", host, port);
  sockaddr_in addr = Endpoint{host, port}.ToSockaddr();
  Fd fd = Fd::Adopt(HW_SYSCALL(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0),
                               "socket for {}", who));
  std::string source;
  {
    std::lock_guard lock(source_mutex);
    source = source_address;
  }
  if (!source.empty()) {
    // The port is chosen at connect, per destination: binding one here would take it
    // from the whole host's ephemeral range.
    int one = 1;
    ::setsockopt(fd.get(), IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof one);
    sockaddr_in local = Endpoint{source, 0}.ToSockaddr();
    if (::bind(fd.get(), reinterpret_cast<sockaddr*>(&local), sizeof local) < 0) {
      throw SystemError(errno,
                        fmt::format("connect to {}: bind to this node's address {}", who, source));
    }
  }
  if (::connect(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) < 0) {
    if (errno != EINPROGRESS) throw SystemError(errno, fmt::format("connect to {}", who));
    pollfd p{fd.get(), POLLOUT, 0};
    int ready = HW_SYSCALL(::poll(&p, 1, static_cast<int>(timeout.count())), "poll {}", who);
    if (ready == 0) throw SystemError(ETIMEDOUT, fmt::format("connect to {}", who));
    int err = 0;
    socklen_t len = sizeof err;
    ::getsockopt(fd.get(), SOL_SOCKET, SO_ERROR, &err, &len);
    if (err != 0) throw SystemError(err, fmt::format("connect to {}", who));
  }
  int one = 1;
  ::setsockopt(fd.get(), IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  PeerHandshake h = PeerHandshake::Client(credentials.key, service, credentials.cluster);
  Run(fd.get(), h, timeout, who);
  if (tune) tune(fd.get());
  return std::make_unique<SecureStream>(std::move(fd), h.session(), who);
}

Fd PeerConnect(const std::string& host, uint16_t port, const PeerCredentials& credentials,
               const std::string& service, std::chrono::milliseconds timeout,
               const TuneSocket& tune) {
  return SecureStream::IntoChannel(
      PeerConnectStream(host, port, credentials, service, timeout, tune));
}

std::string PeerAccept(int fd, const std::vector<uint8_t>& key, std::chrono::milliseconds timeout,
                       PeerSession* session) {
  sockaddr_in addr{};
  socklen_t len = sizeof addr;
  ::getpeername(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  char text[INET_ADDRSTRLEN] = "?";
  ::inet_ntop(AF_INET, &addr.sin_addr, text, sizeof text);
  std::string who = fmt::format("{}:{}", text, ntohs(addr.sin_port));
  PeerHandshake h = PeerHandshake::Server(key);
  Run(fd, h, timeout, who);
  if (session) *session = h.session();
  return h.service();
}

}  // namespace homeward
