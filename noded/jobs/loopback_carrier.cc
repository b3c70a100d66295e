#include "loopback_carrier.h"

#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <spdlog/spdlog.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <exception>

#include "error.h"
#include "fs_credentials.h"
#include "peer_auth.h"

namespace homeward {

namespace {

constexpr auto kHomeConnectTimeout = std::chrono::seconds(5);
// How long a connection the home refuses as not this node's job is asked again (a job
// restored here before its home recorded the move), and the longest pause between asks.
constexpr auto kNotYetHereGrace = std::chrono::seconds(3);
constexpr auto kMaxPause = std::chrono::milliseconds(500);
// Connections held at once (their SYNs waiting for the target's answer): more SYNs are
// dropped, as a full backlog drops them, and the job's kernel sends them again.
constexpr size_t kMaxHeld = 128;
// How long a passed connection waits for the job's kernel to complete it with the carrier.
constexpr auto kAcceptWait = std::chrono::seconds(10);

// Why the carrier does not make a connection (or send a datagram) to `target` from this
// node (empty: it does): the node's own addresses (a guest must not reach its host's
// services, which a connection from the node itself would), the daemons' ports (peer,
// gossip), and for UDP multicast and broadcast (a guest talks to one host at a time).
std::string RefusedOutside(const LoopbackTarget& target, const std::vector<uint16_t>& ports,
                           bool udp) {
  for (uint16_t port : ports) {
    if (target.port == port) return fmt::format("port {} is a port of the node daemons", port);
  }
  if (udp) {
    bool group = target.family == AF_INET6
                     ? target.address[0] == 0xff
                     : (target.address[0] & 0xf0) == 0xe0 ||
                           (target.address[0] == 255 && target.address[1] == 255 &&
                            target.address[2] == 255 && target.address[3] == 255);
    if (group) return fmt::format("{} is a multicast or broadcast address", target.AddressText());
  }
  // An address of this node is one a socket can be bound to (the kernel's own answer,
  // for every device and every address it has, without a list of them to keep).
  Fd probe = Fd::Adopt(HW_SYSCALL(::socket(target.family, SOCK_STREAM | SOCK_CLOEXEC, 0),
                                  "socket to probe {}", target.AddressText()));
  LoopbackTarget any_port = target;
  any_port.port = 0;
  socklen_t length = 0;
  sockaddr_storage address = any_port.ToSockaddr(&length);
  if (::bind(probe.get(), reinterpret_cast<sockaddr*>(&address), length) == 0) {
    return fmt::format("{} is an address of this node", target.AddressText());
  }
  if (errno != EADDRNOTAVAIL) {
    return fmt::format("cannot tell whether {} is an address of this node: {}",
                       target.AddressText(), strerror(errno));
  }
  return {};
}

Fd TransparentListener(int family) {
  Fd fd = Fd::Adopt(HW_SYSCALL(::socket(family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0),
                               "carrier socket"));
  int on = 1;
  sockaddr_storage storage{};
  socklen_t length = 0;
  if (family == AF_INET6) {
    HW_SYSCALL(::setsockopt(fd.get(), SOL_IPV6, IPV6_TRANSPARENT, &on, sizeof on),
               "IPV6_TRANSPARENT");
    HW_SYSCALL(::setsockopt(fd.get(), IPPROTO_IPV6, IPV6_V6ONLY, &on, sizeof on), "IPV6_V6ONLY");
    auto& in6 = reinterpret_cast<sockaddr_in6&>(storage);
    in6.sin6_family = AF_INET6;
    in6.sin6_addr = in6addr_loopback;
    in6.sin6_port = htons(kLoopbackCarrierPort);
    length = sizeof in6;
  } else {
    HW_SYSCALL(::setsockopt(fd.get(), SOL_IP, IP_TRANSPARENT, &on, sizeof on), "IP_TRANSPARENT");
    auto& in = reinterpret_cast<sockaddr_in&>(storage);
    in.sin_family = AF_INET;
    in.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    in.sin_port = htons(kLoopbackCarrierPort);
    length = sizeof in;
  }
  HW_SYSCALL(::bind(fd.get(), reinterpret_cast<sockaddr*>(&storage), length),
             "bind the carrier to port {} of the guest's loopback", kLoopbackCarrierPort);
  HW_SYSCALL(::listen(fd.get(), 128), "listen on the guest's loopback");
  return fd;
}

// The carrier's UDP socket on port 1 of the namespace's loopback: TPROXY hands it every
// datagram that starts a flow, with the datagram's target as its original destination.
Fd TransparentDatagramSocket(int family) {
  Fd fd = Fd::Adopt(HW_SYSCALL(::socket(family, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0),
                               "carrier's UDP socket"));
  int on = 1;
  if (family == AF_INET6) {
    HW_SYSCALL(::setsockopt(fd.get(), SOL_IPV6, IPV6_TRANSPARENT, &on, sizeof on),
               "IPV6_TRANSPARENT");
    HW_SYSCALL(::setsockopt(fd.get(), SOL_IPV6, IPV6_RECVORIGDSTADDR, &on, sizeof on),
               "IPV6_RECVORIGDSTADDR");
    HW_SYSCALL(::setsockopt(fd.get(), IPPROTO_IPV6, IPV6_V6ONLY, &on, sizeof on), "IPV6_V6ONLY");
  } else {
    HW_SYSCALL(::setsockopt(fd.get(), SOL_IP, IP_TRANSPARENT, &on, sizeof on), "IP_TRANSPARENT");
    HW_SYSCALL(::setsockopt(fd.get(), SOL_IP, IP_RECVORIGDSTADDR, &on, sizeof on),
               "IP_RECVORIGDSTADDR");
  }
  LoopbackTarget where;
  where.family = family;
  if (family == AF_INET6) {
    std::memcpy(where.address.data(), &in6addr_loopback, 16);
  } else {
    where.address[0] = 127;
    where.address[3] = 1;
  }
  where.port = kLoopbackCarrierPort;
  socklen_t length = 0;
  sockaddr_storage storage = where.ToSockaddr(&length);
  HW_SYSCALL(::bind(fd.get(), reinterpret_cast<sockaddr*>(&storage), length),
             "bind the carrier to UDP port {} of the guest's loopback", kLoopbackCarrierPort);
  return fd;
}

bool Transient(int error) {
  // An ICMP error for an earlier datagram (UDP drops it and goes on), or nothing yet.
  return error == EAGAIN || error == EINTR || error == ECONNREFUSED || error == EHOSTUNREACH ||
         error == ENETUNREACH || error == EHOSTDOWN || error == ENOBUFS;
}

int64_t Now() {
  return std::chrono::steady_clock::now().time_since_epoch().count();
}

}  // namespace

struct LoopbackCarrier::UdpFlow {
  std::string key;
  LoopbackTarget source;  // the job's socket
  LoopbackTarget target;
  uint64_t serial = 0;  // the oldest flow ends first when there are too many
  DatagramFeed feed;
  std::atomic<bool> stop{false};
};

LoopbackCarrier::LoopbackCarrier(int net_ns, LoopbackHome home) : home_(std::move(home)) {
  guest_net_ = Fd::Adopt(HW_SYSCALL(::fcntl(net_ns, F_DUPFD_CLOEXEC, 0), "dup the guest's netns"));
  own_net_ = Fd::Open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC);
  InNetworkNamespace(net_ns, [this] {
    try {
      gate_ = std::make_unique<SynGate>();
    } catch (const Error& e) {
      // The rules queue no SYN where the kernel has no NFQUEUE; if they do, the job's
      // connections wait until a carrier holds the queue.
      spdlog::error("job {}: its connections are not held for their target's answer: {}",
                    home_.home_pid, e.what());
    }
    listeners_.push_back(TransparentListener(AF_INET));
    udp_listeners_.push_back(TransparentDatagramSocket(AF_INET));
    if (!HasIpv6()) return;
    try {
      listeners_.push_back(TransparentListener(AF_INET6));
      udp_listeners_.push_back(TransparentDatagramSocket(AF_INET6));
    } catch (const Error& e) {
      spdlog::warn("job {}: its IPv6 connections and datagrams are not carried: {}", home_.home_pid,
                   e.what());
    }
  });
  wake_ = Fd::Adopt(HW_SYSCALL(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK), "eventfd"));
  acceptor_ = std::thread([this] { AcceptLoop(); });
}

