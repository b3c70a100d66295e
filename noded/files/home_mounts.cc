// /mosix/home: one homefs child for every node's files, told the live nodes on a socket.
#include "home_mounts.h"

#include <signal.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <vector>

#include <spdlog/spdlog.h>

#include "c_boundary.h"
#include "config.h"
#include "error.h"
#include "uv_error.h"

namespace homeward {

namespace {
// How long a list waits when homefs's socket is full (it reads as fast as it can).
constexpr uint64_t kResendMs = 200;
}  // namespace

HomeMounts::HomeMounts(uv_loop_t* loop, HomeMountsOptions options)
    : loop_(loop), options_(std::move(options)) {}

HomeMounts::~HomeMounts() {
  Stop();
  if (homefs_.pid() > 0) Ended(true);
}

void HomeMounts::Start() {
  std::error_code ec;
  std::filesystem::create_directories(HomeDir(), ec);
  if (ec) Fail(ErrorKind::kFailed, "cannot create {}: {}", HomeDir(), ec.message());
  // An earlier daemon's homefs (it crashed, or restarted in place) is still mounted here,
  // serving the files its guests hold open. Detached, it goes on serving them; new
  // lookups find the homefs started below, not a stack of them.
  if (int stale = DetachAll(HomeDir())) {
    spdlog::info("detached {} earlier mount(s) of {}: an earlier homefs still serves the "
                 "files open there",
                 stale, HomeDir());
  }
  CheckUv(uv_timer_init(loop_, timer_.get()), "homefs timer");
  timer_.get()->data = this;
  Spawn();
}

void HomeMounts::Spawn() {
  int pair[2];
  HW_SYSCALL(::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, pair),
             "socketpair for homefs");
  socket_ = Fd::Adopt(pair[0]);
  Fd theirs = Fd::Adopt(pair[1]);
  SpawnOptions spawn;
  spawn.argv = {options_.mosmount,
                "--tree",
                "-f",
                "--self",
                options_.self,
                "--self-tree",
                options_.export_root,
                "--daemon-fd",
                "3",
                "-o",
                fmt::format("timeout={},grace={},idle={},{},{}", options_.timeout_s,
                            options_.grace_s, options_.idle_s,
                            options_.write_behind ? "write_behind" : "sync_writes",
                            options_.io_uring ? "io_uring" : "no_io_uring"),
                HomeDir()};
  spawn.extra_fds = {theirs.get()};
  if (!options_.config_path.empty()) {
    std::vector<std::string> env;
    for (char** e = environ; *e; ++e) {
      if (std::string_view(*e).rfind("HOMEWARD_CONFIG=", 0) != 0) env.emplace_back(*e);
    }
    env.push_back("HOMEWARD_CONFIG=" + options_.config_path);
    spawn.env = std::move(env);
  }
  homefs_ = ChildProcess::Spawn(spawn);
  mounted_ = false;
  spdlog::info("mounting every node's files at {} (homefs {})", HomeDir(), homefs_.pid());

  messages_ = UvHandle<uv_poll_t>();
  CheckUv(uv_poll_init(loop_, messages_.get(), socket_.get()), "homefs socket");
  messages_.get()->data = this;
  uv_poll_start(messages_.get(), UV_READABLE, [](uv_poll_t* handle, int, int) {
    auto* self = static_cast<HomeMounts*>(handle->data);
    GuardedCall("homefs socket", [&] { self->OnMessage(); });
  });
  pidfd_ = Fd::Adopt(static_cast<int>(::syscall(SYS_pidfd_open, homefs_.pid(), 0)));
  if (!pidfd_.valid()) Fail(ErrorKind::kFailed, "pidfd_open homefs: {}", std::strerror(errno));
  exited_ = UvHandle<uv_poll_t>();
  CheckUv(uv_poll_init(loop_, exited_.get(), pidfd_.get()), "homefs exit watch");
  exited_.get()->data = this;
  uv_poll_start(exited_.get(), UV_READABLE, [](uv_poll_t* handle, int, int) {
    auto* self = static_cast<HomeMounts*>(handle->data);
    GuardedCall("homefs exit watch", [&] { self->Ended(false); });
  });
  Send();  // held in the socket until homefs reads it
}

void HomeMounts::Send() {
  if (!socket_.valid() || stopped_) return;
  std::string text = FormatLiveNodes(live_);
  if (::send(socket_.get(), text.data(), text.size(), MSG_DONTWAIT | MSG_NOSIGNAL) >= 0) return;
  if (errno == EAGAIN || errno == EWOULDBLOCK) {
    // The next try sends the list as it is then (a whole list each time).
    uv_timer_start(
        timer_.get(),
        [](uv_timer_t* handle) {
          auto* self = static_cast<HomeMounts*>(handle->data);
          GuardedCall("homefs list", [&] { self->Send(); });
        },
        kResendMs, 0);
    return;
  }
  // A homefs that has gone: the one started next is sent the list.
  spdlog::debug("homefs socket: {}", std::strerror(errno));
}

