// mosmon: the cluster monitor. A live table of every node this node's gossip knows (load,
// cores, speed, memory, jobs, guests, age of the information), refreshed in place; or,
// with --json, one JSON object for scripts and tests.
#include <poll.h>
#include <signal.h>
#include <termios.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <set>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include <fmt/format.h>
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "control_client.h"
#include "error.h"
#include "monitor_json.h"

namespace homeward {
namespace {

struct Row {
  std::string name;
  std::string cluster;
  std::string address;
  std::string state;
  bool alive = false;
  bool self = false;
  bool blocked = false;  // accepts no guests
  double load = 0;
  double homeward_load = 0;
  int cpus = 0;
  double speed = 0;
  uint64_t mem_free_mb = 0;
  uint64_t mem_total_mb = 0;
  uint64_t jobs = 0;
  uint64_t guests = 0;
  uint64_t age_ms = 0;
};

std::vector<Row> Fetch(const std::string& socket) {
  auto client = ControlClient::Connect(socket);
  auto reply = client.Call([](auto request) { request.setListNodes(); });
  std::vector<Row> rows;
  for (auto node : reply.Root<schema::ControlReply>().getNodes().getNodes()) {
    Row row;
    row.name = node.getName();
    row.cluster = node.getCluster();
    row.address = node.getAddress();
    row.state = node.getState();
    row.alive = node.getAlive();
    row.self = node.getIsSelf();
    row.blocked = node.getBlocked();
    row.load = node.getLoad();
    row.homeward_load = node.getHomewardLoad();
    row.cpus = node.getCores();
    row.speed = node.getSpeed();
    row.mem_free_mb = node.getMemFreeMb();
    row.mem_total_mb = node.getMemTotalMb();
    row.jobs = node.getJobsAway();
    row.guests = node.getGuestsHere();
    row.age_ms = node.getAgeMs();
    rows.push_back(std::move(row));
  }
  return rows;
}

int PrintJson(const std::string& socket) {
  auto client = ControlClient::Connect(socket);
  auto reply = client.Call([](auto request) { request.setListNodes(); });
  fmt::print("{}\n", NodesJson(reply.Root<schema::ControlReply>().getNodes()).dump());
  return 0;
}

// The live display.

volatile sig_atomic_t g_interrupted = 0;  // set by SIGINT/SIGTERM; async-signal-safe

// Puts the terminal in non-canonical, no-echo mode and restores it however we leave.
class RawTerminal {
 public:
  RawTerminal() {
    if (!isatty(STDIN_FILENO) || tcgetattr(STDIN_FILENO, &saved_) != 0) return;
    termios raw = saved_;
    raw.c_lflag &= ~static_cast<tcflag_t>(ICANON | ECHO);
    raw.c_cc[VMIN] = 0;
    raw.c_cc[VTIME] = 0;
    active_ = tcsetattr(STDIN_FILENO, TCSANOW, &raw) == 0;
  }
  RawTerminal(const RawTerminal&) = delete;
  RawTerminal& operator=(const RawTerminal&) = delete;
  ~RawTerminal() {
    if (active_) tcsetattr(STDIN_FILENO, TCSANOW, &saved_);
    std::fputs("\x1b[?25h", stdout);  // show the cursor again
    std::fflush(stdout);
  }