LoopbackCarrier::~LoopbackCarrier() {
  uint64_t one = 1;
  if (::write(wake_.get(), &one, sizeof one) < 0) {
    spdlog::warn("cannot wake the loopback carrier of job {}", home_.home_pid);
  }
  if (acceptor_.joinable()) acceptor_.join();
  {
    std::lock_guard lock(held_mutex_);
    stopping_ = true;
  }
  handed_.notify_all();
  {
    std::lock_guard lock(flows_mutex_);
    for (auto& [key, flow] : flows_) flow->stop = true;
  }
  connections_.StopAll();
}

void LoopbackCarrier::AcceptLoop() {
  std::vector<pollfd> fds;
  fds.push_back({wake_.get(), POLLIN, 0});
  for (const Fd& listener : listeners_) fds.push_back({listener.get(), POLLIN, 0});
  size_t first_udp = fds.size();
  for (const Fd& socket : udp_listeners_) fds.push_back({socket.get(), POLLIN, 0});
  size_t gate = fds.size();
  if (gate_) fds.push_back({gate_->fd(), POLLIN, 0});
  for (;;) {
    if (::poll(fds.data(), fds.size(), -1) < 0) {
      if (errno == EINTR) continue;
      spdlog::error("loopback carrier of job {}: poll: {}", home_.home_pid, strerror(errno));
      return;
    }
    if (fds[0].revents) return;
    for (size_t i = 1; i < fds.size(); ++i) {
      if (!fds[i].revents) continue;
      if (i == gate) {
        HoldSyns();
        continue;
      }
      if (i >= first_udp) {
        ReceiveDatagrams(fds[i].fd);
        continue;
      }
      int fd = ::accept4(fds[i].fd, nullptr, nullptr, SOCK_CLOEXEC);
      if (fd < 0) continue;  // gone again, or out of descriptors: the backlog keeps it
      Fd socket = Fd::Adopt(fd);
      if (HandOver(socket)) continue;
      connections_.Launch(std::move(socket), nullptr,
                          [this](CarriedConnections::Slot& slot) { Carry(slot); });
    }
  }
}

