#include "guest_network.h"

#include <fcntl.h>
#include <net/if.h>
#include <sched.h>
#include <spdlog/spdlog.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstring>
#include <exception>
#include <thread>

#include "child_process.h"
#include "error.h"
#include "syn_gate.h"

namespace homeward {

namespace {

// Every TCP connection and UDP datagram of the guest to an address that is not its
// loopback's is routed to its loopback (a table of its own, for TCP and UDP alone: ICMP
// and the rest stay unreachable), where the rules above hand it to the carrier. The route
// names the loopback's address as the source: a local route to an address no device has
// would otherwise give the connection that address as its source too, which the kernel
// then refuses (IPv4 checks a source against the local table only, not ours).
std::string OutboundRoutes(const char* source) {
  return fmt::format(
      "rule add ipproto tcp lookup 2710 pref 2710\n"
      "rule add ipproto udp lookup 2710 pref 2711\n"
      "route add local default dev lo table 2710 src {}\n",
      source);
}

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

// Connections and datagrams to the loopback: to a socket of the namespace (--nowildcard:
// a socket on 0.0.0.0 or :: is one too) they stay the namespace's own; the rest go to the
// carrier. Those elsewhere (ours, `OutboundRoutes`, brings them to the loopback): a
// packet of a socket the namespace has (the job's connection, one the carrier accepted,
// a flow's own socket) is left alone, but a socket of the job's on 0.0.0.0 does not take
// them: they go to the carrier, which sends them from the node.
// A TCP SYN bound for the carrier first waits in the carrier's queue (syn_gate.h) with
// `gate`: passed, it comes back marked and goes on to the carrier; refused, it comes back
// with a refusal mark, goes past the carrier, and the filter table rejects it as the
// target did.
std::string Rules(const char* loopback, const char* carrier, bool outbound, bool ipv6,
                  bool gate) {
  std::string rules = fmt::format("*mangle\n-A PREROUTING -i lo -p udp -m mark --mark {:#x} -j RETURN\n",
                                  kFlowMark);
  std::string held;
  if (gate) {
    for (uint32_t mark : {kSynResetMark, kSynHostUnreachableMark, kSynNetUnreachableMark}) {
      rules += fmt::format("-A PREROUTING -i lo -p tcp -m mark --mark {:#x} -j RETURN\n", mark);
    }
    held = fmt::format("--syn -m mark --mark 0 -j NFQUEUE --queue-num {}", kSynQueue);
  }
  rules += fmt::format(
      "-A PREROUTING -i lo -p tcp -d {0} -m socket --nowildcard -j RETURN\n"
      "{3}"
      "-A PREROUTING -i lo -p tcp -d {0} -j TPROXY --on-port {1} --on-ip {2}\n"
      "-A PREROUTING -i lo -p udp -d {0} -m socket --nowildcard -j RETURN\n"
      "-A PREROUTING -i lo -p udp -d {0} -j TPROXY --on-port {1} --on-ip {2}\n",
      loopback, kLoopbackCarrierPort, carrier,
      gate ? fmt::format("-A PREROUTING -i lo -p tcp -d {} {}\n", loopback, held) : "");
  if (outbound) {
    for (std::string protocol : {"tcp", "udp"}) {
      rules += fmt::format(
          "-A PREROUTING -i lo -p {0} -m socket -j RETURN\n"
          "{3}"
          "-A PREROUTING -i lo -p {0} -j TPROXY --on-port {1} --on-ip {2}\n",
          protocol, kLoopbackCarrierPort, carrier,
          gate && protocol == "tcp" ? fmt::format("-A PREROUTING -i lo -p tcp {}\n", held) : "");
    }
  }
  rules += "COMMIT\n";
  if (!gate) return rules;
  rules += "*filter\n";
  const std::pair<uint32_t, const char*> refusals[] = {
      {kSynResetMark, "tcp-reset"},
      {kSynHostUnreachableMark, ipv6 ? "icmp6-addr-unreachable" : "icmp-host-unreachable"},
      {kSynNetUnreachableMark, ipv6 ? "icmp6-no-route" : "icmp-net-unreachable"}};
  for (auto [mark, with] : refusals) {
    rules += fmt::format("-A INPUT -i lo -p tcp -m mark --mark {:#x} -j REJECT --reject-with {}\n",
                         mark, with);
  }
  return rules + "COMMIT\n";
}

// The rules with the SYN gate, or without it where the kernel has no NFQUEUE (the job's
// connect then succeeds at the carrier, and a refusal shows as a reset at its first read
// or write).
void LoadRules(const char* tool, const char* loopback, const char* carrier, bool outbound,
               bool ipv6) {
  try {
    RestoreRules(tool, Rules(loopback, carrier, outbound, ipv6, true));
  } catch (const Error& e) {
    spdlog::warn("a guest's connect succeeds before its target answers: {}", e.what());
    RestoreRules(tool, Rules(loopback, carrier, outbound, ipv6, false));
  }
}

}  // namespace

bool HasIpv6() {
  int fd = ::socket(AF_INET6, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return false;
  ::close(fd);
  return true;
}

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
    // The routes first: the rules for the traffic they bring are set only where they are.
    bool outbound = true;
    try {
      RunWithInput({"ip", "-batch", "-"}, OutboundRoutes("127.0.0.1"));
    } catch (const Error& e) {
      // The guest runs on with its loopback carried; elsewhere stays unreachable.
      outbound = false;
      spdlog::warn("a guest's TCP and UDP to other addresses are not sent from this node: {}",
                   e.what());
    }
    LoadRules("iptables-restore", "127.0.0.0/8", "127.0.0.1", outbound, false);
    if (!HasIpv6()) return;
    bool outbound6 = true;
    try {
      RunWithInput({"ip", "-6", "-batch", "-"}, OutboundRoutes("::1"));
    } catch (const Error& e) {
      outbound6 = false;
      spdlog::warn("a guest's IPv6 to other addresses is not sent from this node: {}", e.what());
    }
    try {
      LoadRules("ip6tables-restore", "::1/128", "::1", outbound6, true);
    } catch (const Error& e) {
      // A node without IPv6 rules still carries IPv4: ::1 then stays the job's own.
      spdlog::warn("a guest's ::1 stays its own: {}", e.what());
    }
  });
}

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

}  // namespace homeward
