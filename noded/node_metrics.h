// Local measurements a node publishes: cores it may use, relative CPU speed, smoothed
// load, memory and swap, all read from /proc and the scheduler.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

namespace homeward {

struct MemInfo {
  uint32_t mem_free_mb = 0;  // MemAvailable: what a new job could use
  uint32_t mem_total_mb = 0;
  uint32_t swap_free_mb = 0;
  uint32_t swap_total_mb = 0;
};

// Parses /proc/meminfo text; missing fields stay 0.
MemInfo ParseMemInfo(const std::string& text);
// procs_running from /proc/stat text (the running or runnable tasks right now), or
// nothing when absent.
std::optional<int> ParseProcsRunning(const std::string& text);

// Cores this process may run on (sched_getaffinity), so a node confined to one core by
// a cpuset publishes 1.
int UsableCores();

// A short fixed integer and floating-point workload, timed: the relative speed of one
// core against the reference machine (1.0). Takes about 3 x 12.5 ms on the reference.
double MeasureCpuSpeed();

// The smoothed load: an exponentially weighted moving average of procs_running sampled
// at every gossip round, with a time constant of `time_constant_ms`, as the kernel's
// loadavg but faster to follow a job that moved.
class LoadAverage {
 public:
  explicit LoadAverage(double time_constant_ms) : time_constant_ms_(time_constant_ms) {}
  void Sample(double runnable, double elapsed_ms);
  double value() const { return value_; }

 private:
  double time_constant_ms_;
  double value_ = 0;
  bool first_ = true;
};

// Reads the files once per call; errors leave the previous values (a node with an
// unreadable /proc still gossips, with what it knew).
class NodeMetrics {
 public:
  NodeMetrics();
  // Takes one sample; `elapsed_ms` since the previous one.
  void Sample(double elapsed_ms);

  int cores() const { return cores_; }
  double speed() const { return speed_; }
  double load() const { return load_.value(); }
  const MemInfo& memory() const { return memory_; }

 private:
  int cores_;
  double speed_;
  LoadAverage load_;
  MemInfo memory_;
};

}  // namespace homeward