int LoopbackCarrier::OpenAtHome(CarriedConnections::Slot& slot, const LoopbackTarget& target,
                                LoopbackTransport transport, std::string* why) {
  int error = 0;
  auto give_up = std::chrono::steady_clock::now() + kNotYetHereGrace;
  for (auto pause = std::chrono::milliseconds(20);; pause = std::min(pause * 2, kMaxPause)) {
    try {
      auto stream = PeerConnectStream(home_.host, home_.port, home_.key, "loopback",
                                      kHomeConnectTimeout);
      SecureStream* raw = stream.get();
      if (!connections_.SetStream(slot, std::move(stream))) return ECANCELED;
      SendLoopbackOpen(*raw, home_.home_pid, target, transport);
      error = ReadLoopbackOpened(*raw, why);
    } catch (const Error& e) {
      // The home itself not reached (its daemon down, the link cut, the stream broken):
      // to the job its host is unreachable, whatever the connection to the daemon said
      // (a refusal by the home's daemon port is not one by the job's target).
      error = EHOSTUNREACH;
      *why = e.what();
    }
    // EPERM: the home does not (yet) have the job on this node. A job that has just been
    // restored here may connect before its home has heard that it arrived: asked again
    // for a moment, the home agrees once it has. Waiting ends early when the job gives up
    // the connection or the carrier stops (its socket shut down: for a UDP flow's socket
    // that is the only event polled, POLLHUP).
    if (error != EPERM || std::chrono::steady_clock::now() + pause > give_up) break;
    short events = transport == LoopbackTransport::kTcp ? POLLRDHUP : 0;
    pollfd job{slot.socket.get(), events, 0};
    if (::poll(&job, 1, static_cast<int>(pause.count())) != 0) break;
  }
  return error;
}

