// The UDP half of a guest's carrier: flows between the job's sockets and their targets,
// at home (its loopback) or outside (from this node). See loopback_carrier.h.
#include <netinet/in.h>
#include <poll.h>
#include <spdlog/spdlog.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <functional>

#include "error.h"
#include "fs_credentials.h"
#include "guest_icmp.h"
#include "guest_network.h"
#include "loopback_carrier.h"

namespace homeward {

namespace {

bool Transient(int error) {
  // An ICMP error for an earlier datagram (UDP drops it and goes on), or nothing yet.
  return error == EAGAIN || error == EINTR || error == ECONNREFUSED || error == EHOSTUNREACH ||
         error == ENETUNREACH || error == EHOSTDOWN || error == ENOBUFS;
}

// An ICMP error the target's side reported for an earlier datagram, which the job's socket
// is told of.
bool Unreachable(int error) {
  return error == ECONNREFUSED || error == EHOSTUNREACH || error == ENETUNREACH;
}

int64_t Now() {
  return std::chrono::steady_clock::now().time_since_epoch().count();
}

// Carries a UDP flow between the job's side (`inner`, the flow's socket in its namespace)
// and `outer` (a socket of this node's, connected to the target; -1: the flow is refused
// and its datagrams dropped), with the datagrams the carrier received for it first, until
// it is idle for kUdpFlowIdle, stopped, or its socket is shut down. Returns the datagrams
// that came back. `refused` hears each error the target's side reported (an ICMP error
// for an earlier datagram: ECONNREFUSED, EHOSTUNREACH, ENETUNREACH).
uint64_t RelayDatagrams(int inner, int outer, DatagramFeed& feed, const std::atomic<bool>& stop,
                        const std::function<void(int)>& refused = {}) {
  auto sent_out = [&](const char* data, size_t size) {
    // A datagram the target's side cannot take now is dropped, as UDP does.
    if (outer < 0 || ::send(outer, data, size, MSG_DONTWAIT) >= 0) return;
    if (refused && Unreachable(errno)) refused(errno);
  };
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
        sent_out(datagram.data(), datagram.size());
        last = Now();
      }
    }
    if (fds[0].revents & POLLHUP) break;  // the carrier stops
    if (fds[0].revents) {
      ssize_t n = ::recv(inner, buffer.data(), buffer.size(), MSG_DONTWAIT);
      if (n < 0 && !Transient(errno)) break;
      if (n >= 0) {
        sent_out(buffer.data(), static_cast<size_t>(n));
        last = Now();
      }
    }
    if (fds[1].revents) {
      ssize_t n = ::recv(outer, buffer.data(), buffer.size(), MSG_DONTWAIT);
      if (n < 0 && refused && Unreachable(errno)) refused(errno);
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

struct LoopbackCarrier::UdpFlow {
  std::string key;
  LoopbackTarget source;  // the job's socket
  LoopbackTarget target;
  uint64_t serial = 0;  // the oldest flow ends first when there are too many
  DatagramFeed feed;
  std::atomic<bool> stop{false};
};

void LoopbackCarrier::StopFlows() {
  std::lock_guard lock(flows_mutex_);
  for (auto& [key, flow] : flows_) flow->stop = true;
}

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
  // The target's "unreachable" goes on to the job's socket, which a connected one reports
  // (ECONNREFUSED from a closed port), as at home.
  std::vector<uint8_t> head = GuestIcmp::UdpHead(flow.source, target);
  auto refused = [this, &flow, &head](int error) {
    if (icmp_) icmp_->Unreachable(flow.source, error, head);
  };
  uint64_t replies =
      RelayDatagrams(slot.socket.get(), out.get(), flow.feed, flow.stop, refused);
  spdlog::debug("job {}: UDP flow to {} ended ({} replies)", home_.home_pid, target.ToString(),
                replies);
}

}  // namespace homeward
