// mosps: the jobs whose home is this node, and the guests running here.
#include <pwd.h>

#include <cstdio>

#include <fmt/format.h>
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "control_client.h"
#include "error.h"
#include "job_state.h"

namespace homeward {
namespace {

std::string UserName(uint32_t uid) {
  if (passwd* pw = getpwuid(uid)) return pw->pw_name;
  return std::to_string(uid);
}

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
    nlohmann::json out = {{"jobs", nlohmann::json::array()}};
    for (auto job : jobs) {
      out["jobs"].push_back({{"pid", job.getHomePid()},
                             {"home", job.getHome().cStr()},
                             {"home_cluster", job.getHomeCluster().cStr()},
                             {"where", job.getWhere().cStr()},
                             {"where_cluster", job.getWhereCluster().cStr()},
                             {"state", JobStateName(job.getState())},
                             {"migrations", job.getMigrations()},
                             {"cmd", job.getCmd().cStr()},
                             {"cpu_ms", job.getCpuMs()},
                             {"user", UserName(job.getUid())},
                             {"guest", job.getGuest()},
                             {"pinned", job.getPinned().cStr()},
                             {"locked", job.getLocked()},
                             {"partners", job.getPartners()}});
    }
    fmt::print("{}\n", out.dump());
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