void LoopbackCarrier::Carry(CarriedConnections::Slot& slot) {
  int socket = slot.socket.get();
  // TPROXY kept the job's destination as the accepted socket's local address.
  sockaddr_storage local{};
  socklen_t length = sizeof local;
  HW_SYSCALL(::getsockname(socket, reinterpret_cast<sockaddr*>(&local), &length),
             "getsockname of a carried connection");
  LoopbackTarget target = LoopbackTarget::FromSockaddr(local);
  std::string why;
  int error = Open(slot, target, &why);
  if (error == ECANCELED) return;
  if (error) {
    // The job's connect succeeded already (the carrier accepted it): a reset is how it
    // learns, at its first read or write, that the target refused.
    linger reset{1, 0};
    ::setsockopt(socket, SOL_SOCKET, SO_LINGER, &reset, sizeof reset);
    LogNotMade(target, why);
    return;
  }
  CarryOpened(slot, target);
}

int LoopbackCarrier::Open(CarriedConnections::Slot& slot, const LoopbackTarget& target,
                          std::string* why) {
  if (target.IsLoopback()) return OpenAtHome(slot, target, LoopbackTransport::kTcp, why);
  return ConnectOut(slot, target, why);
}

void LoopbackCarrier::LogNotMade(const LoopbackTarget& target, const std::string& why) {
  if (target.IsLoopback()) {
    spdlog::info("job {}: loopback connection to {} not carried to {}: {}", home_.home_pid,
                 target.ToString(), home_.home, why);
  } else {
    spdlog::info("job {}: connection to {} not made: {}", home_.home_pid, target.ToString(), why);
  }
}

void LoopbackCarrier::CarryOpened(CarriedConnections::Slot& slot, const LoopbackTarget& target) {
  ++carried_;
  if (target.IsLoopback()) {
    spdlog::info("job {}: loopback connection to {} carried to {}", home_.home_pid,
                 target.ToString(), home_.home);
  } else {
    spdlog::info("job {}: connection to {} made from this node (uid {})", home_.home_pid,
                 target.ToString(), home_.user.uid);
  }
  CarryBothWays(*slot.stream, slot.socket.get());
}

int LoopbackCarrier::ConnectOut(CarriedConnections::Slot& slot, const LoopbackTarget& target,
                                std::string* why) {
  try {
    std::vector<uint16_t> ports = home_.daemon_ports;
    ports.push_back(home_.port);
    *why = RefusedOutside(target, ports, false);
    if (!why->empty()) return EACCES;
    // The socket is the job's user's (its owner is the thread's fsuid when it is made):
    // the node's firewall (-m owner) and `ss -e` see the user's connection, not root's.
    Fd out;
    {
      ScopedFsCredentials as_user(home_.user);
      out = Fd::Adopt(HW_SYSCALL(::socket(target.family, SOCK_STREAM | SOCK_CLOEXEC, 0),
                                 "socket for {}", target.ToString()));
    }
    int fd = out.get();
    // In the slot before connect, so that stopping breaks a connect still under way.
    if (!connections_.SetStream(slot, SecureStream::Plain(std::move(out), target.ToString()))) {
      return ECANCELED;
    }
    socklen_t length = 0;
    sockaddr_storage address = target.ToSockaddr(&length);
    HW_SYSCALL(::connect(fd, reinterpret_cast<sockaddr*>(&address), length), "connect to {}",
               target.ToString());
    return 0;
  } catch (const Error& e) {
    *why = e.what();
    return e.sys_errno() ? e.sys_errno() : EHOSTUNREACH;
  }
}

struct LoopbackCarrier::Held {
  HeldSyn first;
  std::vector<uint32_t> packets;  // its SYNs waiting for their verdict
  bool decided = false;  // and passed: a refused one is no longer held
  Fd accepted;  // the job's connection, once the carrier accepted it
};

