// What a job uses, for mosps and the balancer: its processes' CPU time, runnable
// threads, resident memory and I/O, read from /proc, and smoothed over time.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace homeward {

struct ProcessStat {
  char state = '?';          // R, S, D, ...
  uint64_t cpu_ticks = 0;    // utime + stime
  uint64_t child_ticks = 0;  // cutime + cstime: reaped children
};
// Parses /proc/<pid>/stat (or .../task/<tid>/stat) text; the command may hold spaces
// and parentheses. Nothing when the text is not a stat line.
std::optional<ProcessStat> ParseProcessStat(const std::string& text);
// rchar + wchar of /proc/<pid>/io text: bytes through read and write calls of any kind.
uint64_t ParseIoBytes(const std::string& text);
// The resident pages of /proc/<pid>/statm text.
uint64_t ParseResidentPages(const std::string& text);

// One look at a job's processes.
struct UsageSample {
  int runnable = 0;     // threads running or waiting for a CPU
  uint64_t cpu_ms = 0;  // CPU time of the live processes and the children they reaped
  uint64_t rss_bytes = 0;
  uint64_t io_bytes = 0;
};
UsageSample SampleProcesses(const std::vector<pid_t>& pids);
// Only the CPU time of `pids` (and of the children they reaped): their stat files alone.
uint64_t CpuMs(const std::vector<pid_t>& pids);
// Only the resident memory of `pids` (shared pages counted in each): their statm files.
uint64_t ResidentBytes(const std::vector<pid_t>& pids);

// Rates and smoothed values from successive samples.
class UsageMeter {
 public:
  explicit UsageMeter(double time_constant_ms = 3000) : time_constant_ms_(time_constant_ms) {}
  void Add(const UsageSample& sample, int64_t now_ms);

  double demand() const { return demand_; }           // runnable threads, smoothed
  double cpu_use() const { return cpu_use_; }         // cores used, smoothed
  double io_bytes_per_s() const { return io_rate_; }  // smoothed
  uint32_t memory_mb() const { return memory_mb_; }   // resident now

 private:
  double time_constant_ms_;
  std::optional<UsageSample> last_;
  int64_t last_ms_ = 0;
  double demand_ = 0;
  double cpu_use_ = 0;
  double io_rate_ = 0;
  uint32_t memory_mb_ = 0;
};

}  // namespace homeward
