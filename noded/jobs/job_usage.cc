// Reading and smoothing what a job's processes use.
#include "job_usage.h"

#include <dirent.h>
#include <unistd.h>

#include <cmath>
#include <cstdlib>
#include <memory>
#include <sstream>

#include <fmt/format.h>

#include "fd.h"

namespace homeward {

std::optional<ProcessStat> ParseProcessStat(const std::string& text) {
  size_t close = text.rfind(')');
  if (close == std::string::npos || close + 2 >= text.size()) return std::nullopt;
  std::istringstream fields(text.substr(close + 2));
  ProcessStat stat;
  std::string field;
  // Fields after the command: state(3) ... utime(14) stime(15) cutime(16) cstime(17).
  int index = 3;
  for (; index <= 17 && fields >> field; ++index) {
    uint64_t value = std::strtoull(field.c_str(), nullptr, 10);
    if (index == 3) stat.state = field[0];
    if (index == 14 || index == 15) stat.cpu_ticks += value;
    if (index == 16 || index == 17) stat.child_ticks += value;
  }
  if (index <= 17) return std::nullopt;
  return stat;
}

uint64_t ParseIoBytes(const std::string& text) {
  std::istringstream lines(text);
  std::string key;
  uint64_t value = 0;
  uint64_t total = 0;
  while (lines >> key >> value) {
    if (key == "rchar:" || key == "wchar:") total += value;
  }
  return total;
}

uint64_t ParseResidentPages(const std::string& text) {
  std::istringstream fields(text);
  uint64_t size = 0;
  uint64_t resident = 0;
  fields >> size >> resident;
  return resident;
}

namespace {

std::optional<ProcessStat> ReadProcessStat(pid_t pid) {
  return ParseProcessStat(ReadTextFile(fmt::format("/proc/{}/stat", pid)));
}

uint64_t ResidentBytesOf(pid_t pid) {
  static const uint64_t page_size = static_cast<uint64_t>(::sysconf(_SC_PAGESIZE));
  return ParseResidentPages(ReadTextFile(fmt::format("/proc/{}/statm", pid))) * page_size;
}

uint64_t TicksToMs(uint64_t ticks) {
  static const uint64_t ticks_per_s = static_cast<uint64_t>(::sysconf(_SC_CLK_TCK));
  return ticks * 1000 / ticks_per_s;
}

}  // namespace

uint64_t CpuMs(const std::vector<pid_t>& pids) {
  uint64_t ticks = 0;
  for (pid_t pid : pids) {
    if (auto stat = ReadProcessStat(pid)) ticks += stat->cpu_ticks + stat->child_ticks;
  }
  return TicksToMs(ticks);
}

uint64_t ResidentBytes(const std::vector<pid_t>& pids) {
  uint64_t total = 0;
  for (pid_t pid : pids) total += ResidentBytesOf(pid);
  return total;
}

UsageSample SampleProcesses(const std::vector<pid_t>& pids) {
  UsageSample sample;
  uint64_t ticks = 0;
  for (pid_t pid : pids) {
    auto stat = ReadProcessStat(pid);
    if (!stat) continue;  // gone meanwhile
    ticks += stat->cpu_ticks + stat->child_ticks;
    sample.rss_bytes += ResidentBytesOf(pid);
    sample.io_bytes += ParseIoBytes(ReadTextFile(fmt::format("/proc/{}/io", pid)));
    std::string task_dir = fmt::format("/proc/{}/task", pid);
    std::unique_ptr<DIR, int (*)(DIR*)> tasks(::opendir(task_dir.c_str()), ::closedir);
    if (!tasks) continue;
    while (dirent* entry = ::readdir(tasks.get())) {
      if (entry->d_name[0] == '.') continue;
      auto task = ParseProcessStat(ReadTextFile(task_dir + "/" + entry->d_name + "/stat"));
      if (task && task->state == 'R') ++sample.runnable;
    }
  }
  sample.cpu_ms = TicksToMs(ticks);
  return sample;
}

void UsageMeter::Add(const UsageSample& sample, int64_t now_ms) {
  memory_mb_ = static_cast<uint32_t>(sample.rss_bytes >> 20);
  if (!last_) {
    demand_ = sample.runnable;
    last_ = sample;
    last_ms_ = now_ms;
    return;
  }
  double elapsed_ms = static_cast<double>(now_ms - last_ms_);
  if (elapsed_ms <= 0) return;
  double alpha = 1.0 - std::exp(-elapsed_ms / time_constant_ms_);
  // Counters can go back when a process with CPU time or I/O ends: count no negative use.
  auto rate = [&](uint64_t now, uint64_t before) {
    return now > before ? static_cast<double>(now - before) / elapsed_ms : 0.0;
  };
  demand_ += alpha * (sample.runnable - demand_);
  cpu_use_ += alpha * (rate(sample.cpu_ms, last_->cpu_ms) - cpu_use_);
  io_rate_ += alpha * (rate(sample.io_bytes, last_->io_bytes) * 1000.0 - io_rate_);
  last_ = sample;
  last_ms_ = now_ms;
}

}  // namespace homeward