void LoopbackCarrier::HoldSyns() {
  for (const HeldSyn& syn : gate_->Receive()) {
    std::string key = syn.Key();
    std::unique_lock lock(held_mutex_);
    auto it = held_.find(key);
    if (it != held_.end()) {
      // The job's kernel sent it again while its target is still asked: it waits too.
      if (!it->second->decided) {
        it->second->packets.push_back(syn.id);
        continue;
      }
      lock.unlock();
      gate_->Pass({syn.id});  // decided and not erased: passed
      continue;
    }
    if (held_.size() >= kMaxHeld) {
      lock.unlock();
      gate_->Refuse(syn, {syn.id}, ETIMEDOUT);
      continue;
    }
    auto held = std::make_shared<Held>();
    held->first = syn;
    held->packets.push_back(syn.id);
    held_[key] = held;
    lock.unlock();
    bool launched = connections_.Launch(Fd(), nullptr, [this, held](CarriedConnections::Slot& slot) {
      OpenHeld(slot, held);
    });
    if (!launched) {
      std::lock_guard relock(held_mutex_);
      held_.erase(key);
      gate_->Refuse(syn, {syn.id}, ETIMEDOUT);
    }
  }
}

void LoopbackCarrier::OpenHeld(CarriedConnections::Slot& slot, const std::shared_ptr<Held>& held) {
  const LoopbackTarget& target = held->first.target;
  std::string key = held->first.Key(), why;
  int error = Open(slot, target, &why);
  std::vector<uint32_t> packets;
  {
    std::lock_guard lock(held_mutex_);
    held->decided = true;
    packets.swap(held->packets);
    if (error) held_.erase(key);
  }
  if (error) {
    gate_->Refuse(held->first, packets, error);
  } else {
    gate_->Pass(packets);
  }
  if (error) {
    if (error != ECANCELED) LogNotMade(target, why);
    return;
  }
  // Passed: the job's kernel completes the connection with the carrier's listener, whose
  // accept hands the socket here (HandOver).
  Fd socket;
  {
    std::unique_lock lock(held_mutex_);
    handed_.wait_for(lock, kAcceptWait, [&] { return held->accepted.valid() || stopping_; });
    socket = std::move(held->accepted);
    held_.erase(key);
  }
  if (!socket.valid()) {
    spdlog::info("job {}: connection to {} made, but the job did not complete it",
                 home_.home_pid, target.ToString());
    return;
  }
  if (!connections_.SetSocket(slot, std::move(socket))) return;
  CarryOpened(slot, target);
}

bool LoopbackCarrier::HandOver(Fd& socket) {
  sockaddr_storage local{}, peer{};
  socklen_t local_length = sizeof local, peer_length = sizeof peer;
  if (::getsockname(socket.get(), reinterpret_cast<sockaddr*>(&local), &local_length) != 0 ||
      ::getpeername(socket.get(), reinterpret_cast<sockaddr*>(&peer), &peer_length) != 0) {
    return false;
  }
  std::string key = LoopbackTarget::FromSockaddr(peer).ToString() + ">" +
                    LoopbackTarget::FromSockaddr(local).ToString();
  {
    std::lock_guard lock(held_mutex_);
    auto it = held_.find(key);
    if (it == held_.end() || !it->second->decided || it->second->accepted.valid()) {
      return false;
    }
    it->second->accepted = std::move(socket);
  }
  handed_.notify_all();
  return true;
}

