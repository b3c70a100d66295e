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

#include "config.h"
#include "error.h"

namespace homeward {

namespace {

constexpr std::string_view kMagic{"HWPEER01", 8};

std::string RandomNonce() {
  std::string nonce(kPeerNonceBytes, '\0');
  randombytes_buf(nonce.data(), nonce.size());
  return nonce;
}

}  // namespace

PeerHandshake::PeerHandshake(std::vector<uint8_t> key, bool client)
    : key_(std::move(key)), client_(client) {
  if (sodium_init() < 0) throw Error(ErrorKind::kFailed, "libsodium failed to initialise");
}

PeerHandshake PeerHandshake::Client(std::vector<uint8_t> key, std::string service) {
  PeerHandshake h(std::move(key), true);
  if (service.empty() || service.size() > kMaxServiceName) {
    throw Error(ErrorKind::kInvalidInput, fmt::format("bad service name '{}'", service));
  }
  h.service_ = std::move(service);
  h.client_nonce_ = RandomNonce();
  h.output_.append(kMagic);
  h.output_ += h.client_nonce_;
  h.output_ += static_cast<char>(h.service_.size());
  h.output_ += h.service_;
  h.step_ = Step::kServerHello;
  if (h.key_.size() != crypto_auth_KEYBYTES) h.Fail("the cluster key is not 32 bytes");
  return h;
}

PeerHandshake PeerHandshake::Server(std::vector<uint8_t> key) {
  PeerHandshake h(std::move(key), false);
  h.step_ = Step::kClientHello;
  if (h.key_.size() != crypto_auth_KEYBYTES) h.Fail("the cluster key is not 32 bytes");
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
      need = kMagic.size() + kPeerNonceBytes + 1;
      break;
    case Step::kServiceName:
      need = service_length_;
      break;
    case Step::kServerHello:
      need = kMagic.size() + kPeerNonceBytes + kPeerTagBytes;
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

std::string PeerHandshake::Tag(std::string_view role) const {
  std::string text(role);
  text += client_nonce_;
  text += server_nonce_;
  text += service_;
  std::string tag(crypto_auth_BYTES, '\0');
  crypto_auth(reinterpret_cast<unsigned char*>(tag.data()),
              reinterpret_cast<const unsigned char*>(text.data()), text.size(), key_.data());
  return tag;
}

void PeerHandshake::Fail(std::string why) {
  state_ = State::kFailed;
  error_ = std::move(why);
  output_.clear();
}

void PeerHandshake::Advance() {
  std::string in = std::exchange(input_, {});
  switch (step_) {
    case Step::kClientHello:
      if (in.compare(0, kMagic.size(), kMagic) != 0) return Fail("not a Homeward peer");
      client_nonce_ = in.substr(kMagic.size(), kPeerNonceBytes);
      if (in.back() == 0 || static_cast<uint8_t>(in.back()) > kMaxServiceName) {
        return Fail("bad service name length");
      }
      service_length_ = static_cast<uint8_t>(in.back());
      step_ = Step::kServiceName;
      return;
    case Step::kServiceName:
      service_ = in;
      server_nonce_ = RandomNonce();
      output_.append(kMagic);
      output_ += server_nonce_;
      output_ += Tag("server");
      step_ = Step::kClientTag;
      return;
    case Step::kServerHello: {
      if (in.compare(0, kMagic.size(), kMagic) != 0) return Fail("not a Homeward peer");
      server_nonce_ = in.substr(kMagic.size(), kPeerNonceBytes);
      std::string tag = in.substr(kMagic.size() + kPeerNonceBytes);
      if (crypto_auth_verify(
              reinterpret_cast<const unsigned char*>(tag.data()),
              reinterpret_cast<const unsigned char*>(
                  (std::string("server") + client_nonce_ + server_nonce_ + service_).data()),
              6 + 2 * kPeerNonceBytes + service_.size(), key_.data()) != 0) {
        return Fail("the server did not prove the cluster key");
      }
      output_ = Tag("client");
      step_ = Step::kVerdict;
      return;
    }
    case Step::kClientTag:
      if (sodium_memcmp(in.data(), Tag("client").data(), kPeerTagBytes) != 0) {
        return Fail("the client did not prove the cluster key");
      }
      output_ = std::string(1, '\1');
      step_ = Step::kEnd;
      state_ = State::kDone;
      return;
    case Step::kVerdict:
      if (in[0] != 1) {
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

Fd PeerConnect(const std::string& host, uint16_t port, const std::vector<uint8_t>& key,
               const std::string& service, std::chrono::milliseconds timeout) {
  std::string who = fmt::format("{}:{}", host, port);
  sockaddr_in addr = Endpoint{host, port}.ToSockaddr();
  Fd fd = Fd::Adopt(HW_SYSCALL(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0),
                               "socket for {}", who));
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
  int flags = ::fcntl(fd.get(), F_GETFL);
  ::fcntl(fd.get(), F_SETFL, flags & ~O_NONBLOCK);
  int one = 1;
  ::setsockopt(fd.get(), IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  PeerHandshake h = PeerHandshake::Client(key, service);
  Run(fd.get(), h, timeout, who);
  return fd;
}

std::string PeerAccept(int fd, const std::vector<uint8_t>& key, std::chrono::milliseconds timeout) {
  sockaddr_in addr{};
  socklen_t len = sizeof addr;
  ::getpeername(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  char text[INET_ADDRSTRLEN] = "?";
  ::inet_ntop(AF_INET, &addr.sin_addr, text, sizeof text);
  std::string who = fmt::format("{}:{}", text, ntohs(addr.sin_port));
  PeerHandshake h = PeerHandshake::Server(key);
  Run(fd, h, timeout, who);
  return h.service();
}

}  // namespace homeward
