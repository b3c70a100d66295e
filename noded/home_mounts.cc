// The /mosix/home tree: a bind mount for this node, homefs children for its peers.
#include "home_mounts.h"

#include <signal.h>
#include <sys/mount.h>
#include <unistd.h>

#include <filesystem>
#include <thread>

#include <spdlog/spdlog.h>

#include "error.h"

namespace homeward {

namespace {

bool ValidNodeName(const std::string& name) {
  if (name.empty() || name.size() > 64 || name == "." || name == "..") return false;
  for (char c : name) {
    if (!std::isalnum(static_cast<unsigned char>(c)) && c != '-' && c != '_' && c != '.') {
      return false;
    }
  }
  return true;
}

}  // namespace

HomeMounts::HomeMounts(HomeMountsOptions options) : options_(std::move(options)) {}

HomeMounts::~HomeMounts() {
  Stop();
}

std::string HomeMounts::PathOf(const std::string& name) const {
  if (!ValidNodeName(name)) Fail(ErrorKind::kInvalidInput, "'{}' is not a node name", name);
  return options_.mosix_root + "/home/" + name;
}

void HomeMounts::Start() {
  std::string path = PathOf(options_.self);
  std::error_code ec;
  std::filesystem::create_directories(path, ec);
  if (ec) Fail(ErrorKind::kFailed, "cannot create {}: {}", path, ec.message());
  self_ = Mount::Bind(options_.export_root, path, true);
  spdlog::info("{} is this node's own tree ({})", path, options_.export_root);
}

void HomeMounts::PeerUp(const std::string& name, const std::string& address, uint16_t peer_port) {
  if (name == options_.self) return;
  std::string path = PathOf(name);
  std::string target = fmt::format("{}:{}", address, peer_port);
  auto it = peers_.find(name);
  if (it != peers_.end()) {
    if (it->second.address == target && it->second.homefs.pid() > 0 &&
        !it->second.homefs.TryWait()) {
      return;
    }
    PeerDown(name);
  }
  std::error_code ec;
  std::filesystem::create_directories(path, ec);
  if (ec) Fail(ErrorKind::kFailed, "cannot create {}: {}", path, ec.message());
  SpawnOptions spawn;
  spawn.argv = {
      options_.mosmount, "-f", "-o", fmt::format("timeout={}", options_.timeout_s), target, path};
  if (!options_.config_path.empty()) {
    std::vector<std::string> env;
    for (char** e = environ; *e; ++e) {
      if (std::string_view(*e).rfind("HOMEWARD_CONFIG=", 0) != 0) env.emplace_back(*e);
    }
    env.push_back("HOMEWARD_CONFIG=" + options_.config_path);
    spawn.env = std::move(env);
  }
  peers_.emplace(name, PeerMount{target, ChildProcess::Spawn(spawn)});
  spdlog::info("mounting {} from {}", path, target);
}

void HomeMounts::PeerDown(const std::string& name) {
  auto it = peers_.find(name);
  if (it == peers_.end()) return;
  std::string path = PathOf(name);
  // SIGTERM lets homefs unmount itself; the lazy unmount covers a homefs that could not.
  it->second.homefs.Signal(SIGTERM);
  for (int i = 0; i < 50 && it->second.homefs.pid() > 0 && !it->second.homefs.TryWait(); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  peers_.erase(it);  // kills and reaps a homefs that is still running
  ::umount2(path.c_str(), MNT_DETACH);
  spdlog::info("unmounted {}", path);
}

void HomeMounts::Stop() {
  while (!peers_.empty()) PeerDown(peers_.begin()->first);
  self_.Unmount();
}

}  // namespace homeward