namespace {

// Carries a UDP flow between the job's side (`inner`, the flow's socket in its namespace)
// and `outer` (a socket of this node's, connected to the target; -1: the flow is refused
// and its datagrams dropped), with the datagrams the carrier received for it first, until
// it is idle for kUdpFlowIdle, stopped, or its socket is shut down. Returns the datagrams
// that came back.
uint64_t RelayDatagrams(int inner, int outer, DatagramFeed& feed, const std::atomic<bool>& stop) {
  std::vector<char> buffer(kMaxDatagram);
  uint64_t replies = 0;
  int64_t last = Now();
  auto idle = std::chrono::duration_cast<std::chrono::steady_clock::duration>(kUdpFlowIdle);
  pollfd fds[3] = {{inner, POLLIN, 0}, {outer, POLLIN, 0}, {feed.fd(), POLLIN, 0}};
  while (!stop) {
    auto left = idle - std::chrono::steady_clock::duration(Now() - last);
    auto left_ms = std::chrono::duration_cast<std::chrono::milliseconds>(left).count();
    if (left_ms <= 0) break;
    if (::poll(fds, 3, static_cast<int>(left_ms)) < 0) {
      if (errno == EINTR) continue;
      spdlog::warn("poll a UDP flow: {}", strerror(errno));
      break;
    }
    if (fds[2].revents) {
      for (const std::string& datagram : feed.TakeAll()) {
        if (outer >= 0) ::send(outer, datagram.data(), datagram.size(), MSG_DONTWAIT);
        last = Now();
      }
    }
    if (fds[0].revents & POLLHUP) break;  // the carrier stops
    if (fds[0].revents) {
      ssize_t n = ::recv(inner, buffer.data(), buffer.size(), MSG_DONTWAIT);
      if (n < 0 && !Transient(errno)) break;
      if (n >= 0) {
        // A datagram the target's side cannot take now is dropped, as UDP does.
        if (outer >= 0) ::send(outer, buffer.data(), static_cast<size_t>(n), MSG_DONTWAIT);
        last = Now();
      }
    }
    if (fds[1].revents) {
      ssize_t n = ::recv(outer, buffer.data(), buffer.size(), MSG_DONTWAIT);
      if (n < 0 && !Transient(errno)) break;
      if (n >= 0) {
        ::send(inner, buffer.data(), static_cast<size_t>(n), MSG_DONTWAIT);
        ++replies;
        last = Now();
      }
    }
  }
  return replies;
}

}  // namespace

void LoopbackCarrier::ReceiveDatagrams(int listener) {
  std::vector<char> buffer(kMaxDatagram);
  for (;;) {
    sockaddr_storage from{};
    char control[CMSG_SPACE(sizeof(sockaddr_in6))] = {};
    iovec iov{buffer.data(), buffer.size()};
    msghdr message{};
    message.msg_name = &from;
    message.msg_namelen = sizeof from;
    message.msg_iov = &iov;
    message.msg_iovlen = 1;
    message.msg_control = control;
    message.msg_controllen = sizeof control;
    ssize_t n = ::recvmsg(listener, &message, MSG_DONTWAIT);
    if (n < 0) {
      if (!Transient(errno)) {
        spdlog::warn("job {}: carrier's UDP socket: {}", home_.home_pid, strerror(errno));
      }
      return;
    }
    const sockaddr_storage* target_address = nullptr;
    for (cmsghdr* c = CMSG_FIRSTHDR(&message); c; c = CMSG_NXTHDR(&message, c)) {
      if ((c->cmsg_level == SOL_IP && c->cmsg_type == IP_ORIGDSTADDR) ||
          (c->cmsg_level == SOL_IPV6 && c->cmsg_type == IPV6_ORIGDSTADDR)) {
        target_address = reinterpret_cast<const sockaddr_storage*>(CMSG_DATA(c));
      }
    }
    if (!target_address || (message.msg_flags & MSG_TRUNC)) continue;
    sockaddr_storage target_copy{};
    std::memcpy(&target_copy, target_address,
                target_address->ss_family == AF_INET6 ? sizeof(sockaddr_in6) : sizeof(sockaddr_in));
    LoopbackTarget source = LoopbackTarget::FromSockaddr(from);
    LoopbackTarget target = LoopbackTarget::FromSockaddr(target_copy);
    // The job's datagrams come from its loopback, the only device of its namespace.
    if (!source.IsLoopback()) continue;
    std::string datagram(buffer.data(), static_cast<size_t>(n));
    std::string key = source.ToString() + ">" + target.ToString();
    {
      std::lock_guard lock(flows_mutex_);
      auto it = flows_.find(key);
      if (it != flows_.end()) {
        // Sent before the flow's own socket was there: the flow sends it on.
        it->second->feed.Push(std::move(datagram));
        continue;
      }
    }
    StartFlow(source, target, std::move(datagram));
  }
}