void HomeMounts::OnMessage() {
  char buffer[64];
  ssize_t n = ::recv(socket_.get(), buffer, sizeof buffer, MSG_DONTWAIT);
  if (n <= 0) {
    if (n < 0 && (errno == EAGAIN || errno == EINTR)) return;
    uv_poll_stop(messages_.get());  // homefs has gone; its exit is watched
    return;
  }
  if (std::string_view(buffer, static_cast<size_t>(n)) == kHomeTreeMounted && !mounted_) {
    mounted_ = true;
    spdlog::info("{} serves every node's files; {}/{} is this node's own tree ({})", HomeDir(),
                 HomeDir(), options_.self, options_.export_root);
  }
}

void HomeMounts::PeerUp(const std::string& name, const std::string& address, uint16_t peer_port,
                        const std::string& cluster) {
  if (!ValidNodeName(name)) Fail(ErrorKind::kInvalidInput, "'{}' is not a node name", name);
  if (stopped_ || name == options_.self) return;
  HomeAddress home{address, peer_port, cluster};
  auto it = live_.find(name);
  if (it != live_.end() && it->second == home) return;
  live_[name] = home;
  Send();
}

void HomeMounts::PeerDown(const std::string& name, Done done) {
  if (live_.erase(name)) Send();
  if (done) done();
}

void HomeMounts::Ended(bool kill) {
  bool exited = false;
  try {
    exited = homefs_.pid() <= 0 || homefs_.TryWait().has_value();
  } catch (const Error& e) {
    spdlog::warn("homefs: {}", e.what());
    exited = true;
  }
  if (!exited && !kill) return;  // a spurious wake-up
  // Its exit may be seen before what it said: a homefs that mounted and then died said so.
  if (!mounted_ && socket_.valid()) OnMessage();
  {
    ChildProcess gone = std::move(homefs_);  // kills and reaps one still running
  }
  exited_.Close();
  messages_.Close();
  pidfd_.Reset();
  socket_.Reset();
  uv_timer_stop(timer_.get());
  // The tree and everything on it (this node's own entry), whatever homefs left.
  ::umount2(HomeDir().c_str(), MNT_DETACH);
  if (stopped_) {
    spdlog::info("unmounted {}{}", HomeDir(), exited ? "" : " (its homefs was killed)");
    return;
  }
  if (!mounted_) {
    // No FUSE here, or homefs cannot start: this node's own files are there all the same.
    spdlog::warn("homefs could not mount {} (see its log); {}/{} is this node's own tree alone",
                 HomeDir(), HomeDir(), options_.self);
    std::string path = HomeDir() + "/" + options_.self;
    try {
      std::error_code ec;
      std::filesystem::create_directories(path, ec);
      self_ = Mount::Bind(options_.export_root, path, true);
    } catch (const Error& e) {
      spdlog::warn("no {}: {}", path, e.what());
    }
    return;
  }
  spdlog::warn("homefs of {} has exited; starting it again in {} ms", HomeDir(), options_.restart_ms);
  uv_timer_start(
      timer_.get(),
      [](uv_timer_t* handle) {
        auto* self = static_cast<HomeMounts*>(handle->data);
        GuardedCall("homefs restart", [&] {
          if (!self->stopped_) self->Spawn();
        });
      },
      static_cast<uint64_t>(options_.restart_ms), 0);
}

void HomeMounts::Stop() {
  if (stopped_) return;
  stopped_ = true;
  self_.Unmount();
  bool timer = timer_.get()->type == UV_TIMER;
  if (homefs_.pid() <= 0) {
    if (timer) uv_timer_stop(timer_.get());
    return;
  }
  // SIGTERM lets homefs unmount itself; Ended detaches what a homefs could not.
  ::kill(homefs_.pid(), SIGTERM);
  if (!loop_ || !timer) return Ended(true);
  uv_update_time(loop_);  // the grace counts from now, not from the loop's last wake-up
  uv_timer_start(
      timer_.get(),
      [](uv_timer_t* handle) {
        auto* self = static_cast<HomeMounts*>(handle->data);
        GuardedCall("homefs stop grace", [&] { self->Ended(true); });
      },
      static_cast<uint64_t>(options_.stop_grace_ms), 0);
}

}  // namespace homeward
