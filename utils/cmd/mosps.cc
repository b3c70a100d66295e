// mosps: the jobs whose home is this node, and the guests running here.
#include <cstdio>

#include <fmt/format.h>
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "control_client.h"
#include "error.h"
#include "job_state.h"
#include "monitor_json.h"

namespace homeward {
namespace {

// `node`, or cluster/node when it is of another cluster than the listing node's.
std::string Place(const std::string& node, const std::string& cluster, const std::string& own) {
  return cluster.empty() || cluster == own ? node : cluster + "/" + node;
}

int List(const std::string& socket, bool json) {
  auto client = ControlClient::Connect(socket);
  auto reply = client.Call([](auto request) { request.setListJobs(); });
  auto list = reply.Root<schema::ControlReply>().getJobs();
  auto jobs = list.getJobs();
  std::string own = list.getCluster();
  if (json) {
    fmt::print("{}\n", JobsJson(list).dump());
    return 0;
  }
  fmt::print("{:>8} {:<10} {:<8} {:<8} {:<9} {:>4} {:>9}  {}\n", "PID", "USER", "HOME", "WHERE",
             "STATE", "MIG", "CPU", "COMMAND");
  for (auto job : jobs) {
    uint64_t ms = job.getCpuMs();
    std::string cpu = fmt::format("{}:{:02}.{:01}", ms / 60000, (ms / 1000) % 60, (ms / 100) % 10);
    std::string cmd = job.getCmd();
    if (job.getPinned().size() > 0) cmd += fmt::format("  [pinned: {}]", job.getPinned().cStr());
    if (job.getLocked()) cmd += "  [locked: mosrun -L]";
    if (job.getPartners()) cmd += "  [partners: mosrun -G]";
    fmt::print("{:>8} {:<10} {:<8} {:<8} {:<9} {:>4} {:>9}  {}\n", job.getHomePid(),
               UserName(job.getUid()), Place(job.getHome(), job.getHomeCluster(), own),
               Place(job.getWhere(), job.getWhereCluster(), own), JobStateName(job.getState()),
               job.getMigrations(), cpu, cmd);
  }
  return 0;
}

}  // namespace
}  // namespace homeward

int main(int argc, char** argv) {
  CLI::App app{"List the Homeward jobs of this node: its own, wherever they run, and guests"};
  bool json = false;
  app.add_flag("--json", json, "print one JSON object: {\"jobs\":[...]}");
  std::string socket = homeward::ControlSocketPath();
  app.add_option("--control", socket, "the node daemon's control socket")
      ->envname("HOMEWARD_CONTROL");
  CLI11_PARSE(app, argc, argv);
  try {
    return homeward::List(socket, json);
  } catch (const homeward::Error& e) {
    std::fprintf(stderr, "mosps: %s\n", e.what());
    return 1;
  }
}
