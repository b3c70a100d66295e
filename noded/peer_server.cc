// Accepting peer connections: one thread accepts, one thread per connection
// authenticates and then serves it.
#include "peer_server.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>

#include <spdlog/spdlog.h>

#include "config.h"
#include "error.h"

namespace homeward {

namespace {
constexpr std::chrono::seconds kHandshakeTimeout{5};
}

PeerServer::PeerServer(std::string address, uint16_t port, std::vector<uint8_t> key)
    : address_(std::move(address)), port_(port), key_(std::move(key)) {}

PeerServer::~PeerServer() {
  Stop();
}

void PeerServer::Register(const std::string& service, PeerService handler) {
  services_[service] = std::move(handler);
}

void PeerServer::Start() {
  sockaddr_in addr = Endpoint{address_, port_}.ToSockaddr();
  std::string where = fmt::format("{}:{}", address_, port_);
  listener_ = Fd::Adopt(
      HW_SYSCALL(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0), "peer socket {}", where));
  int one = 1;
  ::setsockopt(listener_.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  HW_SYSCALL(::bind(listener_.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr),
             "bind peer port {}", where);
  HW_SYSCALL(::listen(listener_.get(), 128), "listen on {}", where);
  socklen_t len = sizeof addr;
  ::getsockname(listener_.get(), reinterpret_cast<sockaddr*>(&addr), &len);
  port_ = ntohs(addr.sin_port);
  acceptor_ = std::thread([this] { AcceptLoop(); });
  spdlog::info("peer services listening on {}:{}", address_, port_);
}

void PeerServer::Stop() {
  if (!acceptor_.joinable()) return;
  {
    std::lock_guard lock(mutex_);
    stopping_ = true;
    for (int fd : connections_) ::shutdown(fd, SHUT_RDWR);
  }
  ::shutdown(listener_.get(), SHUT_RDWR);  // wakes accept()
  acceptor_.join();
  std::unique_lock lock(mutex_);
  idle_.wait(lock, [&] { return running_ == 0; });
  listener_.Reset();
}

void PeerServer::AcceptLoop() {
  for (;;) {
    sockaddr_in addr{};
    socklen_t len = sizeof addr;
    int fd = ::accept4(listener_.get(), reinterpret_cast<sockaddr*>(&addr), &len, SOCK_CLOEXEC);
    if (fd < 0) {
      if (errno == EINTR || errno == ECONNABORTED) continue;
      std::lock_guard lock(mutex_);
      if (stopping_) return;
      if (errno == EMFILE || errno == ENFILE || errno == ENOMEM) {
        spdlog::warn("peer accept: {}", std::strerror(errno));
        std::this_thread::sleep_for(std::chrono::milliseconds(100));
        continue;
      }
      spdlog::error("peer accept failed: {}", std::strerror(errno));
      return;
    }
    char text[INET_ADDRSTRLEN] = "?";
    ::inet_ntop(AF_INET, &addr.sin_addr, text, sizeof text);
    std::string who = fmt::format("{}:{}", text, ntohs(addr.sin_port));
    std::lock_guard lock(mutex_);
    if (stopping_) {
      ::close(fd);
      return;
    }
    ++running_;
    connections_.insert(fd);
    std::thread([this, fd, who] { RunConnection(Fd::Adopt(fd), who); }).detach();
  }
}

void PeerServer::RunConnection(Fd fd, std::string who) {
  int one = 1;
  ::setsockopt(fd.get(), IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  ::setsockopt(fd.get(), SOL_SOCKET, SO_KEEPALIVE, &one, sizeof one);
  PeerService* handler = nullptr;
  PeerIdentity peer{who, ""};
  try {
    peer.service = PeerAccept(fd.get(), key_, kHandshakeTimeout);
    auto it = services_.find(peer.service);
    if (it == services_.end()) {
      spdlog::warn("peer {} asked for unknown service '{}'", who, peer.service);
    } else {
      handler = &it->second;
    }
  } catch (const Error& e) {
    spdlog::warn("refused peer {}: {}", who, e.what());
  }
  {
    std::lock_guard lock(mutex_);
    connections_.erase(fd.get());
    if (stopping_) handler = nullptr;
  }
  if (handler) {
    try {
      (*handler)(std::move(fd), peer);
    } catch (const std::exception& e) {
      spdlog::error("peer {} service {}: {}", who, peer.service, e.what());
    }
  }
  std::lock_guard lock(mutex_);
  --running_;
  idle_.notify_all();
}

}  // namespace homeward
