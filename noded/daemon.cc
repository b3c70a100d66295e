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

Daemon::Daemon(uv_loop_t* loop, NodeConfig config)
    : loop_(loop),
      config_(std::move(config)),
      started_(std::chrono::steady_clock::now()),
      control_(loop, config_.control_socket,
               [this](auto request, ReplySender reply) {
                 HandleControl(request, std::move(reply));
               }),
      gossip_(loop, config_) {}

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
  gossip_.Start();
  spdlog::info("node {} at {} is up (control socket {})", config_.name, config_.address,
               config_.control_socket);
}

void Daemon::Stop() {
  if (stopped_) return;
  stopped_ = true;
  control_.Stop();
  gossip_.Stop();
  sigterm_.Close();
  sigint_.Close();
}

void Daemon::HandleControl(schema::ControlRequest::Reader request, ReplySender reply) {
  switch (request.which()) {
    case schema::ControlRequest::STATUS:
      ReplyStatus(std::move(reply));
      return;
    case schema::ControlRequest::LIST_NODES:
      ReplyNodes(std::move(reply));
      return;
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

void Daemon::ReplyNodes(ReplySender reply) {
  auto picture = gossip_.Picture();
  capnp::MallocMessageBuilder message;
  auto nodes = message.initRoot<schema::ControlReply>().initNodes().initNodes(
      static_cast<unsigned>(picture.size()));
  for (unsigned i = 0; i < picture.size(); ++i) {
    const MemberView& view = picture[i];
    const NodeRecord& record = view.record;
    auto node = nodes[i];
    node.setName(record.name);
    node.setAddress(record.address);
    node.setAlive(view.state != MemberState::kDead);
    node.setState(MemberStateName(view.state));
    node.setIsSelf(view.self);
    node.setGossipPort(record.gossip_port);
    node.setPeerPort(record.peer_port);
    node.setCores(record.cores);
    node.setSpeed(record.speed);
    node.setLoad(record.load);
    node.setHomewardLoad(record.homeward_load);
    node.setMemFreeMb(record.mem_free_mb);
    node.setMemTotalMb(record.mem_total_mb);
    node.setSwapFreeMb(record.swap_free_mb);
    node.setSwapTotalMb(record.swap_total_mb);
    node.setJobsAway(record.jobs_away);
    node.setGuestsHere(record.guests_here);
    node.setAgeMs(static_cast<uint64_t>(view.age_ms));
    node.setIncarnation(record.incarnation);
  }
  reply.Send(message);
}

}  // namespace homeward
