#include "loopback_service.h"

#include <fmt/ranges.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <optional>
#include <sstream>
#include <tuple>

#include "error.h"
#include "fs_credentials.h"

namespace homeward {

namespace {

constexpr char kDeputyName[] = "mosrun";

// The user of the job whose home pid is `home_pid`: its mosrun at home is a real process
// of that user, so the kernel says who it is. Nothing when no mosrun has that pid.
std::optional<FsIdentity> DeputyUser(pid_t home_pid) {
  std::error_code ec;
  auto exe = std::filesystem::read_symlink(fmt::format("/proc/{}/exe", home_pid), ec);
  if (ec || exe.filename() != kDeputyName) return std::nullopt;
  std::ifstream status(fmt::format("/proc/{}/status", home_pid));
  FsIdentity who;
  bool uid = false, gid = false;
  for (std::string line; std::getline(status, line);) {
    std::istringstream fields(line);
    std::string key;
    fields >> key;
    if (key == "Uid:") {
      fields >> who.uid >> who.uid;  // the real, then the effective id
      uid = true;
    } else if (key == "Gid:") {
      fields >> who.gid >> who.gid;
      gid = true;
    } else if (key == "Groups:") {
      for (gid_t group; fields >> group;) who.groups.push_back(group);
    }
  }
  if (!uid || !gid) return std::nullopt;
  return who;
}

// A peer's address without its port ("127.0.0.3:40112", "[::1]:40112").
std::string HostOfPeer(const std::string& address) {
  auto colon = address.rfind(':');
  std::string host = colon == std::string::npos ? address : address.substr(0, colon);
  if (host.size() > 1 && host.front() == '[' && host.back() == ']') {
    host = host.substr(1, host.size() - 2);
  }
  return host;
}

}  // namespace

void LoopbackService::AddNode(const std::string& name, const std::string& address) {
  std::lock_guard lock(mutex_);
  node_addresses_.insert(address);
  node_address_by_name_[name] = address;
}

std::pair<int, std::string> LoopbackService::CheckAsker(pid_t home_pid, const std::string& peer) {
  std::vector<std::string> nodes = whereabouts_.NodesOf(home_pid);
  if (nodes.empty()) {
    return {EPERM, fmt::format("job {} does not run away from this home (it is at home, "
                               "frozen, ended, or no job of this home)",
                               home_pid)};
  }
  std::string host = HostOfPeer(peer);
  std::lock_guard lock(mutex_);
  for (const std::string& node : nodes) {
    auto it = node_address_by_name_.find(node);
    if (it != node_address_by_name_.end() && it->second == host) return {0, {}};
  }
  return {EPERM, fmt::format("job {} runs on {}, not on the asking peer {}", home_pid,
                             fmt::join(nodes, " or "), host)};
}

std::pair<int, std::string> LoopbackService::CheckTarget(const LoopbackTarget& target) {
  if (!target.IsLoopback()) {
    return {EACCES, fmt::format("{} is not on the loopback", target.ToString())};
  }
  std::string address = target.AddressText();
  std::lock_guard lock(mutex_);
  if (address != own_address_ && node_addresses_.count(address)) {
    return {EACCES, fmt::format("{} is another node's address", address)};
  }
  return {0, {}};
}

void LoopbackService::Serve(std::unique_ptr<SecureStream> stream, const PeerIdentity& peer) {
  connections_.Launch(Fd(), std::move(stream),
                      [this, who = peer.address](CarriedConnections::Slot& slot) {
                        Carry(slot, who);
                      });
}

void LoopbackService::Carry(CarriedConnections::Slot& slot, const std::string& peer) {
  SecureStream& stream = *slot.stream;
  LoopbackOpenRequest request = ReadLoopbackOpen(stream);
  const bool udp = request.transport == LoopbackTransport::kUdp;
  const char* kind = udp ? "UDP flow" : "loopback connection";
  auto [error, why] = CheckAsker(request.home_pid, peer);
  if (!error) std::tie(error, why) = CheckTarget(request.target);
  std::optional<FsIdentity> user;
  if (!error) {
    user = DeputyUser(request.home_pid);
    if (!user) error = EPERM, why = fmt::format("no job {} has its home here", request.home_pid);
  }
  if (!error) {
    try {
      // The socket is the user's (its owner is the thread's fsuid when it is made).
      Fd socket;
      {
        ScopedFsCredentials as_user(*user);
        int type = udp ? SOCK_DGRAM : SOCK_STREAM;
        socket = Fd::Adopt(
            HW_SYSCALL(::socket(request.target.family, type | SOCK_CLOEXEC, 0), "socket"));
      }
      socklen_t length = 0;
      sockaddr_storage address = request.target.ToSockaddr(&length);
      HW_SYSCALL(::connect(socket.get(), reinterpret_cast<sockaddr*>(&address), length),
                 "connect to {}", request.target.ToString());
      if (!connections_.SetSocket(slot, std::move(socket))) return;  // stopping
    } catch (const Error& e) {
      error = e.sys_errno() ? e.sys_errno() : EIO;
      why = e.what();
    }
  }
  SendLoopbackOpened(stream, error, why);
  if (error) {
    spdlog::info("job {}: {} from {} to {} refused: {}", request.home_pid, kind, peer,
                 request.target.ToString(), why);
    return;
  }
  spdlog::info("job {}: {} from {} carried to {} (uid {})", request.home_pid, kind, peer,
               request.target.ToString(), user->uid);
  // A UDP flow ends when the guest ends it (its flow idle, or the job gone), or with the
  // peer connection.
  CarriedBytes carried = udp ? CarryDatagrams(stream, slot.socket.get(), DatagramCarry{})
                             : CarryBothWays(stream, slot.socket.get());
  spdlog::debug("job {}: {} to {} ended: {} bytes to it, {} back", request.home_pid, kind,
                request.target.ToString(), carried.from_stream, carried.to_stream);
}

}  // namespace homeward