Fd LoopbackCarrier::FlowSocket(const LoopbackTarget& source, const LoopbackTarget& target) {
  // This thread (the acceptor, in the daemon's namespace) enters the guest's for the
  // socket and comes back at once: the flows' threads it starts must be in the daemon's.
  HW_SYSCALL(::setns(guest_net_.get(), CLONE_NEWNET), "enter the guest's network namespace");
  Fd socket;
  std::exception_ptr failed;
  try {
    socket = Fd::Adopt(
        HW_SYSCALL(::socket(target.family, SOCK_DGRAM | SOCK_CLOEXEC, 0), "a UDP flow's socket"));
    int on = 1;
    int mark = kFlowMark;
    if (target.family == AF_INET6) {
      HW_SYSCALL(::setsockopt(socket.get(), SOL_IPV6, IPV6_TRANSPARENT, &on, sizeof on),
                 "IPV6_TRANSPARENT");
    } else {
      HW_SYSCALL(::setsockopt(socket.get(), SOL_IP, IP_TRANSPARENT, &on, sizeof on),
                 "IP_TRANSPARENT");
    }
    // Another socket of the job's may have a flow to the same target.
    HW_SYSCALL(::setsockopt(socket.get(), SOL_SOCKET, SO_REUSEADDR, &on, sizeof on),
               "SO_REUSEADDR");
    HW_SYSCALL(::setsockopt(socket.get(), SOL_SOCKET, SO_MARK, &mark, sizeof mark), "SO_MARK");
    socklen_t length = 0;
    sockaddr_storage address = target.ToSockaddr(&length);
    HW_SYSCALL(::bind(socket.get(), reinterpret_cast<sockaddr*>(&address), length),
               "bind a UDP flow's socket to {}", target.ToString());
    address = source.ToSockaddr(&length);
    HW_SYSCALL(::connect(socket.get(), reinterpret_cast<sockaddr*>(&address), length),
               "connect a UDP flow's socket to {}", source.ToString());
  } catch (...) {
    failed = std::current_exception();
  }
  if (::setns(own_net_.get(), CLONE_NEWNET) != 0) {
    // Left in the guest's namespace, this thread would start flows that send from there.
    spdlog::critical("loopback carrier: cannot return to the daemon's network namespace: {}",
                     strerror(errno));
    std::abort();
  }
  if (failed) std::rethrow_exception(failed);
  return socket;
}

void LoopbackCarrier::StartFlow(const LoopbackTarget& source, const LoopbackTarget& target,
                                std::string first) {
  auto flow = std::make_shared<UdpFlow>();
  flow->key = source.ToString() + ">" + target.ToString();
  flow->source = source;
  flow->target = target;
  Fd socket;
  try {
    socket = FlowSocket(source, target);
  } catch (const Error& e) {
    // A socket of the job's own holds the target's port (a server of its own on 0.0.0.0
    // there, say): the datagram is dropped.
    spdlog::info("job {}: UDP from {} to {} dropped: {}", home_.home_pid, source.ToString(),
                 target.ToString(), e.what());
    return;
  }
  flow->feed.Push(std::move(first));
  {
    std::lock_guard lock(flows_mutex_);
    if (flows_.size() >= kMaxUdpFlows) {
      auto oldest = std::min_element(flows_.begin(), flows_.end(), [](auto& a, auto& b) {
        return a.second->serial < b.second->serial;
      });
      spdlog::info("job {}: {} UDP flows at once: the oldest ({}) ends", home_.home_pid,
                   flows_.size() + 1, oldest->first);
      oldest->second->stop = true;
      uint64_t one = 1;
      if (::write(oldest->second->feed.fd(), &one, sizeof one) < 0) {
        spdlog::debug("wake a UDP flow: {}", strerror(errno));
      }
      flows_.erase(oldest);
    }
    flow->serial = ++flows_started_;
    flows_[flow->key] = flow;
  }
  bool launched = connections_.Launch(std::move(socket), nullptr, [this, flow](auto& slot) {
    try {
      if (flow->target.IsLoopback()) {
        CarryFlowHome(slot, *flow);
      } else {
        CarryFlowOut(slot, *flow);
      }
    } catch (const std::exception& e) {
      spdlog::warn("job {}: UDP flow {}: {}", home_.home_pid, flow->key, e.what());
    }
    std::lock_guard lock(flows_mutex_);
    auto it = flows_.find(flow->key);
    if (it != flows_.end() && it->second == flow) flows_.erase(it);
  });
  if (!launched) {
    std::lock_guard lock(flows_mutex_);
    auto it = flows_.find(flow->key);
    if (it != flows_.end() && it->second == flow) flows_.erase(it);
  }
}

