// The node daemon's context: start-up, shutdown and the control request dispatch.
#include "daemon.h"

#include <signal.h>
#include <sys/prctl.h>
#include <systemd/sd-daemon.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <set>
#include <tuple>

#include <capnp/message.h>
#include <spdlog/spdlog.h>

#include "c_boundary.h"
#include "child_process.h"
#include "control_permissions.h"
#include "lock_holder.h"
#include "migration.h"
#include "node_check.h"
#include "partner_services.h"
#include "homeward_config.h"
#include "metrics_text.h"
#include "install_paths.h"
#include "peer_auth.h"
#include "uv_error.h"
#include "uv_work.h"

namespace homeward {

namespace {

std::string MosmountPath() {
  std::string path = FindBesideExecutable({"../homefs/mosmount", "mosmount"});
  return path.empty() ? "mosmount" : path;
}

// How long homefs keeps a silent connection to a home: past the home's grace as this
// node counts it (from gossip's verdict of death), and the freeze of its guests, so that
// no call in flight fails before its caller is frozen.
int HomefsGrace(const NodeConfig& config) {
  auto dead = std::chrono::duration_cast<std::chrono::seconds>(config.gossip.dead_after);
  return static_cast<int>(
      std::min<int64_t>(config.recovery.home_grace.count() + dead.count() + 60, 86399));
}

}  // namespace

Daemon::Daemon(uv_loop_t* loop, NodeConfig config, FaultPoints faults)
    : loop_(loop),
      config_(std::move(config)),
      started_(std::chrono::steady_clock::now()),
      callback_throws_(faults.Hit(Fault::kLoopCallbackThrows)),
      clock_ahead_(faults.Hit(Fault::kClockAhead)),
      control_(
          loop, config_.control_socket,
          [this](auto request, ReplySender reply) { HandleControl(request, std::move(reply)); }),
      jobs_(
          loop, config_, control_, [this](const std::string& node) { return ResolvePeer(node); },
          [this] { return balancer_.Picture(); }, faults),
      file_server_(config_.export_root, 8,
                   config_.files_trust_root ? FileSession::Root::kTrust
                                            : FileSession::Root::kSquash,
                   config_.state_dir + "/files-replay",
                   config_.files_sync_replay_log ? ReplayCache::Durability::kSynced
                                                 : ReplayCache::Durability::kWritten,
                   faults),
      loopback_(config_.address, jobs_.whereabouts()),
      peer_server_(
          config_.address, config_.peer_port,
          [this](const std::string& cluster) { return config_.KeyFor(cluster); },
          [this](const PeerIdentity& peer) { return PartnerMayUse(config_, peer); }, config_.peer,
          std::move(faults)),
      home_mounts_(loop, HomeMountsOptions{.mosix_root = config_.mosix_root,
                                           .self = config_.name,
                                           .export_root = config_.export_root,
                                           .mosmount = MosmountPath(),
                                           .config_path = config_.config_path,
                                           .grace_s = HomefsGrace(config_),
                                           .idle_s = static_cast<int>(
                                               config_.files_idle_disconnect.count()),
                                           .write_behind = config_.files_write_behind,
                                           .io_uring = config_.files_io_uring}),
      gossip_(loop, config_),
      balancer_(loop, config_, gossip_, jobs_) {
  if (clock_ahead_) gossip_.SkewStamps(std::chrono::seconds(kClockAheadSeconds));
}

Daemon::~Daemon() {
  Stop();
}

void Daemon::ServePeers() {
  peer_server_.RegisterStream("files", [this](std::unique_ptr<SecureStream> stream,
                                              PeerIdentity peer) {
    file_server_.Serve(std::move(stream), peer);
  });
  // Job relays between homes and the nodes their jobs run on are served on the loop.
  peer_server_.Register("jobs", [this](Fd fd, PeerIdentity peer) {
    control_.AdoptPeer(std::move(fd), peer.address, peer.cluster);
  });
  // An incoming move is received and restored on the peer connection's own thread.
  peer_server_.RegisterStream("migration", [this](std::unique_ptr<SecureStream> stream,
                                                  PeerIdentity peer) {
    jobs_.AcceptMove(std::move(stream), peer.cluster);
  });
  // A lazy move's page connection, kept for the incoming move that claims it.
  peer_server_.RegisterStream("lazy-pages", [](std::unique_ptr<SecureStream> stream,
                                               PeerIdentity) {
    DepositLazyPageConnection(std::move(stream));
  });
  // A guest's connection to its loopback, carried here (noded/jobs/loopback_carrier.h).
  peer_server_.RegisterStream("loopback", [this](std::unique_ptr<SecureStream> stream,
                                                 PeerIdentity peer) {
    loopback_.Serve(std::move(stream), peer);
  });
  peer_server_.Start();
}

void Daemon::CatchSignals() {
  auto on_signal = [](uv_signal_t* handle, int signo) {
    GuardedCall("shutdown on a signal", [&] {
      spdlog::info("received {}, shutting down", sigabbrev_np(signo));
      static_cast<Daemon*>(handle->data)->Stop();
    });
  };
  for (auto [handle, signo] : {std::pair{&sigterm_, SIGTERM}, std::pair{&sigint_, SIGINT}}) {
    CheckUv(uv_signal_init(loop_, handle->get()), "signal handler");
    handle->get()->data = this;
    CheckUv(uv_signal_start(handle->get(), on_signal, signo), "signal handler");
  }
}

// The locks of jobs at home: parked with the file service while a job leaves, claimed
// back when one comes home, and the holders named to the shims that ask.
void Daemon::ServeHomeLocks() {
  jobs_.HomeLockParking(
      [this](uint64_t token, const std::vector<HomeJobLock>& held) {
        return file_server_.ParkHomeJob(token, held);
      },
      [this](uint64_t token) { file_server_.UnparkHomeJob(token); });
  jobs_.HomeLockClaiming({[this](uint64_t token, uint64_t mntns, uid_t uid) {
                            return file_server_.ClaimComingHome(token, mntns, uid);
                          },
                          [this](uint64_t token) { file_server_.RestoredHome(token); },
                          [this](uint64_t token) { file_server_.UnclaimComingHome(token); }});
  file_server_.ServeLockHolders(config_.mosix_root + "/" + kLockHolderSocketName);
  // After every turn of the loop, the file service learns which processes may hold a
  // shim's OFD lock (the jobs at home's): a job that started in this turn is known before
  // its program can take a lock.
  CheckUv(uv_check_init(loop_, job_inits_.get()), "job inits publisher");
  job_inits_.get()->data = this;
  CheckUv(uv_check_start(job_inits_.get(),
                         [](uv_check_t* check) {
                           GuardedCall("publishing the jobs at home", [check] {
                             auto* self = static_cast<Daemon*>(check->data);
                             self->file_server_.SetJobInits(self->jobs_.HomeJobInits());
                           });
                         }),
          "job inits publisher");
}

void Daemon::ReapOrphans() {
  // Orphans come from a child's children: an iptables of a criu that was killed, a process
  // a restored job's init left behind when it ended. Nobody else waits for them.
  CheckUv(uv_timer_init(loop_, orphans_.get()), "orphan reaper");
  CheckUv(uv_timer_start(
              orphans_.get(),
              [](uv_timer_t*) {
                GuardedCall("reaping orphans", [] {
                  for (const ReapedOrphan& orphan : homeward::ReapOrphans()) {
                    spdlog::info("reaped orphan process {} ({}): {}", orphan.pid,
                                 orphan.command, orphan.status.Describe());
                  }
                });
              },
              kOrphanReapInterval.count(), kOrphanReapInterval.count()),
          "orphan reaper");
}

void Daemon::FollowPeers() {
  // This node is one of its cluster's too: no partner's job may name it as its home.
  nodes_.Update(config_.name, KnownNode{{}, config_.address, config_.peer_port});
  jobs_.KnowNodes(&nodes_);
  // Every live peer is listed in /mosix/home. A home in use outlives its peer's death
  // in homefs (only the listing loses it): calls wait (a hard mount) while the home is
  // unreachable and go on when it returns, so a false suspicion or a cut link never costs
  // a guest its files. A home declared dead starts its guests' grace here (job_grace.cc).
  gossip_.Subscribe([this](const NodeRecord& peer, bool alive) {
    // Another node's address is never where a guest's loopback connection goes, and is
    // how its requests for the jobs it hosts are told.
    loopback_.AddNode(peer.name, peer.address);
    if (!nodes_.Update(peer.name,
                       KnownNode{config_.OwnCluster(peer.cluster) ? std::string() : peer.cluster,
                                 peer.address, peer.peer_port, alive})) {
      spdlog::debug("gossip: cluster {} names {}, a node of this cluster: ignored", peer.cluster,
                    peer.name);
      return;
    }
    if (!alive) {
      home_mounts_.PeerDown(peer.name);
      jobs_.HomeUnreachable(peer.name);
      // Its jobs' locks on this node's files go: they may be restarted elsewhere, and
      // other jobs must not wait for a node that may never come back.
      file_server_.DropLocks(peer.address);
      return;
    }
    // A partner's node is listed where its jobs may run: they need their homes' files.
    const PartnerConfig* partner = config_.OwnCluster(peer.cluster) ? nullptr
                                                                    : config_.Partner(peer.cluster);
    try {
      if (!partner) {
        home_mounts_.PeerUp(peer.name, peer.address, peer.peer_port);
      } else if (partner->accept) {
        home_mounts_.PeerUp(peer.name, peer.address, peer.peer_port, partner->name);
      }
    } catch (const Error& e) {
      spdlog::warn("cannot mount /mosix/home/{}: {}", peer.name, e.what());
    }
    // After its mount: a frozen guest continued now restores its files from there.
    jobs_.HomeReachable(peer.name);
  });
}

void Daemon::Start() {
  // Every connection to a peer comes from this node's address (see peer_auth.h).
  SetPeerSourceAddress(config_.address);
  std::error_code ec;
  std::filesystem::create_directories(config_.state_dir, ec);
  if (ec) {
    Fail(ErrorKind::kFailed, "cannot create state directory {}: {}", config_.state_dir,
         ec.message());
  }
  // No criu of a daemon before this one still runs.
  ClearCriuActing(CriuActingDir(config_.state_dir));
  CatchSignals();
  // Jobs restored by CRIU, and orphans of jobs' inits, become our children to reap.
  HW_SYSCALL(::prctl(PR_SET_CHILD_SUBREAPER, 1), "become a child subreaper");
  ReapOrphans();
  control_.Start();
  ServeHomeLocks();
  jobs_.OnChange([this] {
    gossip_.SetLocalJobs(jobs_.jobs_away(), jobs_.guests_here(),
                         static_cast<float>(jobs_.guests_here()), jobs_.blocked());
  });
  jobs_.Start();
  ServePeers();
  try {
    home_mounts_.Start();
  } catch (const Error& e) {
    // A node without /mosix (a developer's machine) still serves its files.
    spdlog::warn("no /mosix/home for this node: {}", e.what());
  }
  FollowPeers();
  gossip_.Start();
  balancer_.Start();
  if (!config_.web_listen.empty()) {
    web_ = std::make_unique<WebMonitor>(
        loop_, config_.web_listen,
        WebSources{.nodes = [this](auto list) { DescribeNodes(list); },
                   .jobs = [this](auto list) { jobs_.DescribeJobs(list); },
                   .metrics = [this] { return MetricsText(); }});
    web_->Start();
  }
  spdlog::info("node {} at {} is up (control socket {})", config_.name, config_.address,
               config_.control_socket);
  LogChecks();
  if (callback_throws_) {
    // For the failure test that shows an exception in a loop callback stops at the guard
    // (c_boundary.h): the daemon logs it and serves on.
    QueueWork(
        loop_, [] {},
        [] { Fail(ErrorKind::kFailed, "fault point loop-callback-throws hit (HOMEWARD_FAULT)"); });
  }
}

void Daemon::LogChecks() {
  // What mosctl check prints, but the ports (this daemon holds them), once and off the
  // loop: criu's probes take a few tenths of a second.
  struct Checks {
    NodeConfig config;
    std::vector<CheckLine> lines;
  };
  auto checks = std::make_shared<Checks>(Checks{config_, {}});
  QueueWork(
      loop_,
      [checks] {
        CheckOptions options;
        options.config = &checks->config;
        options.ports = false;
        checks->lines = CheckNode(options);
      },
      [checks] {
        for (const CheckLine& line : checks->lines) {
          auto level = line.verdict == CheckLine::Verdict::kOk     ? spdlog::level::info
                       : line.verdict == CheckLine::Verdict::kWarn ? spdlog::level::warn
                                                                  : spdlog::level::err;
          spdlog::log(level, "check: {}", FormatCheckLine(line));
        }
      });
}

void Daemon::Stop() {
  if (stopped_) return;
  stopped_ = true;
  control_.Stop();
  balancer_.Stop();
  jobs_.KillAll();
  home_mounts_.Stop();
  file_server_.Stop();  // ends the served connections, so their threads can finish
  loopback_.Stop();
  peer_server_.Stop();
  gossip_.Stop();
  job_inits_.Close();
  orphans_.Close();
  sigterm_.Close();
  sigint_.Close();
}

void Daemon::HandleControl(schema::ControlRequest::Reader request, ReplySender reply) {
  CheckPermission(request.which(), reply.caller());
  switch (request.which()) {
    case schema::ControlRequest::STATUS:
      ReplyStatus(std::move(reply));
      return;
    case schema::ControlRequest::LIST_NODES:
      ReplyNodes(std::move(reply));
      return;
    case schema::ControlRequest::START_JOB:
      jobs_.StartJob(request.getStartJob(), std::move(reply));
      return;
    case schema::ControlRequest::RESTART_JOB:
      jobs_.RestartJob(request.getRestartJob(), std::move(reply));
      return;
    case schema::ControlRequest::RESUME_JOB:
      jobs_.ResumeJob(request.getResumeJob(), std::move(reply));
      return;
    case schema::ControlRequest::START_GUEST:
      jobs_.StartGuest(request.getStartGuest(), std::move(reply));
      return;
    case schema::ControlRequest::ATTACH_GUEST:
      jobs_.AttachGuest(request.getAttachGuest(), std::move(reply));
      return;
    case schema::ControlRequest::MIGRATE_JOB:
      jobs_.MigrateJob(request.getMigrateJob(), std::move(reply));
      return;
    case schema::ControlRequest::LIST_JOBS:
      jobs_.ListJobs(std::move(reply));
      return;
    case schema::ControlRequest::ADMIN:
      if (request.getAdmin().getAction() == schema::AdminRequest::Action::RELOAD) {
        Reload(std::move(reply));
      } else {
        jobs_.Admin(request.getAdmin(), std::move(reply));
      }
      return;
    case schema::ControlRequest::JOB_INPUT:
    case schema::ControlRequest::JOB_INPUT_END:
    case schema::ControlRequest::JOB_INPUT_AT:
    case schema::ControlRequest::JOB_INPUT_END_AT:
    case schema::ControlRequest::JOB_SIGNAL:
    case schema::ControlRequest::JOB_SIGNAL_NUMBERED:
      break;  // refused by CheckPermission: they belong on a job's relay
    case schema::ControlRequest::HOME_MOUNT: {
      auto mount = request.getHomeMount();
      auto done = [reply = std::make_shared<ReplySender>(std::move(reply))] {
        capnp::MallocMessageBuilder message;
        message.initRoot<schema::ControlReply>().setDone();
        reply->Send(message);
      };
      if (mount.getUp()) {
        home_mounts_.PeerUp(mount.getName(), mount.getAddress(),
                            mount.getPeerPort() ? mount.getPeerPort() : config_.peer_port);
        done();
      } else {
        home_mounts_.PeerDown(mount.getName(), std::move(done));
      }
      return;
    }
  }
  Fail(ErrorKind::kUnimplemented, "this daemon does not know control request {}",
       static_cast<int>(request.which()));
}

PeerAddress Daemon::ResolvePeer(const std::string& node) const {
  std::string known;
  for (const auto& member : gossip_.Picture()) {
    if (member.record.name == node) {
      if (member.state == MemberState::kDead) {
        Fail(ErrorKind::kDisconnected, "node {} is dead (no word from it for {} ms)", node,
             member.age_ms);
      }
      return PeerAddress{member.record.address, member.record.peer_port, {}, true};
    }
    known += (known.empty() ? "" : ", ") + member.record.name;
  }
  for (const auto& member : gossip_.PartnerPicture()) {
    if (member.record.name == node) {
      if (member.state == MemberState::kDead) {
        Fail(ErrorKind::kDisconnected, "node {} of cluster {} is dead (no word from it for {} ms)",
             node, member.record.cluster, member.age_ms);
      }
      return PeerAddress{member.record.address, member.record.peer_port, member.record.cluster,
                         !member.record.blocked};
    }
  }
  Fail(ErrorKind::kNotFound, "no node named '{}' in the cluster (known: {})", node, known);
}

void Daemon::ReplyStatus(ReplySender reply) {
  capnp::MallocMessageBuilder message;
  auto status = message.initRoot<schema::ControlReply>().initStatus();
  status.setName(config_.name);
  status.setAddress(config_.address);
  status.setVersion(HOMEWARD_VERSION);
  auto uptime = std::chrono::steady_clock::now() - started_;
  status.setUptimeMs(std::chrono::duration_cast<std::chrono::milliseconds>(uptime).count());
  status.setGossipPort(config_.gossip_port);
  status.setPeerPort(config_.peer_port);
  status.setPid(::getpid());
  reply.Send(message);
}

namespace {

// What a reload cannot change while jobs run: what names the node to its jobs and peers,
// and where its journal and sockets are. Empty when nothing of it changes.
std::string FixedWhileRunning(const NodeConfig& now, const NodeConfig& next) {
  const std::pair<const char*, bool> fixed[] = {
      {"node.name", now.name != next.name},
      {"node.address", now.address != next.address},
      {"ports.gossip", now.gossip_port != next.gossip_port},
      {"ports.peer", now.peer_port != next.peer_port},
      {"node.state_dir", now.state_dir != next.state_dir},
      {"node.mosix_root", now.mosix_root != next.mosix_root},
      {"control.socket", now.control_socket != next.control_socket},
  };
  for (auto [field, changed] : fixed) {
    if (changed) {
      return fmt::format("{} cannot change while the node runs (stop the daemon to change it)",
                         field);
    }
  }
  return "";
}

// Whether the node would be in another cluster (another name or key) or share with other
// partners (or with their keys, or what is shared with them).
bool ClusterChanges(const NodeConfig& now, const NodeConfig& next) {
  auto partners = [](const NodeConfig& config) {
    std::vector<std::tuple<std::string, std::vector<uint8_t>, bool, bool>> list;
    for (const PartnerConfig& p : config.partners) list.emplace_back(p.name, p.key, p.send, p.accept);
    std::sort(list.begin(), list.end());
    return list;
  };
  return now.cluster != next.cluster || now.cluster_key != next.cluster_key ||
         partners(now) != partners(next);
}

// What may run on across a reload. When the node moves to another cluster, only the guests
// whose homes are of the cluster it joins: their homes know it by that cluster's key from
// then on. Every other guest, and every job of its own away, speaks with its node or home
// under a key the node no longer holds (its old cluster's, a partnership of its old
// cluster's), so they go. When only the partnerships change: jobs of and on this cluster's
// nodes, and those of and on a partner still shared with that way, under the same key.
JobRegistry::VacateRules StaysAcross(const NodeConfig& now, const NodeConfig& next) {
  if (now.cluster != next.cluster) {
    return {[joined = next.cluster](const std::string& home) { return home == joined; }, {}};
  }
  if (now.cluster_key != next.cluster_key) return {};
  auto shared = [&now, &next](bool PartnerConfig::*way) {
    std::set<std::string> clusters{now.cluster};
    for (const PartnerConfig& before : now.partners) {
      const PartnerConfig* after = next.Partner(before.name);
      if (after && before.key == after->key && before.*way && after->*way) {
        clusters.insert(before.name);
      }
    }
    return [clusters](const std::string& cluster) { return clusters.count(cluster) > 0; };
  };
  return {shared(&PartnerConfig::accept), shared(&PartnerConfig::send)};
}

}  // namespace

void Daemon::Reload(ReplySender reply) {
  if (reloading_) {
    reply.SendError(Error(ErrorKind::kInvalidInput, "reload: a reload is already under way"));
    return;
  }
  auto refuse = [&reply](const std::string& why) {
    reply.SendError(Error(ErrorKind::kInvalidInput,
                          fmt::format("reload: {}; the node runs on as it was", why)));
  };
  auto next = std::make_shared<NodeConfig>();
  try {
    *next = LoadNodeConfig(config_.config_path);
  } catch (const Error& e) {
    return refuse(e.what());
  }
  std::string fixed = FixedWhileRunning(config_, *next);
  if (!fixed.empty()) return refuse(fixed);
  // Fills the report; when the node restarts, it does so on the loop's next turn, once the
  // report is on the socket (a short reply is written at once, uv_write).
  reloading_ = true;
  auto finish = [this, next](bool clear, schema::AdminReport::Builder report) {
    report.setCluster(next->cluster);
    report.setReloaded(clear);
    if (!clear) {
      reloading_ = false;
      report.setProblem("a guest or a job away could not move; the node stays in cluster " +
                        config_.cluster);
      spdlog::warn("reload: the node stays in cluster {}: not every guest or job away moved",
                   config_.cluster);
      return;
    }
    restart_cluster_ = next->cluster;
    restart_by_ = std::chrono::steady_clock::now() + kRestartWaitsForOutput;
    CheckUv(uv_timer_init(loop_, restart_.get()), "restart");
    restart_.get()->data = this;
    CheckUv(uv_timer_start(
                restart_.get(),
                [](uv_timer_t* timer) {
                  auto* self = static_cast<Daemon*>(timer->data);
                  if (self->jobs_.OutputOwed() &&
                      std::chrono::steady_clock::now() < self->restart_by_) {
                    return;
                  }
                  self->RestartInPlace();
                },
                0, 50),
            "restart");
  };
  if (!ClusterChanges(config_, *next)) {
    spdlog::info("reload: node {} restarts under {}", config_.name, config_.config_path);
    capnp::MallocMessageBuilder message;
    auto report = message.initRoot<schema::ControlReply>().initAdminReport();
    report.setBlocked(jobs_.blocked());
    report.setLeft(jobs_.left());
    finish(true, report);
    reply.Send(message);
    return;
  }
  auto stays = StaysAcross(config_, *next);
  if (config_.cluster != next->cluster && stays.guest_stays) {
    spdlog::info("reload: node {} moves from cluster {} to {}: its guests of {} stay, the "
                 "others go; its jobs come home",
                 config_.name, config_.cluster, next->cluster, next->cluster);
  } else if (stays.guest_stays) {
    spdlog::info("reload: node {} shares with other partners: guests of clusters it no longer "
                 "accepts go, its jobs on clusters it no longer sends to come home",
                 config_.name);
  } else {
    spdlog::info("reload: node {} moves from cluster {} to {}: its guests go, its jobs come home",
                 config_.name, config_.cluster, next->cluster);
  }
  jobs_.Vacate(std::move(reply), finish, std::move(stays));
}

void Daemon::RestartInPlace() {
  spdlog::info("reload: restarting as node {} of cluster {}", config_.name, restart_cluster_);
  spdlog::default_logger()->flush();
  sd_notify(0, "RELOADING=1");
  // Nothing of this daemon's but the standard streams goes on: the new one opens its own
  // sockets and finds its jobs in the journal, as after a crash.
  ::close_range(3, ~0U, CLOSE_RANGE_CLOEXEC);
  std::vector<char*> argv;
  for (std::string& arg : restart_argv_) argv.push_back(arg.data());
  argv.push_back(nullptr);
  if (!restart_argv_.empty()) ::execv(argv[0], argv.data());
  // Gone as after a crash: a supervisor (systemd's Restart=on-failure) starts it again,
  // and it takes its jobs back.
  spdlog::critical("reload: cannot run {} again: {}",
                   restart_argv_.empty() ? "mosnoded" : restart_argv_[0], std::strerror(errno));
  spdlog::default_logger()->flush();
  std::_Exit(1);
}

void Daemon::ReplyNodes(ReplySender reply) {
  capnp::MallocMessageBuilder message;
  DescribeNodes(message.initRoot<schema::ControlReply>().initNodes());
  reply.Send(message);
}

std::string Daemon::MetricsText() const {
  MetricsFigures figures;
  figures.node = config_.name;
  figures.cluster = config_.cluster;
  for (const MemberView& view : gossip_.Picture()) {
    if (view.self) figures.self = view.record;
    if (view.state == MemberState::kDead) {
      ++figures.nodes_dead;
    } else {
      ++figures.nodes_alive;
    }
  }
  figures.gossip = gossip_.stats();
  figures.drops = gossip_.drops();
  figures.moves = jobs_.move_counts();
  const FileServiceStats& files = file_server_.stats();
  figures.file_requests = files.requests.load(std::memory_order_relaxed);
  figures.file_errors = files.errors.load(std::memory_order_relaxed);
  figures.file_micros = files.micros.load(std::memory_order_relaxed);
  figures.uptime_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - started_).count();
  return MetricsTextOf(figures);
}

void Daemon::DescribeNodes(schema::NodeList::Builder list) const {
  auto picture = gossip_.Picture();
  for (auto& member : gossip_.PartnerPicture()) picture.push_back(std::move(member));
  auto nodes = list.initNodes(static_cast<unsigned>(picture.size()));
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
    node.setBlocked(record.blocked);
    node.setBootTimeS(record.boot_time_s);
    node.setUsers(record.users);
    node.setGroup(record.group);
    node.setLongJobAfterS(record.long_job_after_s);
    // A node of this cluster that runs an older release publishes no cluster.
    const std::string& cluster = record.cluster.empty() ? config_.cluster : record.cluster;
    node.setCluster(cluster);
    if (auto offset = gossip_.ClockOffsetMs(cluster, record.name)) {
      node.setClockKnown(true);
      node.setClockOffsetMs(*offset);
    }
  }
}

}  // namespace homeward
