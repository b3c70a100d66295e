// JSON for mosmon, mosps and the web monitor.
#include "monitor_json.h"

#include <pwd.h>
#include <time.h>

#include <algorithm>
#include <string>
#include <string_view>
#include <tuple>
#include <vector>

#include "job_state.h"

namespace homeward {
namespace {

double Round2(double value) {
  return static_cast<double>(static_cast<long long>(value * 100 + 0.5)) / 100;
}

}  // namespace

std::string UserName(uint32_t uid) {
  passwd entry;
  passwd* found = nullptr;
  char buffer[1024];
  if (getpwuid_r(uid, &entry, buffer, sizeof buffer, &found) == 0 && found) return found->pw_name;
  return std::to_string(uid);
}

nlohmann::json NodesJson(schema::NodeList::Reader list) {
  std::vector<schema::NodeInfo::Reader> sorted;
  for (auto node : list.getNodes()) sorted.push_back(node);
  std::sort(sorted.begin(), sorted.end(), [](auto a, auto b) {
    return std::tuple(std::string_view(a.getCluster().cStr()), std::string_view(a.getName().cStr())) <
           std::tuple(std::string_view(b.getCluster().cStr()), std::string_view(b.getName().cStr()));
  });
  nlohmann::json nodes = nlohmann::json::array();
  nlohmann::json clusters = nlohmann::json::object();
  // A node publishes when it booted; its uptime is read against this node's clock.
  uint64_t now = static_cast<uint64_t>(::time(nullptr));
  for (auto node : sorted) {
    nlohmann::json& cluster = clusters[node.getCluster().cStr()];
    if (cluster.empty()) cluster = {{"nodes", 0}, {"alive", 0}, {"cpus", 0}, {"load", 0.0}};
    cluster["nodes"] = cluster["nodes"].get<int>() + 1;
    if (node.getAlive()) {
      cluster["alive"] = cluster["alive"].get<int>() + 1;
      cluster["cpus"] = cluster["cpus"].get<int>() + node.getCores();
      cluster["load"] = Round2(cluster["load"].get<double>() + node.getLoad());
    }
    if (node.getIsSelf()) cluster["self"] = true;
    nodes.push_back({{"name", node.getName().cStr()},
                     {"cluster", node.getCluster().cStr()},
                     {"group", node.getGroup().cStr()},
                     {"long_job_s", node.getLongJobAfterS()},
                     {"address", node.getAddress().cStr()},
                     {"alive", node.getAlive()},
                     {"state", node.getState().cStr()},
                     {"self", node.getIsSelf()},
                     {"blocked", node.getBlocked()},
                     {"load", Round2(node.getLoad())},
                     {"homeward_load", Round2(node.getHomewardLoad())},
                     {"cpus", node.getCores()},
                     {"speed", Round2(node.getSpeed())},
                     {"mem_free_mb", node.getMemFreeMb()},
                     {"mem_total_mb", node.getMemTotalMb()},
                     {"swap_free_mb", node.getSwapFreeMb()},
                     {"swap_total_mb", node.getSwapTotalMb()},
                     {"jobs", node.getJobsAway()},
                     {"guests", node.getGuestsHere()},
                     {"age_ms", node.getAgeMs()},
                     {"uptime_s", node.getBootTimeS() && node.getBootTimeS() <= now
                                      ? nlohmann::json(now - node.getBootTimeS())
                                      : nlohmann::json(nullptr)},
                     {"users", node.getUsers()},
                     {"clock_offset_ms", node.getClockKnown()
                                             ? nlohmann::json(node.getClockOffsetMs())
                                             : nlohmann::json(nullptr)}});
  }
  return {{"nodes", nodes}, {"clusters", clusters}};
}

nlohmann::json JobsJson(schema::JobList::Reader list) {
  nlohmann::json jobs = nlohmann::json::array();
  for (auto job : list.getJobs()) {
    jobs.push_back({{"pid", job.getHomePid()},
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
  return {{"jobs", jobs}};
}

}  // namespace homeward
