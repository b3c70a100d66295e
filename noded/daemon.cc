// The node daemon's context: start-up, shutdown and the control request dispatch.
#include "daemon.h"

#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>

#include <capnp/message.h>
#include <spdlog/spdlog.h>

#include "homeward_config.h"
#include "uv_error.h"

namespace homeward {

namespace {

// mosmount beside this daemon (installed together), or in the build tree, else on PATH.
std::string FindMosmount() {
  std::error_code ec;
  auto dir = std::filesystem::read_symlink("/proc/self/exe", ec).parent_path();
  for (auto candidate : {dir / "mosmount", dir.parent_path() / "homefs" / "mosmount"}) {
    if (!ec && ::access(candidate.c_str(), X_OK) == 0) return candidate;
  }
  return "mosmount";
}

}  // namespace

Daemon::Daemon(uv_loop_t* loop, NodeConfig config)
    : loop_(loop),
      config_(std::move(config)),
      started_(std::chrono::steady_clock::now()),
      control_(loop, config_.control_socket,
               [this](auto request, ReplySender reply) {
                 HandleControl(request, std::move(reply));
               }),
      file_server_(config_.export_root, 8),
      peer_server_(config_.address, config_.peer_port, config_.cluster_key),
      home_mounts_(HomeMountsOptions{.mosix_root = config_.mosix_root,
                                     .self = config_.name,
                                     .export_root = config_.export_root,
                                     .mosmount = FindMosmount(),
                                     .config_path = config_.config_path}) {}

Daemon::~Daemon() { Stop(); }

void Daemon::Start() {
  std::error_code ec;
  std::filesystem::create_directories(config_.state_dir, ec);
  if (ec) {
    Fail(ErrorKind::kFailed, "cannot create state directory {}: {}", config_.state_dir,
         ec.message());
  }
  auto on_signal = [](uv_signal_t* handle, int signo) {
    spdlog::info("received {}, shutting down", sigabbrev_np(signo));
    static_cast<Daemon*>(handle->data)->Stop();
  };
  for (auto [handle, signo] : {std::pair{&sigterm_, SIGTERM}, std::pair{&sigint_, SIGINT}}) {
    CheckUv(uv_signal_init(loop_, handle->get()), "signal handler");
    handle->get()->data = this;
    CheckUv(uv_signal_start(handle->get(), on_signal, signo), "signal handler");
  }
  control_.Start();
  peer_server_.Register("files", [this](Fd fd, PeerIdentity peer) {
    file_server_.Serve(std::move(fd), peer);
  });
  peer_server_.Start();
  try {
    home_mounts_.Start();
  } catch (const Error& e) {
    // A node without /mosix (a developer's machine) still serves its files.
    spdlog::warn("no /mosix/home for this node: {}", e.what());
  }
  spdlog::info("node {} at {} is up (control socket {})", config_.name, config_.address,
               config_.control_socket);
}

void Daemon::Stop() {
  if (stopped_) return;
  stopped_ = true;
  control_.Stop();
  home_mounts_.Stop();
  file_server_.Stop();  // ends the served connections, so their threads can finish
  peer_server_.Stop();
  sigterm_.Close();
  sigint_.Close();
}

void Daemon::HandleControl(schema::ControlRequest::Reader request, ReplySender reply) {
  switch (request.which()) {
    case schema::ControlRequest::STATUS:
      ReplyStatus(std::move(reply));
      return;
    case schema::ControlRequest::LIST_NODES:
      break;
    case schema::ControlRequest::HOME_MOUNT: {
      auto mount = request.getHomeMount();
      if (mount.getUp()) {
        home_mounts_.PeerUp(mount.getName(), mount.getAddress(),
                            mount.getPeerPort() ? mount.getPeerPort() : config_.peer_port);
      } else {
        home_mounts_.PeerDown(mount.getName());
      }
      capnp::MallocMessageBuilder message;
      message.initRoot<schema::ControlReply>().setDone();
      reply.Send(message);
      return;
    }
  }
  Fail(ErrorKind::kUnimplemented, "this daemon does not know control request {}",
       static_cast<int>(request.which()));
}

void Daemon::ReplyStatus(ReplySender reply) {
  capnp::MallocMessageBuilder message;
  auto status = message.initRoot<schema::ControlReply>().initStatus();
  status.setName(config_.name);
  status.setAddress(config_.address);
  status.setVersion(HOMEWARD_VERSION);
  auto uptime = std::chrono::steady_clock::now() - started_;
  status.setUptimeMs(
      std::chrono::duration_cast<std::chrono::milliseconds>(uptime).count());
  status.setGossipPort(config_.gossip_port);
  status.setPeerPort(config_.peer_port);
  status.setPid(::getpid());
  reply.Send(message);
}

}  // namespace homeward