void LoopbackCarrier::CarryFlowHome(CarriedConnections::Slot& slot, UdpFlow& flow) {
  std::string why;
  int error = OpenAtHome(slot, flow.target, LoopbackTransport::kUdp, &why);
  if (error == ECANCELED) return;
  if (error) {
    // Its datagrams are dropped until it is idle, as a home that does not answer would;
    // said once per flow.
    spdlog::info("job {}: UDP flow to {} not carried to {}: {}", home_.home_pid,
                 flow.target.ToString(), home_.home, why);
    RelayDatagrams(slot.socket.get(), -1, flow.feed, flow.stop);
    return;
  }
  ++carried_;
  spdlog::info("job {}: UDP flow to {} carried to {}", home_.home_pid, flow.target.ToString(),
               home_.home);
  DatagramCarry how;
  how.idle = std::chrono::duration_cast<std::chrono::milliseconds>(kUdpFlowIdle);
  how.feed = &flow.feed;
  how.stop = &flow.stop;
  CarriedBytes carried = CarryDatagrams(*slot.stream, slot.socket.get(), how);
  spdlog::debug("job {}: UDP flow to {} ended: {} bytes to it, {} back", home_.home_pid,
                flow.target.ToString(), carried.to_stream, carried.from_stream);
}

void LoopbackCarrier::CarryFlowOut(CarriedConnections::Slot& slot, UdpFlow& flow) {
  const LoopbackTarget& target = flow.target;
  std::string why;
  Fd out;
  try {
    std::vector<uint16_t> ports = home_.daemon_ports;
    ports.push_back(home_.port);
    why = RefusedOutside(target, ports, true);
    if (why.empty()) {
      // The job's user's socket, as for a connection (CarryOut).
      {
        ScopedFsCredentials as_user(home_.user);
        out = Fd::Adopt(HW_SYSCALL(::socket(target.family, SOCK_DGRAM | SOCK_CLOEXEC, 0),
                                   "socket for {}", target.ToString()));
      }
      socklen_t length = 0;
      sockaddr_storage address = target.ToSockaddr(&length);
      HW_SYSCALL(::connect(out.get(), reinterpret_cast<sockaddr*>(&address), length),
                 "connect to {}", target.ToString());
    }
  } catch (const Error& e) {
    why = e.what();
    out.Reset();
  }
  if (!why.empty()) {
    // Dropped until the flow is idle: said once per flow, not per datagram.
    spdlog::info("job {}: UDP to {} not sent: {}", home_.home_pid, target.ToString(), why);
    RelayDatagrams(slot.socket.get(), -1, flow.feed, flow.stop);
    return;
  }
  ++carried_;
  spdlog::info("job {}: UDP flow to {} sent from this node (uid {})", home_.home_pid,
               target.ToString(), home_.user.uid);
  uint64_t replies = RelayDatagrams(slot.socket.get(), out.get(), flow.feed, flow.stop);
  spdlog::debug("job {}: UDP flow to {} ended ({} replies)", home_.home_pid, target.ToString(),
                replies);
}

}  // namespace homeward
