// Local measurements a node publishes: cores it may use, relative CPU speed, smoothed
// load, memory and swap, all read from /proc, the node's cgroup and the scheduler. A node
// confined to some cores (a cpuset) or to some memory (a memory cgroup) publishes what it
// really has, not the host's figures, so nodes sharing a host can be told apart.
#pragma once

#include <sched.h>
#include <sys/types.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

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

// The two fields of /proc/<pid>/task/<tid>/stat the load needs: the scheduling state
// ('R' runnable, 'S' sleeping, ...) and `processor`, the CPU the task last ran on or is
// queued on (field 39).
struct TaskStat {
  char state = 0;
  int processor = -1;
};
// Parses a task's stat line; the command name may hold spaces and parentheses, so the
// fields are counted from the last ')'. Nothing when the line is cut short.
std::optional<TaskStat> ParseTaskStat(std::string_view text);

// A kernel CPU list such as "0-3,8,10-11" (/sys/devices/system/cpu/online); nothing when
// malformed or naming a CPU beyond cpu_set_t.
std::optional<cpu_set_t> ParseCpuList(std::string_view text);

// Runnable tasks ('R') whose processor is in `cpus`, over every thread in /proc, leaving
// out the thread `self_tid` (the sampler). The load of a node confined to some cores.
int CountRunnableTasks(const cpu_set_t& cpus, pid_t self_tid);

// A process's memory cgroup, from /proc/<pid>/cgroup text: the v1 hierarchy with the
// "memory" controller when there is one, else the v2 ("0::") group.
struct CgroupRef {
  int version = 0;   // 1 or 2
  std::string path;  // relative to the hierarchy's mount, starting with '/'
};
std::optional<CgroupRef> ParseMemoryCgroup(const std::string& proc_cgroup);

// A memory limit file (v1 memory.limit_in_bytes, v2 memory.max) in bytes; nothing when
// there is no limit: "max", or v1's "no limit" of about 2^63, or unreadable text.
std::optional<uint64_t> ParseMemoryLimit(const std::string& text);

// One "key value" line of a cgroup's memory.stat, or nothing.
std::optional<uint64_t> ParseMemoryStat(const std::string& text, std::string_view key);

// What a memory cgroup with a limit leaves a node: its limit, its usage and the inactive
// file cache in that usage (reclaimable, so not really used).
struct CgroupMemory {
  uint64_t limit_bytes = 0;
  uint64_t usage_bytes = 0;
  uint64_t inactive_file_bytes = 0;
};
// Narrows the host's figures to the cgroup: total = min(host total, limit), free =
// min(host available, limit - (usage - inactive file)). Swap stays the host's.
MemInfo LimitMemInfo(const MemInfo& host, const CgroupMemory& cgroup);

// Reads the memory cgroup of this process (v1 under /sys/fs/cgroup/memory, v2 under
// /sys/fs/cgroup); nothing when it has no limit or cannot be read.
std::optional<CgroupMemory> ReadCgroupMemory();
// The node's memory now: the host's, within the daemon's memory cgroup when it has one.
// Nothing when /proc/meminfo cannot be read.
std::optional<MemInfo> ReadNodeMemory();

// Cores this process may run on (sched_getaffinity), so a node confined to one core by
// a cpuset publishes 1.
int UsableCores();

// A short fixed integer and floating-point workload, timed: the relative speed of one
// core against the reference machine (1.0), best of `runs` (about 12.5 ms each on the
// reference; a daemon starts with five). Timed by default in the CPU time of the calling thread, not the wall
// clock: a neighbour that takes the core away now and then stretches the wall time of a
// run, not the CPU time it took, so identical nodes publish one figure whatever their
// load (bench/run speed shows both clocks beside busy cores).
enum class SpeedClock { kThreadCpu, kWall };
double MeasureCpuSpeed(int runs = 5, SpeedClock clock = SpeedClock::kThreadCpu);

// The load a node publishes, from the runnable tasks sampled at every gossip round
// (procs_running, or those on the node's own cores): an exponentially weighted moving
// average with a time constant of `time_constant_ms`, as the kernel's loadavg but faster
// to follow a job that moved, or the recent count when that is higher. A rise shows
// within a round, so that others do not keep sending work to a node that has just filled
// up; a fall follows the average, so that a moment's idleness does not draw work.
class LoadAverage {
 public:
  explicit LoadAverage(double time_constant_ms) : time_constant_ms_(time_constant_ms) {}
  void Sample(double runnable, double elapsed_ms);
  double value() const { return std::max(smoothed_, recent()); }
  double smoothed() const { return smoothed_; }
  // The lower of the last two samples: a rise that lasted a round, not a passing burst
  // (a dump's threads, a command's short life).
  double recent() const { return std::min(last_, previous_); }

 private:
  double time_constant_ms_;
  double smoothed_ = 0;
  double last_ = 0;
  double previous_ = 0;
  bool first_ = true;
};

// The machine's boot time in seconds since the epoch, from /proc/stat's "btime" line; 0
// when there is none. A node publishes it rather than its uptime, which changes every
// second: whoever reads it subtracts it from its own clock.
uint64_t ParseBootTime(const std::string& proc_stat);
// The users logged in now: distinct names among utmp's user processes, as w(1) counts.
int LoggedInUsers();

// Reads the files once per call; errors leave the previous values (a node with an
// unreadable /proc still gossips, with what it knew).
class NodeMetrics {
 public:
  // `fixed_speed`: the administrator's figure ([node] speed), published as it is; 0: the
  // speed is measured at start and again now and then, the best figure kept.
  explicit NodeMetrics(double fixed_speed = 0);
  // Takes one sample; `elapsed_ms` since the previous one.
  void Sample(double elapsed_ms);
  // The runnable tasks right now, not counting the caller: on the node's cores when its
  // affinity leaves some online CPUs out, else host-wide. Nothing when unreadable.
  static std::optional<int> RunnableNow();

  int cores() const { return cores_; }
  double speed() const { return speed_; }
  double load() const { return load_.value(); }
  double smoothed_load() const { return load_.smoothed(); }
  double runnable_now() const { return load_.recent(); }
  // When the last sample was taken.
  std::chrono::steady_clock::time_point sampled_at() const { return sampled_at_; }
  const MemInfo& memory() const { return memory_; }
  uint64_t boot_time_s() const { return boot_time_s_; }
  int users() const { return users_; }

 private:
  static constexpr std::chrono::seconds kFirstSpeedRerun{10};
  static constexpr std::chrono::seconds kLastSpeedRerun{600};
  void RemeasureSpeed(std::chrono::steady_clock::time_point now);

  int cores_;
  double speed_;
  bool speed_fixed_;
  std::chrono::steady_clock::time_point next_speed_run_;
  std::chrono::seconds speed_rerun_ = kFirstSpeedRerun;
  LoadAverage load_;
  MemInfo memory_;
  uint64_t boot_time_s_ = 0;
  int users_ = 0;
  std::chrono::steady_clock::time_point sampled_at_;
};

}  // namespace homeward
