#include "loopback_carrier.h"

#include <fcntl.h>
#include <net/if.h>
#include <netinet/in.h>
#include <poll.h>
#include <sched.h>
#include <spdlog/spdlog.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <exception>

#include "child_process.h"
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

// Connections to the loopback: to a socket of the namespace (--nowildcard: a listener on
// 0.0.0.0 or :: is one too) they stay the namespace's own; the rest go to the carrier.
// Connections elsewhere (IPv4; ours, `kOutboundRoutes`, brings them to the loopback): a
// packet of a connection the namespace has (the job's, or one the carrier accepted) is
// left alone, but a listener of the job's on 0.0.0.0 does not take them: they go to the
// carrier, which makes them from the node.
std::string Rules(const char* loopback, const char* carrier, bool outbound) {
  std::string rules = fmt::format(
      "*mangle\n"
      "-A PREROUTING -i lo -p tcp -d {0} -m socket --nowildcard -j RETURN\n"
      "-A PREROUTING -i lo -p tcp -d {0} -j TPROXY --on-port {1} --on-ip {2}\n",
      loopback, kLoopbackCarrierPort, carrier);
  if (outbound) {
    rules += fmt::format(
        "-A PREROUTING -i lo -p tcp -m socket -j RETURN\n"
        "-A PREROUTING -i lo -p tcp -j TPROXY --on-port {} --on-ip {}\n",
        kLoopbackCarrierPort, carrier);
  }
  return rules + "COMMIT\n";
}

// Every IPv4 TCP connection of the guest to an address that is not its loopback's is
// routed to its loopback (a table of its own, for TCP alone: UDP and the rest stay
// unreachable), where the rules above hand it to the carrier. The route names 127.0.0.1
// as the source: a local route to an address no device has would otherwise give the
// connection that address as its source too, which the kernel then refuses (it checks
// a source against the local table only, not ours).
constexpr char kOutboundRoutes[] =
    "rule add ipproto tcp lookup 2710 pref 2710\n"
    "route add local default dev lo table 2710 src 127.0.0.1\n";

// Runs `argv` (iptables-restore, ip -batch) with `input`, in the namespace the calling
// thread is in; throws with what it said when it fails.
void RunWithInput(std::vector<std::string> argv, const std::string& input) {
  const std::string tool = argv[0];
  Fd in = Fd::Adopt(HW_SYSCALL(::memfd_create("rules", MFD_CLOEXEC), "memfd for {}", tool));
  Fd err = Fd::Adopt(HW_SYSCALL(::memfd_create("rules-err", MFD_CLOEXEC), "memfd for {}", tool));
  HW_SYSCALL(::write(in.get(), input.data(), input.size()), "write {}'s input", tool);
  HW_SYSCALL(::lseek(in.get(), 0, SEEK_SET), "rewind {}'s input", tool);
  SpawnOptions options;
  options.argv = std::move(argv);
  options.stdin_fd = in.get();
  options.stderr_fd = err.get();
  ExitStatus status = ChildProcess::Spawn(options).Wait();
  if (status.code == 0 && !status.signaled) return;
  char said[512] = {};
  ::pread(err.get(), said, sizeof said - 1, 0);
  Fail(ErrorKind::kFailed, "{} in the guest's network namespace: {} ({})", tool,
       status.Describe(), said);
}

void RestoreRules(const char* tool, const std::string& input) {
  RunWithInput({tool, "-w"}, input);
}

