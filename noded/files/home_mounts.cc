// The /mosix/home tree: a bind mount for this node, homefs children for its peers.
#include "home_mounts.h"

#include <signal.h>
#include <sys/mount.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <vector>

#include <spdlog/spdlog.h>

#include "c_boundary.h"
#include "error.h"
#include "fd.h"
#include "uv_handle.h"

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

// A peer mount on its way out: its homefs has had SIGTERM; `exited` (readable on the
// homefs's pidfd) or `grace` (a timer) ends the wait, whichever fires first. Closing the
// handles (when the departure ends) stops both, so no callback finds it gone.
struct HomeMounts::Departure {
  Departure(HomeMounts* owner, std::string name, std::string path, ChildProcess homefs)
      : owner(owner), name(std::move(name)), path(std::move(path)), homefs(std::move(homefs)) {}
  // Starts the wait; false when there is nothing to wait with (no pidfd).
  bool Watch(uv_loop_t* loop, int grace_ms);

  HomeMounts* owner;
  std::string name, path;
  ChildProcess homefs;
  Fd pidfd;
  UvHandle<uv_poll_t> exited;
  UvHandle<uv_timer_t> grace;
  std::vector<Done> done;
};

bool HomeMounts::Departure::Watch(uv_loop_t* loop, int grace_ms) {
  if (homefs.pid() <= 0) return false;  // reaped already: nothing to wait for
  pidfd = Fd::Adopt(static_cast<int>(::syscall(SYS_pidfd_open, homefs.pid(), 0)));
  if (!pidfd.valid()) {
    spdlog::warn("cannot watch homefs {}: pidfd_open: {}", homefs.pid(), std::strerror(errno));
    return false;
  }
  if (uv_poll_init(loop, exited.get(), pidfd.get()) != 0 || uv_timer_init(loop, grace.get()) != 0) {
    return false;
  }
  exited.get()->data = this;
  grace.get()->data = this;
  uv_poll_start(exited.get(), UV_READABLE, [](uv_poll_t* handle, int, int) {
    auto* self = static_cast<Departure*>(handle->data);
    GuardedCall("homefs exit watch", [&] { self->owner->Finish(self->name); });
  });
  uv_update_time(loop);  // the grace counts from now, not from the loop's last wake-up
  uv_timer_start(
      grace.get(),
      [](uv_timer_t* handle) {
        auto* self = static_cast<Departure*>(handle->data);
        GuardedCall("homefs grace timer", [&] { self->owner->Finish(self->name); });
      },
      static_cast<uint64_t>(grace_ms), 0);
  return true;
}

HomeMounts::HomeMounts(uv_loop_t* loop, HomeMountsOptions options)
    : loop_(loop), options_(std::move(options)) {}

HomeMounts::~HomeMounts() {
  Stop();
  while (!departing_.empty()) Finish(departing_.begin()->first);
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
  if (stopped_ || name == options_.self) return;
  PathOf(name);  // refuses a bad name before anything changes
  std::string target = fmt::format("{}:{}", address, peer_port);
  auto it = peers_.find(name);
  if (it != peers_.end()) {
    if (it->second.address == target && it->second.homefs.pid() > 0 &&
        !it->second.homefs.TryWait()) {
      return;
    }
    PeerDown(name);
  }
  if (departing_.count(name)) {
    // The old mount is still at the mount point: mounting over it now would have the old
    // one's detach take the new one away.
    waiting_[name] = target;
    return;
  }
  StartMount(name, target);
}

void HomeMounts::StartMount(const std::string& name, const std::string& target) {
  std::string path = PathOf(name);
  std::error_code ec;
  std::filesystem::create_directories(path, ec);
  if (ec) Fail(ErrorKind::kFailed, "cannot create {}: {}", path, ec.message());
  SpawnOptions spawn;
  spawn.argv = {options_.mosmount,
                "-f",
                "-o",
                fmt::format("timeout={},grace={}", options_.timeout_s, options_.grace_s),
                target,
                path};
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

void HomeMounts::PeerDown(std::string name, Done done) {
  waiting_.erase(name);
  if (auto leaving = departing_.find(name); leaving != departing_.end()) {
    if (done) leaving->second->done.push_back(std::move(done));
    return;
  }
  auto it = peers_.find(name);
  if (it == peers_.end()) {
    if (done) done();
    return;
  }
  auto departure =
      std::make_unique<Departure>(this, name, PathOf(name), std::move(it->second.homefs));
  peers_.erase(it);
  if (done) departure->done.push_back(std::move(done));
  // SIGTERM lets homefs unmount itself; the detach in Finish covers a homefs that could not.
  // One already reaped (pid -1) needs none; errors are of no interest (it may be gone).
  if (departure->homefs.pid() > 0) ::kill(departure->homefs.pid(), SIGTERM);
  Departure* d = departure.get();
  departing_.emplace(name, std::move(departure));
  // Without a loop (or a pidfd) there is nothing to wait with: finish at once, which kills
  // the homefs rather than letting it unmount itself.
  if (!loop_ || !d->Watch(loop_, options_.stop_grace_ms)) Finish(name);
}

void HomeMounts::Finish(std::string name) {
  auto it = departing_.find(name);
  if (it == departing_.end()) return;
  std::unique_ptr<Departure> departure = std::move(it->second);
  departing_.erase(it);
  bool exited = departure->homefs.pid() <= 0;
  try {
    exited = exited || departure->homefs.TryWait().has_value();
  } catch (const Error& e) {
    spdlog::warn("homefs for {}: {}", departure->path, e.what());
  }
  {
    ChildProcess gone = std::move(departure->homefs);  // kills and reaps one still running
  }
  ::umount2(departure->path.c_str(), MNT_DETACH);
  spdlog::info("unmounted {}{}", departure->path, exited ? "" : " (its homefs was killed)");
  for (auto& done : departure->done) {
    try {
      done();
    } catch (const std::exception& e) {
      spdlog::warn("after unmounting {}: {}", departure->path, e.what());
    }
  }
  if (auto waiting = waiting_.find(name); waiting != waiting_.end() && !stopped_) {
    std::string target = std::move(waiting->second);
    waiting_.erase(waiting);
    try {
      StartMount(name, target);
    } catch (const Error& e) {
      spdlog::warn("cannot mount /mosix/home/{}: {}", name, e.what());
    }
  }
}

void HomeMounts::Stop() {
  stopped_ = true;
  waiting_.clear();
  while (!peers_.empty()) PeerDown(peers_.begin()->first);
  self_.Unmount();
}

}  // namespace homeward
