#include "node_check.h"

#include <fcntl.h>
#include <cstdlib>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <sched.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>

#include <fmt/format.h>

#include "checkpoint.h"
#include "child_process.h"
#include "fd.h"

#ifndef CLONE_NEWTIME
#define CLONE_NEWTIME 0x00000080
#endif

namespace homeward {

namespace {

using Verdict = CheckLine::Verdict;

// The CRIU release Homeward's patches (scripts/criu-patches) are made for.
constexpr const char* kCriuVersion = "4.1.1";

std::string ReadFile(const std::string& path) {
  std::ifstream in(path);
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

CheckLine Fuse() {
  Fd fuse = Fd::Adopt(::open("/dev/fuse", O_RDWR | O_CLOEXEC));
  if (fuse.valid()) return {Verdict::kOk, "fuse", "/dev/fuse opens", ""};
  return {Verdict::kFail, "fuse",
          fmt::format("/dev/fuse does not open: {} (jobs away see no home files)",
                      std::strerror(errno)),
          "modprobe fuse; in a container, give it /dev/fuse"};
}

// Whether homefs can take the kernel's requests through io_uring (homefs/fuse_uring.h).
CheckLine FuseIoUring(const CheckOptions& options) {
  const char* name = "fuse io_uring";
  if (options.config && !options.config->files_io_uring) {
    return {Verdict::kOk, name, "declined ([files] io_uring = false): homefs reads /dev/fuse", ""};
  }
  std::string allowed = ReadFile("/sys/module/fuse/parameters/enable_uring");
  if (allowed.empty()) {
    return {Verdict::kOk, name, "not in this kernel (Linux 6.14 or later): homefs reads /dev/fuse",
            ""};
  }
  if (allowed.front() == 'Y') {
    return {Verdict::kOk, name, "homefs takes the kernel's requests through io_uring", ""};
  }
  return {Verdict::kWarn, name,
          "off (fuse.enable_uring): homefs reads /dev/fuse, its calls' wake-ups crossing CPUs",
          "boot with fuse.enable_uring=1, or write Y to /sys/module/fuse/parameters/enable_uring "
          "(scripts/setup does, for this boot) and restart the daemon"};
}

// Each namespace a job gets, made in a child that exits at once.
CheckLine Namespaces() {
  struct Kind {
    int flag;
    const char* name;
  };
  const Kind kinds[] = {{CLONE_NEWNS, "mount"}, {CLONE_NEWPID, "pid"}, {CLONE_NEWUTS, "uts"},
                        {CLONE_NEWIPC, "ipc"},  {CLONE_NEWNET, "net"}, {CLONE_NEWTIME, "time"}};
  std::string missing;
  for (const Kind& kind : kinds) {
    pid_t child = ::fork();
    if (child == 0) _exit(::unshare(kind.flag) == 0 ? 0 : 1);
    if (child > 0) OwnChild(child);
    int status = 0;
    bool reaped = child > 0 && ::waitpid(child, &status, 0) == child;
    if (child > 0) DisownChild(child);
    if (!reaped || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
      missing += fmt::format("{}{}", missing.empty() ? "" : ", ", kind.name);
    }
  }
  if (missing.empty()) {
    return {Verdict::kOk, "namespaces", "mount, pid, uts, ipc, net and time namespaces", ""};
  }
  return {Verdict::kFail, "namespaces", fmt::format("cannot make {} namespaces", missing),
          "a kernel with CONFIG_*_NS (time: 5.6 or later), and no seccomp or container "
          "policy that forbids unshare"};
}

CheckLine Seccomp() {
  std::string actions = ReadFile("/proc/sys/kernel/seccomp/actions_avail");
  if (::prctl(PR_GET_SECCOMP) >= 0 && actions.find("errno") != std::string::npos) {
    return {Verdict::kOk, "seccomp", "filters with errno actions", ""};
  }
  return {Verdict::kFail, "seccomp",
          "no seccomp filters (the job shim's home view and jobs' keyring guard need them)",
          "a kernel with CONFIG_SECCOMP_FILTER"};
}

CheckLine Cgroups() {
  std::string controllers = ReadFile("/sys/fs/cgroup/cgroup.controllers");
  if (controllers.empty()) {
    return {Verdict::kWarn, "cgroups", "no cgroup v2 hierarchy at /sys/fs/cgroup",
            "boot with systemd.unified_cgroup_hierarchy=1, or mount cgroup2 there"};
  }
  std::string missing;
  for (const char* want : {"cpu", "cpuset", "memory"}) {
    std::istringstream words(controllers);
    std::string word;
    bool found = false;
    while (words >> word) found = found || word == want;
    if (!found) missing += fmt::format("{}{}", missing.empty() ? "" : ", ", want);
  }
  while (!controllers.empty() && controllers.back() == '\n') controllers.pop_back();
  if (missing.empty()) return {Verdict::kOk, "cgroups", "v2: " + controllers, ""};
  return {Verdict::kWarn, "cgroups", fmt::format("v2 without {} ({})", missing, controllers),
          "enable the controllers in the kernel or the root cgroup"};
}

CheckLine Userfaultfd() {
  Fd uffd = Fd::Adopt(static_cast<int>(::syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK)));
  if (uffd.valid()) return {Verdict::kOk, "userfaultfd", "available: moves may be lazy", ""};
  return {Verdict::kWarn, "userfaultfd",
          fmt::format("unavailable ({}): moves copy all memory while the job is frozen",
                      std::strerror(errno)),
          "a kernel with CONFIG_USERFAULTFD (root needs no sysctl)"};
}

std::vector<CheckLine> Criu(const std::string& criu_path) {
  std::string path = criu_path.empty() ? migrate::DefaultCriuPath() : criu_path;
  migrate::CriuCheckResult check = migrate::CriuCheck(path, {"uffd-noncoop", "timens"});
  std::vector<CheckLine> lines;
  if (!check.usable) {
    lines.push_back({Verdict::kFail, "criu",
                     fmt::format("{} {}cannot checkpoint here: {}", path,
                                 check.version.empty() ? "" : check.version + " ",
                                 check.message),
                     "scripts/setup builds CRIU " + std::string(kCriuVersion) +
                         " with Homeward's patches; `criu check` says what the kernel lacks"});
    return lines;
  }
  if (check.version != kCriuVersion) {
    lines.push_back({Verdict::kFail, "criu",
                     fmt::format("{} is version {}, not {}", path, check.version, kCriuVersion),
                     "scripts/setup builds CRIU " + std::string(kCriuVersion) +
                         " with Homeward's patches"});
    return lines;
  }
  lines.push_back({Verdict::kOk, "criu", fmt::format("{} {}: criu check passes", path,
                                                     check.version), ""});
  for (const auto& feature : check.features) {
    if (feature.name == "uffd-noncoop" && !feature.supported) {
      lines.push_back({Verdict::kWarn, "criu lazy pages",
                       "criu check --feature uffd-noncoop fails: moves are not lazy",
                       "a kernel with userfaultfd's non-cooperative events (4.11 or later)"});
    }
    if (feature.name == "timens" && !feature.supported) {
      lines.push_back({Verdict::kFail, "criu time namespaces",
                       "criu check --feature timens fails: jobs' clocks cannot move",
                       "a kernel with time namespaces (5.6 or later)"});
    }
  }
  return lines;
}

CheckLine Configuration(const CheckOptions& options) {
  if (!options.config) {
    return {Verdict::kFail, "config", options.config_error,
            "fix the file (node.toml(5) in the README); the key file must be the daemon's "
            "user's, mode 0600 or 0400"};
  }
  const NodeConfig& config = *options.config;
  return {Verdict::kOk, "config",
          fmt::format("node {} of cluster {} at {}, key {}, {} partner{}", config.name,
                      config.cluster, config.address, config.key_file, config.partners.size(),
                      config.partners.size() == 1 ? "" : "s"),
          ""};
}

// Whether `port` of `address` can be bound (SOCK_DGRAM or SOCK_STREAM); errno otherwise.
int Bindable(const std::string& address, uint16_t port, int type) {
  Fd fd = Fd::Adopt(::socket(AF_INET, type | SOCK_CLOEXEC, 0));
  if (!fd.valid()) return errno;
  // As the daemon binds: TCP past connections in TIME_WAIT (UDP has none, and there the
  // option would share the port with a holder that set it too).
  int one = 1;
  if (type == SOCK_STREAM) ::setsockopt(fd.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  sockaddr_in at{};
  at.sin_family = AF_INET;
  at.sin_port = htons(port);
  if (::inet_pton(AF_INET, address.c_str(), &at.sin_addr) != 1) return EINVAL;
  if (::bind(fd.get(), reinterpret_cast<sockaddr*>(&at), sizeof at) != 0) return errno;
  return 0;
}

CheckLine Ports(const CheckOptions& options) {
  const NodeConfig& config = *options.config;
  std::string ports = fmt::format("{}:{}/udp (gossip) and {}:{}/tcp (peers)", config.address,
                                  config.gossip_port, config.address, config.peer_port);
  if (options.daemon_pid > 0) {
    return {Verdict::kOk, "ports",
            fmt::format("{}: this node's daemon (pid {}) serves them", ports, options.daemon_pid),
            ""};
  }
  int gossip = Bindable(config.address, config.gossip_port, SOCK_DGRAM);
  int peer = Bindable(config.address, config.peer_port, SOCK_STREAM);
  if (gossip == 0 && peer == 0) return {Verdict::kOk, "ports", ports + ": free", ""};
  int error = gossip ? gossip : peer;
  return {Verdict::kFail, "ports",
          fmt::format("{}: cannot bind {}: {}", ports,
                      gossip ? "the gossip port" : "the peer port", std::strerror(error)),
          error == EADDRNOTAVAIL ? "node.address must be one of this machine's addresses"
                                 : "stop what holds the port, or set [ports] in node.toml"};
}

}  // namespace

std::vector<CheckLine> CheckNode(const CheckOptions& options) {
  std::vector<CheckLine> lines;
  if (::geteuid() != 0) {
    lines.push_back({Verdict::kFail, "root",
                     "the probes make namespaces, open /dev/fuse and run criu as root",
                     "run mosctl check as root"});
    return lines;
  }
  lines.push_back(Configuration(options));
  lines.push_back(Fuse());
  lines.push_back(FuseIoUring(options));
  lines.push_back(Namespaces());
  lines.push_back(Seccomp());
  lines.push_back(Cgroups());
  lines.push_back(Userfaultfd());
  for (auto& line : Criu(options.criu_path)) lines.push_back(std::move(line));
  if (options.ports && options.config) lines.push_back(Ports(options));
  if (options.peer_clocks && options.config) {
    lines.push_back(CheckClocks(*options.peer_clocks, options.config->gossip.replay_window));
  }
  return lines;
}

CheckLine CheckClocks(const std::vector<PeerClock>& clocks, std::chrono::milliseconds replay_window) {
  if (clocks.empty()) {
    return {Verdict::kOk, "clocks", "no live peer heard yet: nothing to compare with", ""};
  }
  const PeerClock* worst = &clocks.front();
  for (const auto& clock : clocks) {
    if (std::abs(clock.offset_ms) > std::abs(worst->offset_ms)) worst = &clock;
  }
  int64_t off = std::abs(worst->offset_ms);
  std::string where = fmt::format("{}'s clock is {} ms {} this node's", worst->node, off,
                                  worst->offset_ms >= 0 ? "ahead of" : "behind");
  std::string fix = "keep the nodes' clocks synchronised (systemd-timesyncd, chrony or ntpd "
                    "on every node)";
  if (off * 2 > replay_window.count()) {
    return {Verdict::kFail, "clocks",
            fmt::format("{}: more than half the gossip replay window ({} ms), so its datagrams "
                        "are dropped as stale",
                        where, replay_window.count()),
            fix};
  }
  if (off > kClockWarnMs) {
    return {Verdict::kWarn, "clocks",
            fmt::format("{}: a job that moves between them sees its wall clock jump", where),
            fix};
  }
  return {Verdict::kOk, "clocks",
          fmt::format("within {} ms of {} live peer{} (the farthest: {})", off, clocks.size(),
                      clocks.size() == 1 ? "" : "s", worst->node),
          ""};
}

std::string FormatCheckLine(const CheckLine& line) {
  const char* verdict = line.verdict == Verdict::kOk     ? "ok  "
                        : line.verdict == Verdict::kWarn ? "warn"
                                                         : "FAIL";
  std::string text = fmt::format("{}  {}: {}", verdict, line.what, line.detail);
  if (!line.fix.empty()) text += fmt::format(" (fix: {})", line.fix);
  return text;
}

}  // namespace homeward
