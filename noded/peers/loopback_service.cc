#include "loopback_service.h"

#include <spdlog/spdlog.h>
#include <unistd.h>

#include <filesystem>
#include <optional>
#include <fstream>
#include <sstream>

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

}  // namespace

void LoopbackService::AddNodeAddress(const std::string& address) {
  std::lock_guard lock(mutex_);
  node_addresses_.insert(address);
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
  auto [error, why] = CheckTarget(request.target);
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
        socket = Fd::Adopt(HW_SYSCALL(::socket(request.target.family, SOCK_STREAM | SOCK_CLOEXEC, 0),
                                      "socket"));
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
    spdlog::info("job {}: loopback connection from {} to {} refused: {}", request.home_pid, peer,
                 request.target.ToString(), why);
    return;
  }
  spdlog::info("job {}: loopback connection from {} carried to {} (uid {})", request.home_pid,
               peer, request.target.ToString(), user->uid);
  CarriedBytes carried = CarryBothWays(stream, slot.socket.get());
  spdlog::debug("job {}: loopback connection to {} ended: {} bytes to it, {} back",
                request.home_pid, request.target.ToString(), carried.from_stream,
                carried.to_stream);
}

}  // namespace homeward