// Why the carrier does not make a connection to `target` from this node (empty: it
// does): the node's own addresses (a guest must not reach its host's services, which a
// connection from the node itself would), and the daemons' peer port.
std::string RefusedOutside(const LoopbackTarget& target, uint16_t peer_port) {
  if (target.port == peer_port) {
    return fmt::format("port {} is the node daemons' peer port", peer_port);
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

bool HasIpv6() {
  int fd = ::socket(AF_INET6, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return false;
  ::close(fd);
  return true;
}

}  // namespace

void InNetworkNamespace(int net_ns, const std::function<void()>& work) {
  std::exception_ptr failed;
  std::thread([&] {
    try {
      HW_SYSCALL(::setns(net_ns, CLONE_NEWNET), "enter the guest's network namespace");
      work();
    } catch (...) {
      failed = std::current_exception();
    }
  }).join();
  if (failed) std::rethrow_exception(failed);
}

Fd NewGuestNetwork() {
  Fd ns;
  std::exception_ptr failed;
  std::thread([&] {
    try {
      HW_SYSCALL(::unshare(CLONE_NEWNET), "unshare a network namespace for a guest");
      Fd sock = Fd::Adopt(HW_SYSCALL(::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0), "socket"));
      ifreq request{};
      std::strncpy(request.ifr_name, "lo", IFNAMSIZ - 1);
      HW_SYSCALL(::ioctl(sock.get(), SIOCGIFFLAGS, &request), "read the guest's loopback");
      request.ifr_flags = static_cast<short>(request.ifr_flags | IFF_UP | IFF_RUNNING);
      HW_SYSCALL(::ioctl(sock.get(), SIOCSIFFLAGS, &request), "bring the guest's loopback up");
      ns = Fd::Open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC);
    } catch (...) {
      failed = std::current_exception();
    }
  }).join();
  if (failed) std::rethrow_exception(failed);
  return ns;
}

void RedirectLoopbackConnections(int net_ns) {
  InNetworkNamespace(net_ns, [] {
    RestoreRules("iptables-restore", Rules("127.0.0.0/8", "127.0.0.1", true));
    try {
      RunWithInput({"ip", "-batch", "-"}, kOutboundRoutes);
    } catch (const Error& e) {
      // The guest runs on with its loopback carried; elsewhere stays unreachable.
      spdlog::warn("a guest's TCP to other addresses is not made from this node: {}",
                   e.what());
    }
    if (!HasIpv6()) return;
    try {
      RestoreRules("ip6tables-restore", Rules("::1/128", "::1", false));
    } catch (const Error& e) {
      // A node without IPv6 rules still carries IPv4: ::1 then stays the job's own.
      spdlog::warn("a guest's ::1 stays its own: {}", e.what());
    }
  });
}