 private:
  termios saved_{};
  bool active_ = false;
};

enum class SortBy { kName, kLoad, kSpeed, kFreeMemory, kAge, kCount };
const char* SortName(SortBy sort) {
  switch (sort) {
    case SortBy::kName:
      return "name";
    case SortBy::kLoad:
      return "load";
    case SortBy::kSpeed:
      return "speed";
    case SortBy::kFreeMemory:
      return "free memory";
    case SortBy::kAge:
      return "age";
    case SortBy::kCount:
      break;
  }
  return "?";
}

// Grouped by cluster, this node's own first; sorted by `sort` within each.
void SortRows(std::vector<Row>& rows, SortBy sort) {
  std::string own;
  for (const auto& row : rows) {
    if (row.self) own = row.cluster;
  }
  std::stable_sort(rows.begin(), rows.end(), [&](const Row& a, const Row& b) {
    if (a.cluster != b.cluster) {
      return std::make_pair(a.cluster != own, a.cluster) < std::make_pair(b.cluster != own, b.cluster);
    }
    switch (sort) {
      case SortBy::kLoad:
        return a.load < b.load;
      case SortBy::kSpeed:
        return a.speed > b.speed;
      case SortBy::kFreeMemory:
        return a.mem_free_mb > b.mem_free_mb;
      case SortBy::kAge:
        return a.age_ms < b.age_ms;
      default:
        return a.name < b.name;
    }
  });
}

std::string Age(uint64_t ms) {
  if (ms < 10'000) return fmt::format("{:.1f}s", static_cast<double>(ms) / 1000);
  if (ms < 600'000) return fmt::format("{}s", ms / 1000);
  return fmt::format("{}m", ms / 60'000);
}

void Draw(const std::vector<Row>& rows, SortBy sort, const std::string& problem) {
  std::string screen = "\x1b[H\x1b[2J";  // home, clear
  std::set<std::string> clusters;
  for (const auto& row : rows) clusters.insert(row.cluster);
  screen += fmt::format(
      "Homeward {}: {} node(s), {} alive   sorted by {}   "
      "[s] sort  [q] quit\n\n",
      clusters.size() > 1 ? fmt::format("{} clusters", clusters.size()) : "cluster", rows.size(),
      std::count_if(rows.begin(), rows.end(), [](const Row& r) { return r.alive; }),
      SortName(sort));
  screen +=
      fmt::format("{:<16} {:<15} {:<7} {:>6} {:>5} {:>5} {:>6} {:>9} {:>9} {:>5} {:>6} {:>6}\n",
                  "NODE", "ADDRESS", "STATE", "LOAD", "HW", "CPUS", "SPEED", "FREE MB", "TOTAL MB",
                  "JOBS", "GUESTS", "AGE");
  for (size_t i = 0; i < rows.size(); ++i) {
    const Row& row = rows[i];
    if (i == 0 || rows[i - 1].cluster != row.cluster) {
      auto members = std::count_if(rows.begin(), rows.end(),
                                   [&](const Row& r) { return r.cluster == row.cluster; });
      screen += fmt::format("{}cluster {}: {} node(s)\n", i == 0 ? "" : "\n", row.cluster, members);
    }
    std::string name = row.self ? row.name + "*" : row.name;
    screen += fmt::format(
        "{:<16} {:<15} {:<7} {:>6.2f} {:>5.1f} {:>5} {:>6.2f} {:>9} {:>9} {:>5} {:>6} {:>6}\n",
        name, row.address, row.blocked && row.alive ? "blocked" : row.state, row.load,
        row.homeward_load, row.cpus, row.speed, row.mem_free_mb, row.mem_total_mb, row.jobs,
        row.guests, Age(row.age_ms));
  }
  if (!problem.empty()) screen += "\n" + problem + "\n";
  std::fputs(screen.c_str(), stdout);
  std::fflush(stdout);
}

int Live(const std::string& socket, int refresh_ms) {
  struct sigaction action {};
  action.sa_handler = [](int) { g_interrupted = 1; };
  sigemptyset(&action.sa_mask);
  action.sa_flags = 0;  // no SA_RESTART: poll() returns at once
  sigaction(SIGINT, &action, nullptr);
  sigaction(SIGTERM, &action, nullptr);
  RawTerminal terminal;
  std::fputs("\x1b[?25l", stdout);  // hide the cursor while drawing
  SortBy sort = SortBy::kName;
  std::vector<Row> rows;
  while (!g_interrupted) {
    std::string problem;
    try {
      rows = Fetch(socket);
    } catch (const Error& e) {
      problem = fmt::format("mosmon: {}", e.what());
    }
    SortRows(rows, sort);
    Draw(rows, sort, problem);
    pollfd in{STDIN_FILENO, POLLIN, 0};
    int ready = ::poll(&in, 1, refresh_ms);
    if (ready > 0) {
      char key = 0;
      ssize_t n = ::read(STDIN_FILENO, &key, 1);
      if (n == 0 && !isatty(STDIN_FILENO)) {
        ::poll(nullptr, 0, refresh_ms);  // stdin at its end: keep showing, no busy loop
      }
      if (key == 'q' || key == 'Q') break;
      if (key == 's' || key == 'S') {
        sort = static_cast<SortBy>((static_cast<int>(sort) + 1) % static_cast<int>(SortBy::kCount));
      }
    }
  }
  std::fputs("\n", stdout);
  return 0;
}

}  // namespace
}  // namespace homeward

int main(int argc, char** argv) {
  CLI::App app{"Show the Homeward cluster as this node sees it"};
  std::string socket = homeward::ControlSocketPath();
  bool json = false;
  int refresh_ms = 1000;
  app.add_option("--control", socket, "the node daemon's control socket")
      ->envname("HOMEWARD_CONTROL");
  app.add_flag("--json", json, "print one JSON object with every node and exit");
  app.add_option("--refresh-ms", refresh_ms, "refresh interval of the live display")
      ->check(CLI::Range(100, 60'000));
  CLI11_PARSE(app, argc, argv);
  try {
    return json ? homeward::PrintJson(socket) : homeward::Live(socket, refresh_ms);
  } catch (const homeward::Error& e) {
    std::fprintf(stderr, "mosmon: %s\n", e.what());
    return 1;
  }
}
