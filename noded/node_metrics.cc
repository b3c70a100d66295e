// Local measurements from /proc and the scheduler.
#include "node_metrics.h"

#include "fd.h"

#include <sched.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <sstream>

namespace homeward {

namespace {

// The benchmark's time on the reference machine (a core of the project's build host),
// which defines speed 1.0.
constexpr double kReferenceMicros = 12500.0;

uint32_t KbToMb(uint64_t kb) {
  return static_cast<uint32_t>(kb / 1024);
}

}  // namespace

MemInfo ParseMemInfo(const std::string& text) {
  MemInfo info;
  std::istringstream in(text);
  std::string key;
  uint64_t value_kb = 0;
  std::string unit;
  std::string line;
  bool have_available = false;
  uint64_t free_kb = 0;
  while (std::getline(in, line)) {
    std::istringstream fields(line);
    if (!(fields >> key >> value_kb)) continue;
    if (key == "MemTotal:") info.mem_total_mb = KbToMb(value_kb);
    if (key == "MemFree:") free_kb = value_kb;
    if (key == "MemAvailable:") {
      info.mem_free_mb = KbToMb(value_kb);
      have_available = true;
    }
    if (key == "SwapTotal:") info.swap_total_mb = KbToMb(value_kb);
    if (key == "SwapFree:") info.swap_free_mb = KbToMb(value_kb);
  }
  if (!have_available) info.mem_free_mb = KbToMb(free_kb);
  return info;
}

std::optional<int> ParseProcsRunning(const std::string& text) {
  auto at = text.find("procs_running ");
  if (at == std::string::npos) return std::nullopt;
  int value = 0;
  if (std::sscanf(text.c_str() + at, "procs_running %d", &value) != 1 || value < 0) {
    return std::nullopt;
  }
  return value;
}

int UsableCores() {
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof set, &set) != 0) return 1;
  int count = CPU_COUNT(&set);
  return count > 0 ? count : 1;
}

double MeasureCpuSpeed() {
  // A fixed mix of integer and floating-point work the optimiser cannot remove. Best of
  // three, so that a momentary neighbour does not halve a node's speed for its lifetime.
  double best_us = 1e18;
  volatile double sink = 0;
  for (int run = 0; run < 3; ++run) {
    auto start = std::chrono::steady_clock::now();
    uint64_t x = 88172645463325252ull;
    double acc = 0;
    for (int i = 0; i < 4'000'000; ++i) {
      x ^= x << 13;
      x ^= x >> 7;
      x ^= x << 17;
      acc += static_cast<double>(x & 0xffff) * 1e-5;
      acc = acc > 1e6 ? acc * 0.5 : acc;
    }
    sink = sink + acc;
    double us =
        std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - start).count();
    best_us = std::min(best_us, us);
  }
  (void)sink;
  double speed = kReferenceMicros / std::max(best_us, 1.0);
  return std::round(speed * 100.0) / 100.0;
}

void LoadAverage::Sample(double runnable, double elapsed_ms) {
  if (first_) {
    value_ = runnable;
    first_ = false;
    return;
  }
  double alpha = 1.0 - std::exp(-std::max(elapsed_ms, 0.0) / time_constant_ms_);
  value_ += alpha * (runnable - value_);
}

NodeMetrics::NodeMetrics() : cores_(UsableCores()), speed_(MeasureCpuSpeed()), load_(5000.0) {
  Sample(0);
}

void NodeMetrics::Sample(double elapsed_ms) {
  cores_ = UsableCores();
  if (auto running = ParseProcsRunning(ReadTextFile("/proc/stat"))) {
    // The sampler itself is running while it reads: it is not load.
    load_.Sample(std::max(*running - 1, 0), elapsed_ms);
  }
  MemInfo memory = ParseMemInfo(ReadTextFile("/proc/meminfo"));
  if (memory.mem_total_mb > 0) memory_ = memory;
}

}  // namespace homeward
