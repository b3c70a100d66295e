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

}  // namespace


LoopbackCarrier::LoopbackCarrier(int net_ns, LoopbackHome home, CarrierSockets sockets)
    : home_(std::move(home)) {
  guest_net_ = Fd::Adopt(HW_SYSCALL(::fcntl(net_ns, F_DUPFD_CLOEXEC, 0), "dup the guest's netns"));
  own_net_ = Fd::Open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC);
  if (!sockets.opened()) sockets = CarrierSockets::Open(net_ns, fmt::format("job {}", home_.home_pid));
  listeners_ = std::move(sockets.listeners);
  udp_listeners_ = std::move(sockets.udp_listeners);
  gate_ = std::move(sockets.gate);
  icmp_ = std::move(sockets.icmp);
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
  StopFlows();
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
      auto stream = PeerConnectStream(home_.host, home_.port, home_.credentials, "loopback",
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

}  // namespace homeward
