// Accepting peer connections: one gate thread accepts and runs every handshake over
// non-blocking sockets; an authenticated connection gets a thread for its service.
#include "peer_server.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <new>
#include <system_error>

#include <spdlog/spdlog.h>

#include "error.h"
#include "secure_channel.h"

namespace homeward {

namespace {

// Accepts per wake-up at most, so that a flood of connections cannot starve the
// handshakes already under way.
constexpr int kAcceptBurst = 64;
// When descriptors or memory run out, accepting waits this long (the kernel keeps the
// connections in the backlog meanwhile).
constexpr int64_t kAcceptPauseMs = 100;
// The largest step of the handshake (the client's hello) is 74 bytes, a service name 64.
constexpr size_t kReadChunk = 128;

std::string AddressText(const sockaddr_in& addr) {
  char text[INET_ADDRSTRLEN] = "?";
  ::inet_ntop(AF_INET, &addr.sin_addr, text, sizeof text);
  return text;
}

// Closes with a reset rather than a FIN: a refused stranger leaves no TIME_WAIT socket
// behind on this node.
void CloseAbruptly(int fd) {
  linger abort{1, 0};
  ::setsockopt(fd, SOL_SOCKET, SO_LINGER, &abort, sizeof abort);
  ::close(fd);
}

}  // namespace

PeerServer::PeerServer(std::string address, uint16_t port, PeerHandshake::KeyChooser keys,
                       PartnerAdmission admit, PeerConfig limits, FaultPoints faults)
    : address_(std::move(address)),
      port_(port),
      keys_(std::move(keys)),
      admit_(std::move(admit)),
      faults_(std::move(faults)),
      admission_(limits) {}

PeerServer::PeerServer(std::string address, uint16_t port, std::vector<uint8_t> key,
                       PeerConfig limits, FaultPoints faults)
    : PeerServer(
          std::move(address), port,
          [key = std::move(key)](const std::string& cluster) {
            return cluster.empty() ? &key : nullptr;
          },
          [](const PeerIdentity&) { return std::string("this node serves no partner"); },
          limits, std::move(faults)) {}

PeerServer::~PeerServer() {
  Stop();
}

void PeerServer::Register(const std::string& service, PeerService handler) {
  // The pump thread starts on the service's thread: a thread that cannot be had costs
  // this connection only, and the gate thread never waits on it.
  services_[service] = [handler = std::move(handler)](std::unique_ptr<SecureStream> stream,
                                                      PeerIdentity peer) {
    handler(SecureStream::IntoChannel(std::move(stream)), std::move(peer));
  };
}

void PeerServer::RegisterStream(const std::string& service, PeerStreamService handler) {
  services_[service] = std::move(handler);
}

int64_t PeerServer::NowMs() const {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

void PeerServer::Start() {
  sockaddr_in addr = Endpoint{address_, port_}.ToSockaddr();
  std::string where = fmt::format("{}:{}", address_, port_);
  listener_ = Fd::Adopt(HW_SYSCALL(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0),
                                   "peer socket {}", where));
  int one = 1;
  ::setsockopt(listener_.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  HW_SYSCALL(::bind(listener_.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr),
             "bind peer port {}", where);
  HW_SYSCALL(::listen(listener_.get(), 128), "listen on {}", where);
  socklen_t len = sizeof addr;
  ::getsockname(listener_.get(), reinterpret_cast<sockaddr*>(&addr), &len);
  port_ = ntohs(addr.sin_port);
  wake_ = Fd::Adopt(HW_SYSCALL(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK), "peer server eventfd"));
  gate_ = std::thread([this] { GateLoop(); });
  spdlog::info("peer services listening on {}:{}", address_, port_);
}

void PeerServer::Stop() {
  if (!gate_.joinable()) return;
  {
    std::lock_guard lock(mutex_);
    stopping_ = true;
  }
  uint64_t one = 1;
  [[maybe_unused]] ssize_t n = ::write(wake_.get(), &one, sizeof one);
  gate_.join();
  std::unique_lock lock(mutex_);
  idle_.wait(lock, [&] { return running_ == 0; });
  listener_.Reset();
  wake_.Reset();
}

void PeerServer::GateLoop() {
  for (;;) {
    {
      std::lock_guard lock(mutex_);
      if (stopping_) break;
    }
    // Nothing may leave this thread: a failure costs a round (and whatever connection
    // it concerned), never the daemon.
    try {
      GateRound();
    } catch (const std::exception& e) {
      spdlog::error("peer server: {}", e.what());
      std::this_thread::sleep_for(std::chrono::milliseconds(kAcceptPauseMs));
    }
  }
  pending_.clear();  // closes every handshake still under way
}

void PeerServer::GateRound() {
  int64_t now = NowMs();
  for (int fd : admission_.Expired(now)) {
    Refuse(fd, PeerRefusal::kTimedOut, "no handshake within the deadline");
  }
  if (auto line = refusals_.Take(now)) spdlog::warn("{}", *line);

  int64_t wake_at = INT64_MAX;
  if (auto deadline = admission_.NextDeadline()) wake_at = std::min(wake_at, *deadline);
  if (auto line = refusals_.NextLine()) wake_at = std::min(wake_at, *line);
  bool listening = now >= listen_again_ms_;
  if (!listening) wake_at = std::min(wake_at, listen_again_ms_);
  int timeout = -1;
  if (wake_at != INT64_MAX) {
    timeout = wake_at <= now ? 0 : static_cast<int>(std::min<int64_t>(wake_at - now, 60'000));
  }

  std::vector<pollfd> polled;
  polled.reserve(pending_.size() + 2);
  polled.push_back({wake_.get(), POLLIN, 0});
  polled.push_back({listening ? listener_.get() : -1, POLLIN, 0});
  for (const auto& [fd, pending] : pending_) {
    // While output waits, only writability matters: bytes after the handshake are the
    // service's, and stay in the socket for it.
    polled.push_back({fd, static_cast<short>(pending->out.empty() ? POLLIN : POLLOUT), 0});
  }
  int ready = ::poll(polled.data(), polled.size(), timeout);
  if (ready < 0) {
    if (errno == EINTR) return;
    throw SystemError(errno, "poll the peer connections");
  }
  if (ready == 0 || polled[0].revents != 0) return;  // a deadline, or Stop
  now = NowMs();
  if (polled[1].revents != 0) AcceptSome(now);
  for (size_t i = 2; i < polled.size(); ++i) {
    if (polled[i].revents != 0) Step(polled[i].fd, polled[i].revents);
  }
}

void PeerServer::AcceptSome(int64_t now_ms) {
  for (int i = 0; i < kAcceptBurst; ++i) {
    sockaddr_in addr{};
    socklen_t len = sizeof addr;
    int fd = ::accept4(listener_.get(), reinterpret_cast<sockaddr*>(&addr), &len,
                       SOCK_CLOEXEC | SOCK_NONBLOCK);
    if (fd < 0) {
      if (errno == EAGAIN || errno == EWOULDBLOCK) return;
      if (errno == EINTR || errno == ECONNABORTED) continue;
      // Out of descriptors or memory: the connections wait in the backlog a moment.
      refusals_.Count(PeerRefusal::kNoResources,
                      fmt::format("connections: cannot accept: {}", std::strerror(errno)));
      listen_again_ms_ = now_ms + kAcceptPauseMs;
      return;
    }
    std::string source = AddressText(addr);
    std::string who = fmt::format("{}:{}", source, ntohs(addr.sin_port));
    if (auto refusal = admission_.Admit(fd, source, now_ms)) {
      CloseAbruptly(fd);
      refusals_.Count(*refusal, fmt::format("{}: {}", who, PeerRefusalName(*refusal)));
      continue;
    }
    // From here on exactly one owner closes the socket, whichever step throws.
    Fd owned = Fd::Adopt(fd);
    try {
      auto p = std::make_unique<Pending>(
          Pending{std::move(owned), who, PeerHandshake::Server(keys_), std::string()});
      pending_.emplace(fd, std::move(p));
    } catch (const std::exception& e) {
      // bad_alloc, or libsodium failing: this connection is lost, nothing else.
      admission_.Remove(fd);
      refusals_.Count(PeerRefusal::kNoResources, fmt::format("{}: {}", who, e.what()));
    }
  }
}

void PeerServer::Step(int fd, short revents) {
  auto it = pending_.find(fd);
  if (it == pending_.end()) return;
  Pending& p = *it->second;
  if (revents & POLLNVAL) return Refuse(fd, PeerRefusal::kClosed, "invalid descriptor");
  if (revents & (POLLIN | POLLHUP | POLLERR)) {
    if (p.out.empty()) {
      size_t want = std::min(p.handshake.wanted(), kReadChunk);
      char buffer[kReadChunk];
      ssize_t n = ::recv(fd, buffer, want, 0);
      if (n == 0) {
        // A client that closes once it has our proof found the proof wrong.
        return Refuse(fd, PeerRefusal::kClosed,
                      p.handshake.service().empty()
                          ? "connection closed"
                          : "connection closed after the server's proof (another cluster key?)");
      }
      if (n < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) return;
        return Refuse(fd, PeerRefusal::kClosed, std::strerror(errno));
      }
      p.handshake.Feed(std::string_view(buffer, static_cast<size_t>(n)));
      if (p.handshake.state() == PeerHandshake::State::kFailed) {
        return Refuse(fd, PeerRefusal::kHandshake, p.handshake.error());
      }
      p.out += p.handshake.TakeOutput();
      if (p.handshake.state() == PeerHandshake::State::kDone &&
          !services_.contains(p.handshake.service())) {
        // The verdict says no (0) rather than accepting a connection nobody will serve,
        // so the peer learns why it is closed.
        ::send(fd, &kPeerNoService, 1, MSG_NOSIGNAL | MSG_DONTWAIT);
        return Refuse(fd, PeerRefusal::kUnknownService,
                      fmt::format("asked for unknown service '{}'", p.handshake.service()));
      }
      if (p.handshake.state() == PeerHandshake::State::kDone && !p.handshake.cluster().empty()) {
        std::string why = admit_(PeerIdentity{p.who, p.handshake.service(), p.handshake.cluster()});
        if (!why.empty()) {
          ::send(fd, &kPeerNotForCluster, 1, MSG_NOSIGNAL | MSG_DONTWAIT);
          return Refuse(fd, PeerRefusal::kNotForCluster,
                        fmt::format("cluster '{}' asked for '{}': {}", p.handshake.cluster(),
                                    p.handshake.service(), why));
        }
      }
    } else if (revents & (POLLHUP | POLLERR)) {
      return Refuse(fd, PeerRefusal::kClosed, "connection closed");
    }
  }
  while (!p.out.empty()) {
    ssize_t n = ::send(fd, p.out.data(), p.out.size(), MSG_NOSIGNAL);
    if (n < 0) {
      if (errno == EAGAIN || errno == EWOULDBLOCK) return;  // POLLOUT next round
      if (errno == EINTR) continue;
      return Refuse(fd, PeerRefusal::kClosed, std::strerror(errno));
    }
    p.out.erase(0, static_cast<size_t>(n));
  }
  if (p.handshake.state() == PeerHandshake::State::kDone) HandOff(fd);
}

void PeerServer::Refuse(int fd, PeerRefusal reason, const std::string& why) {
  auto it = pending_.find(fd);
  std::string who = it == pending_.end() ? std::string("?") : it->second->who;
  admission_.Remove(fd);
  if (it != pending_.end()) pending_.erase(it);  // closes the socket
  refusals_.Count(reason, fmt::format("{}: {}", who, why));
}

void PeerServer::HandOff(int fd) {
  auto it = pending_.find(fd);
  std::unique_ptr<Pending> p = std::move(it->second);
  pending_.erase(it);
  admission_.Remove(fd);
  PeerIdentity peer{p->who, p->handshake.service(), p->handshake.cluster()};
  auto service = services_.find(peer.service);
  if (service == services_.end()) return;  // Step refused it already; this closes it
  // The services read and write with blocking calls on their own thread.
  int flags = ::fcntl(fd, F_GETFL);
  ::fcntl(fd, F_SETFL, flags & ~O_NONBLOCK);
  int one = 1;
  ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  ::setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof one);
  // The service reads and writes plain bytes; the stream (or its channel) seals them.
  std::unique_ptr<SecureStream> stream;
  try {
    stream = std::make_unique<SecureStream>(std::move(p->fd), p->handshake.session(), p->who);
  } catch (const std::exception& e) {
    refusals_.Count(PeerRefusal::kNoResources,
                    fmt::format("{}: no stream for its {} service: {}", p->who, peer.service,
                                e.what()));
    return;
  }
  Launch(std::move(stream), std::move(peer), &service->second);
}

void PeerServer::Launch(std::unique_ptr<SecureStream> stream, PeerIdentity peer,
                        PeerStreamService* handler) {
  {
    std::lock_guard lock(mutex_);
    if (stopping_) return;
    ++running_;
  }
  std::string who = peer.address;
  std::string name = peer.service;
  try {
    if (faults_.Hit(Fault::kPeerThread)) {
      throw std::system_error(EAGAIN, std::generic_category(), "fault point peer-thread");
    }
    std::thread([this, stream = std::move(stream), peer = std::move(peer), handler]() mutable {
      try {
        (*handler)(std::move(stream), peer);
      } catch (const std::exception& e) {
        spdlog::error("peer {} service {}: {}", peer.address, peer.service, e.what());
      }
      std::lock_guard lock(mutex_);
      --running_;
      idle_.notify_all();
    }).detach();
  } catch (const std::exception& e) {
    // No thread (a pids limit, say) or no memory: this connection closes, as the
    // callable that owned it is destroyed; the daemon and its other peers carry on.
    {
      std::lock_guard lock(mutex_);
      --running_;
      idle_.notify_all();
    }
    refusals_.Count(PeerRefusal::kNoResources,
                    fmt::format("{}: no thread for its {} service: {}", who, name, e.what()));
  }
}

}  // namespace homeward