LoopbackCarrier::LoopbackCarrier(int net_ns, LoopbackHome home) : home_(std::move(home)) {
  InNetworkNamespace(net_ns, [this] {
    listeners_.push_back(TransparentListener(AF_INET));
    if (!HasIpv6()) return;
    try {
      listeners_.push_back(TransparentListener(AF_INET6));
    } catch (const Error& e) {
      spdlog::warn("job {}: its connections to ::1 are not carried: {}", home_.home_pid,
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
  connections_.StopAll();
}

void LoopbackCarrier::AcceptLoop() {
  std::vector<pollfd> fds;
  fds.push_back({wake_.get(), POLLIN, 0});
  for (const Fd& listener : listeners_) fds.push_back({listener.get(), POLLIN, 0});
  for (;;) {
    if (::poll(fds.data(), fds.size(), -1) < 0) {
      if (errno == EINTR) continue;
      spdlog::error("loopback carrier of job {}: poll: {}", home_.home_pid, strerror(errno));
      return;
    }
    if (fds[0].revents) return;
    for (size_t i = 1; i < fds.size(); ++i) {
      if (!fds[i].revents) continue;
      int fd = ::accept4(fds[i].fd, nullptr, nullptr, SOCK_CLOEXEC);
      if (fd < 0) continue;  // gone again, or out of descriptors: the backlog keeps it
      connections_.Launch(Fd::Adopt(fd), nullptr,
                          [this](CarriedConnections::Slot& slot) { Carry(slot); });
    }
  }
}

void LoopbackCarrier::Carry(CarriedConnections::Slot& slot) {
  int socket = slot.socket.get();
  // TPROXY kept the job's destination as the accepted socket's local address.
  sockaddr_storage local{};
  socklen_t length = sizeof local;
  HW_SYSCALL(::getsockname(socket, reinterpret_cast<sockaddr*>(&local), &length),
             "getsockname of a carried connection");
  LoopbackTarget target = LoopbackTarget::FromSockaddr(local);
  if (!target.IsLoopback()) {
    CarryOut(slot, target);
    return;
  }
  std::string why;
  int error = 0;
  auto give_up = std::chrono::steady_clock::now() + kNotYetHereGrace;
  for (auto pause = std::chrono::milliseconds(20);; pause = std::min(pause * 2, kMaxPause)) {
    try {
      auto stream = PeerConnectStream(home_.host, home_.port, home_.key, "loopback",
                                      kHomeConnectTimeout);
      SecureStream* raw = stream.get();
      if (!connections_.SetStream(slot, std::move(stream))) return;
      SendLoopbackOpen(*raw, home_.home_pid, target);
      error = ReadLoopbackOpened(*raw, &why);
    } catch (const Error& e) {
      error = e.sys_errno() ? e.sys_errno() : EHOSTUNREACH;
      why = e.what();
    }
    // EPERM: the home does not (yet) have the job on this node. A job that has just been
    // restored here may connect before its home has heard that it arrived: asked again
    // for a moment, the home agrees once it has. Waiting ends early when the job gives up
    // the connection or the carrier stops (its socket shut down).
    if (error != EPERM || std::chrono::steady_clock::now() + pause > give_up) break;
    pollfd job{socket, POLLRDHUP, 0};
    if (::poll(&job, 1, static_cast<int>(pause.count())) != 0) break;
  }
  if (error) {
    // The job's connect succeeded already (the carrier accepted it): a reset is how it
    // learns that the home refused.
    linger reset{1, 0};
    ::setsockopt(socket, SOL_SOCKET, SO_LINGER, &reset, sizeof reset);
    spdlog::info("job {}: loopback connection to {} not carried to {}: {}", home_.home_pid,
                 target.ToString(), home_.home, why);
    return;
  }
  ++carried_;
  spdlog::info("job {}: loopback connection to {} carried to {}", home_.home_pid,
               target.ToString(), home_.home);
  CarryBothWays(*slot.stream, socket);
}

void LoopbackCarrier::CarryOut(CarriedConnections::Slot& slot, const LoopbackTarget& target) {
  int socket = slot.socket.get();
  std::string why;
  int error = 0;
  try {
    why = RefusedOutside(target, home_.port);
    if (!why.empty()) error = EACCES;
  } catch (const Error& e) {
    error = e.sys_errno() ? e.sys_errno() : EACCES;
    why = e.what();
  }
  if (!error) {
    try {
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
        return;
      }
      socklen_t length = 0;
      sockaddr_storage address = target.ToSockaddr(&length);
      HW_SYSCALL(::connect(fd, reinterpret_cast<sockaddr*>(&address), length), "connect to {}",
                 target.ToString());
    } catch (const Error& e) {
      error = e.sys_errno() ? e.sys_errno() : EHOSTUNREACH;
      why = e.what();
    }
  }
  if (error) {
    // As for a refusal at home: the job's connect succeeded at the carrier already, so
    // a reset is how it learns (at its first read or write) that the target refused.
    linger reset{1, 0};
    ::setsockopt(socket, SOL_SOCKET, SO_LINGER, &reset, sizeof reset);
    spdlog::info("job {}: connection to {} not made: {}", home_.home_pid, target.ToString(),
                 why);
    return;
  }
  ++carried_;
  spdlog::info("job {}: connection to {} made from this node (uid {})", home_.home_pid,
               target.ToString(), home_.user.uid);
  CarryBothWays(*slot.stream, socket);
}

}  // namespace homeward
