// The speed a node publishes (MeasureCpuSpeed, as a daemon measures it at start: best of
// five short runs) on an idle machine and beside busy threads on every core, timed in
// the thread's CPU time (what nodes publish) and in wall time (what a stopwatch sees),
// in one run. Loaded/idle near 1 means that identical nodes publish one figure whatever
// their neighbours do. Run by bench/run speed.
#include <algorithm>
#include <atomic>
#include <cstdio>
#include <string>
#include <thread>
#include <vector>

#include <CLI/CLI.hpp>

#include "node_metrics.h"

using namespace homeward;

namespace {

double Median(std::vector<double> values) {
  std::sort(values.begin(), values.end());
  return values[values.size() / 2];
}

// `trials` start-up measurements with `busy` spinning threads beside them.
std::vector<double> Measure(SpeedClock clock, int trials, int busy) {
  std::atomic<bool> stop{false};
  std::vector<std::thread> spinners;
  for (int i = 0; i < busy; ++i) {
    spinners.emplace_back([&stop] {
      volatile uint64_t n = 0;
      while (!stop.load(std::memory_order_relaxed)) n = n + 1;
    });
  }
  std::vector<double> speeds;
  for (int i = 0; i < trials; ++i) speeds.push_back(MeasureCpuSpeed(5, clock));
  stop = true;
  for (auto& t : spinners) t.join();
  return speeds;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Published CPU speed, idle and beside busy cores"};
  int trials = 15;
  int busy = 2 * static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  app.add_option("--trials", trials, "start-up measurements per row");
  app.add_option("--busy", busy, "spinning threads beside the loaded rows");
  CLI11_PARSE(app, argc, argv);

  std::printf("| clock | idle (median) | beside %d busy threads (median) | loaded/idle | "
              "worst loaded/idle | loaded within 5%% of idle |\n|---|---:|---:|---:|---:|---:|\n",
              busy);
  for (auto [clock, name] : {std::pair{SpeedClock::kThreadCpu, "thread CPU time (published)"},
                             std::pair{SpeedClock::kWall, "wall time"}}) {
    double idle = Median(Measure(clock, trials, 0));
    std::vector<double> loaded = Measure(clock, trials, busy);
    double worst = *std::min_element(loaded.begin(), loaded.end());
    auto close = std::count_if(loaded.begin(), loaded.end(),
                               [idle](double s) { return s >= 0.95 * idle && s <= 1.05 * idle; });
    std::printf("| %s | %.2f | %.2f | %.2f | %.2f | %ld of %d |\n", name, idle, Median(loaded),
                Median(loaded) / idle, worst / idle, static_cast<long>(close), trials);
  }
  return 0;
}
