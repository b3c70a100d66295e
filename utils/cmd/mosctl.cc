// mosctl: administration of the local node: its status, whether it takes guests,
// sending its guests away or bringing its own jobs home, leaving the cluster, and what it
// needs of its machine (check).
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <optional>
#include <thread>

#include <fmt/format.h>
#include <CLI/CLI.hpp>

#include "config.h"
#include "control_client.h"
#include "error.h"
#include "node_check.h"

namespace homeward {
namespace {

std::string FormatDuration(uint64_t ms) {
  uint64_t s = ms / 1000;
  if (s < 60) return fmt::format("{}.{:01}s", s, (ms % 1000) / 100);
  if (s < 3600) return fmt::format("{}m{:02}s", s / 60, s % 60);
  if (s < 86400) return fmt::format("{}h{:02}m", s / 3600, (s % 3600) / 60);
  return fmt::format("{}d{:02}h", s / 86400, (s % 86400) / 3600);
}

int Status(const std::string& socket) {
  auto client = ControlClient::Connect(socket);
  auto reply = client.Call([](auto request) { request.setStatus(); });
  auto status = reply.Root<schema::ControlReply>().getStatus();
  fmt::print("node     {}\n", status.getName().cStr());
  fmt::print("address  {}\n", status.getAddress().cStr());
  fmt::print("version  {}\n", status.getVersion().cStr());
  fmt::print("uptime   {}\n", FormatDuration(status.getUptimeMs()));
  fmt::print("ports    gossip {}/udp, peer {}/tcp\n", status.getGossipPort(), status.getPeerPort());
  fmt::print("pid      {}\n", status.getPid());
  return 0;
}

// What membership does for each live peer, by hand: mount or unmount /mosix/home/<name>.
int HomeMount(const std::string& socket, const std::string& name, const std::string& address,
              bool up) {
  Endpoint endpoint;
  if (up) endpoint = Endpoint::Parse(address, 0);
  auto client = ControlClient::Connect(socket);
  client.Call([&](auto request) {
    auto mount = request.initHomeMount();
    mount.setName(name);
    mount.setAddress(endpoint.host);
    mount.setPeerPort(endpoint.port);
    mount.setUp(up);
  });
  return 0;
}

// The live peers' clock offsets as the daemon's gossip measured them.
std::vector<PeerClock> PeerClocks(ControlClient& client) {
  auto reply = client.Call([](auto request) { request.setListNodes(); });
  std::vector<PeerClock> clocks;
  std::string own;
  auto nodes = reply.Root<schema::ControlReply>().getNodes().getNodes();
  for (auto node : nodes) {
    if (node.getIsSelf()) own = node.getCluster();
  }
  for (auto node : nodes) {
    if (node.getIsSelf() || !node.getAlive() || !node.getClockKnown()) continue;
    std::string name = node.getName();
    if (node.getCluster() != own) name = fmt::format("{}/{}", node.getCluster().cStr(), name);
    clocks.push_back({name, node.getClockOffsetMs()});
  }
  return clocks;
}

// check: what this node needs of its machine, one line per probe; 1 when jobs could not
// run or move here.
int Check(const std::string& config_path, const std::string& socket) {
  CheckOptions options;
  options.config_path = config_path;
  std::optional<NodeConfig> config;
  try {
    config = LoadNodeConfig(config_path);
    options.config = &*config;
  } catch (const Error& e) {
    options.config_error = e.what();
  }
  try {
    auto client = ControlClient::Connect(socket);
    auto reply = client.Call([](auto request) { request.setStatus(); });
    options.daemon_pid = static_cast<int>(reply.Root<schema::ControlReply>().getStatus().getPid());
    options.peer_clocks = PeerClocks(client);
  } catch (const Error&) {
    // No daemon answers: its ports must be free.
  }
  int failed = 0;
  for (const CheckLine& line : CheckNode(options)) {
    fmt::print("{}\n", FormatCheckLine(line));
    if (line.verdict == CheckLine::Verdict::kFail) ++failed;
  }
  if (failed) {
    fmt::print("{} probe{} failed: jobs cannot run or move on this node\n", failed,
               failed == 1 ? "" : "s");
  } else {
    fmt::print("this node can run and move jobs\n");
  }
  return failed ? 1 : 0;
}

// One line per job an admin action tried to move; returns how many stayed.
int PrintMoves(schema::AdminReport::Reader report) {
  int failed = 0;
  for (auto move : report.getMoves()) {
    std::string what =
        fmt::format("job {} (home {}) {} -> {}", move.getHomePid(), move.getHome().cStr(),
                    move.getFrom().cStr(), move.getTo().cStr());
    if (move.getError().size() == 0) {
      fmt::print("moved    {}\n", what);
    } else {
      ++failed;
      fmt::print("stayed   {}: {}\n", what, move.getError().cStr());
    }
  }
  return failed;
}

// block, unblock, expel, bring: waits until every move has ended and says what moved.
int Admin(const std::string& socket, schema::AdminRequest::Action action) {
  auto client = ControlClient::Connect(socket);
  auto reply = client.Call([&](auto request) { request.initAdmin().setAction(action); });
  auto report = reply.Root<schema::ControlReply>().getAdminReport();
  int failed = PrintMoves(report);
  fmt::print("{} moved, {} stayed; this node {} guests\n", report.getMoves().size() - failed,
             failed, report.getBlocked() ? "accepts no" : "accepts");
  if (report.getLeft()) {
    fmt::print("this node has left the cluster (mosctl join to take part again); jobs that "
               "found no free core here wait frozen (mosps) and continue one by one\n");
  }
  return failed ? 1 : 0;
}

// reload: the daemon reads its configuration again and restarts in place under it; waits
// until the new one answers.
int Reload(const std::string& socket) {
  // Taken before asking: the new daemon starts after this, the old one before it, so the
  // one whose uptime is shorter than the wait is the new one however late this process
  // runs again after the reply (a loaded machine).
  auto asked = std::chrono::steady_clock::now();
  auto client = ControlClient::Connect(socket);
  auto reply = client.Call(
      [&](auto request) { request.initAdmin().setAction(schema::AdminRequest::Action::RELOAD); });
  auto report = reply.Root<schema::ControlReply>().getAdminReport();
  PrintMoves(report);
  if (!report.getReloaded()) {
    std::fprintf(stderr, "mosctl: reload refused: %s\n", report.getProblem().cStr());
    return 1;
  }
  auto deadline = asked + std::chrono::seconds(60);
  while (std::chrono::steady_clock::now() < deadline) {
    try {
      auto again = ControlClient::Connect(socket);
      auto status = again.Call([](auto request) { request.setStatus(); });
      auto waited = std::chrono::steady_clock::now() - asked;
      auto uptime = std::chrono::milliseconds(
          status.Root<schema::ControlReply>().getStatus().getUptimeMs());
      if (uptime <= waited) {
        fmt::print("node {} runs again, in cluster {}\n",
                   status.Root<schema::ControlReply>().getStatus().getName().cStr(),
                   report.getCluster().cStr());
        return 0;
      }
    } catch (const Error&) {
      // Not answering yet: the new daemon is starting.
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  std::fprintf(stderr, "mosctl: the daemon did not answer within 60 s of its reload; see its log\n");
  return 1;
}

}  // namespace
}  // namespace homeward

int main(int argc, char** argv) {
  CLI::App app{"Administer the local Homeward node"};
  app.require_subcommand(1);
  std::string socket = homeward::ControlSocketPath();
  app.add_option("--control", socket, "the node daemon's control socket")
      ->envname("HOMEWARD_CONTROL");
  auto* status = app.add_subcommand("status", "show this node's name, address, version, uptime");
  std::string name, address;
  auto* mount = app.add_subcommand("home-mount", "mount /mosix/home/NAME from ADDRESS[:PORT]");
  mount->add_option("name", name, "the peer's node name")->required();
  mount->add_option("address", address, "the peer's address[:port]")->required();
  auto* unmount = app.add_subcommand("home-unmount", "unmount /mosix/home/NAME");
  unmount->add_option("name", name, "the peer's node name")->required();
  const char* config_env = std::getenv("HOMEWARD_CONFIG");
  std::string config_path = config_env && *config_env ? config_env : "/etc/homeward/node.toml";
  auto* check = app.add_subcommand(
      "check", "probe what this node needs (FUSE, namespaces, seccomp, cgroups, userfaultfd, "
               "CRIU, its configuration and ports): one line each, with a fix");
  check->add_option("-c,--config", config_path, "the node's TOML configuration")
      ->envname("HOMEWARD_CONFIG");
  using Action = homeward::schema::AdminRequest::Action;
  std::vector<std::pair<CLI::App*, Action>> actions = {
      {app.add_subcommand("block", "accept no guests (new jobs or moves) from other nodes"),
       Action::BLOCK},
      {app.add_subcommand("unblock", "accept guests again"), Action::UNBLOCK},
      {app.add_subcommand("expel", "block, and send every guest away: home, or elsewhere"),
       Action::EXPEL},
      {app.add_subcommand("bring", "bring every job of this home running elsewhere back home"),
       Action::BRING},
      {app.add_subcommand("leave",
                          "leave the cluster: expel every guest, bring every job home and "
                          "keep them here (those without a free core wait frozen)"),
       Action::LEAVE},
      {app.add_subcommand("join", "take part in the cluster again after leave"), Action::JOIN},
  };
  auto* reload = app.add_subcommand(
      "reload", "read the configuration again and restart the daemon under it, jobs kept; "
                "a node moved to another cluster first sends its guests away and brings its "
                "jobs home");
  CLI11_PARSE(app, argc, argv);
  try {
    for (auto& [command, action] : actions) {
      if (command->parsed()) return homeward::Admin(socket, action);
    }
    if (status->parsed()) return homeward::Status(socket);
    if (reload->parsed()) return homeward::Reload(socket);
    if (check->parsed()) return homeward::Check(config_path, socket);
    if (mount->parsed()) return homeward::HomeMount(socket, name, address, true);
    if (unmount->parsed()) return homeward::HomeMount(socket, name, "", false);
  } catch (const homeward::Error& e) {
    std::fprintf(stderr, "mosctl: %s\n", e.what());
    return 1;
  }
  return 0;
}
