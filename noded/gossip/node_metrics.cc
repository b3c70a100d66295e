// Local measurements from /proc, the cgroup and the scheduler.
#include "node_metrics.h"

#include "fd.h"

#include <dirent.h>
#include <fcntl.h>
#include <time.h>
#include <unistd.h>
#include <utmpx.h>

#include <charconv>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>

namespace homeward {

namespace {

// The benchmark's time on the reference machine (a core of the project's build host),
// which defines speed 1.0.
constexpr double kReferenceMicros = 12500.0;

// Limits at or above this are "no limit": v1 reports 2^63 rounded down to a page.
constexpr uint64_t kNoLimitBytes = uint64_t{1} << 62;

uint32_t KbToMb(uint64_t kb) {
  return static_cast<uint32_t>(kb / 1024);
}

uint32_t BytesToMb(uint64_t bytes) {
  return static_cast<uint32_t>(std::min<uint64_t>(bytes >> 20, UINT32_MAX));
}

std::string_view Trim(std::string_view text) {
  constexpr std::string_view kSpace = " \t\n";
  auto begin = text.find_first_not_of(kSpace);
  if (begin == std::string_view::npos) return {};
  return text.substr(begin, text.find_last_not_of(kSpace) - begin + 1);
}

// A whole decimal number, or nothing.
template <typename T>
std::optional<T> ParseNumber(std::string_view text) {
  T value{};
  auto [end, error] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (error != std::errc() || end != text.data() + text.size() || text.empty()) {
    return std::nullopt;
  }
  return value;
}

bool IsPid(const char* name) {
  if (*name == 0) return false;
  for (; *name; ++name) {
    if (*name < '0' || *name > '9') return false;
  }
  return true;
}

// Visits the numeric entries (pids, tids) of the directory open at `fd`, which it closes.
template <typename Visit>
void ForEachPid(int fd, Visit visit) {
  if (fd < 0) return;
  DIR* dir = fdopendir(fd);
  if (dir == nullptr) {
    close(fd);
    return;
  }
  while (dirent* entry = readdir(dir)) {
    if (IsPid(entry->d_name)) visit(dirfd(dir), entry->d_name);
  }
  closedir(dir);
}

}  // namespace

std::optional<TaskStat> ParseTaskStat(std::string_view text) {
  auto name_end = text.rfind(')');
  if (name_end == std::string_view::npos) return std::nullopt;
  // Fields after the command name: state is field 3 and processor field 39.
  constexpr int kStateField = 3;
  constexpr int kProcessorField = 39;
  TaskStat stat;
  int field = kStateField;
  size_t at = name_end + 1;
  while (field <= kProcessorField) {
    at = text.find_first_not_of(' ', at);
    if (at == std::string_view::npos) return std::nullopt;
    size_t end = std::min(text.find_first_of(" \n", at), text.size());
    std::string_view token = text.substr(at, end - at);
    if (field == kStateField) {
      if (token.size() != 1) return std::nullopt;
      stat.state = token[0];
    } else if (field == kProcessorField) {
      auto processor = ParseNumber<int>(token);
      if (!processor) return std::nullopt;
      stat.processor = *processor;
    }
    at = end;
    ++field;
  }
  return stat;
}

std::optional<cpu_set_t> ParseCpuList(std::string_view text) {
  text = Trim(text);
  if (text.empty()) return std::nullopt;
  cpu_set_t set;
  CPU_ZERO(&set);
  while (!text.empty()) {
    auto comma = text.find(',');
    std::string_view item = text.substr(0, comma);
    text = comma == std::string_view::npos ? std::string_view() : text.substr(comma + 1);
    auto dash = item.find('-');
    auto first = ParseNumber<unsigned>(item.substr(0, dash));
    auto last =
        dash == std::string_view::npos ? first : ParseNumber<unsigned>(item.substr(dash + 1));
    if (!first || !last || *first > *last || *last >= CPU_SETSIZE) return std::nullopt;
    for (unsigned cpu = *first; cpu <= *last; ++cpu) CPU_SET(cpu, &set);
  }
  return set;
}

// Costs an open, a read and a close per thread: measured at about 4 us a thread on the
// reference machine, 0.36 ms for its ~85 threads, so some 8 ms a gossip round (1 s) even
// on a host running 2,000 threads.
int CountRunnableTasks(const cpu_set_t& cpus, pid_t self_tid) {
  int runnable = 0;
  char buffer[1024];
  ForEachPid(open("/proc", O_RDONLY | O_DIRECTORY | O_CLOEXEC), [&](int proc, const char* pid) {
    std::string tasks = std::string(pid) + "/task";
    ForEachPid(openat(proc, tasks.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC),
               [&](int task_dir, const char* tid) {
                 if (ParseNumber<pid_t>(tid) == self_tid) return;
                 std::string path = std::string(tid) + "/stat";
                 int fd = openat(task_dir, path.c_str(), O_RDONLY | O_CLOEXEC);
                 if (fd < 0) return;  // gone since the listing
                 ssize_t size = read(fd, buffer, sizeof buffer);
                 close(fd);
                 if (size <= 0) return;
                 auto stat = ParseTaskStat(std::string_view(buffer, static_cast<size_t>(size)));
                 if (stat && stat->state == 'R' && stat->processor >= 0 &&
                     stat->processor < CPU_SETSIZE && CPU_ISSET(stat->processor, &cpus)) {
                   ++runnable;
                 }
               });
  });
  return runnable;
}

std::optional<CgroupRef> ParseMemoryCgroup(const std::string& proc_cgroup) {
  std::optional<CgroupRef> unified;
  std::istringstream in(proc_cgroup);
  std::string line;
  while (std::getline(in, line)) {
    // hierarchy-id:controller,controller:path (the path may itself hold ':').
    auto first = line.find(':');
    auto second = first == std::string::npos ? first : line.find(':', first + 1);
    if (second == std::string::npos) continue;
    std::string_view id(line.data(), first);
    std::string_view controllers(line.data() + first + 1, second - first - 1);
    std::string path = line.substr(second + 1);
    if (path.empty() || path[0] != '/') continue;
    if (id == "0" && controllers.empty()) {
      unified = CgroupRef{2, path};
      continue;
    }
    while (!controllers.empty()) {
      auto comma = controllers.find(',');
      if (controllers.substr(0, comma) == "memory") return CgroupRef{1, path};
      controllers =
          comma == std::string_view::npos ? std::string_view() : controllers.substr(comma + 1);
    }
  }
  return unified;
}

std::optional<uint64_t> ParseMemoryLimit(const std::string& text) {
  auto limit = ParseNumber<uint64_t>(Trim(text));
  if (!limit || *limit >= kNoLimitBytes) return std::nullopt;
  return limit;
}

std::optional<uint64_t> ParseMemoryStat(const std::string& text, std::string_view key) {
  std::string_view rest(text);
  while (!rest.empty()) {
    auto newline = rest.find('\n');
    std::string_view line = rest.substr(0, newline);
    rest = newline == std::string_view::npos ? std::string_view() : rest.substr(newline + 1);
    if (line.size() > key.size() && line.substr(0, key.size()) == key && line[key.size()] == ' ') {
      return ParseNumber<uint64_t>(Trim(line.substr(key.size() + 1)));
    }
  }
  return std::nullopt;
}

MemInfo LimitMemInfo(const MemInfo& host, const CgroupMemory& cgroup) {
  MemInfo info = host;
  uint64_t used = cgroup.usage_bytes - std::min(cgroup.inactive_file_bytes, cgroup.usage_bytes);
  uint64_t room = cgroup.limit_bytes - std::min(used, cgroup.limit_bytes);
  info.mem_total_mb = std::min(host.mem_total_mb, BytesToMb(cgroup.limit_bytes));
  info.mem_free_mb = std::min(host.mem_free_mb, BytesToMb(room));
  return info;
}

std::optional<CgroupMemory> ReadCgroupMemory() {
  auto ref = ParseMemoryCgroup(ReadTextFile("/proc/self/cgroup"));
  if (!ref) return std::nullopt;
  bool v1 = ref->version == 1;
  std::string mount = v1 ? "/sys/fs/cgroup/memory" : "/sys/fs/cgroup";
  const char* limit_file = v1 ? "/memory.limit_in_bytes" : "/memory.max";
  std::string dir = mount + ref->path;
  // Without a cgroup namespace a container sees its own group at the mount's root while
  // /proc names the host's path.
  std::error_code error;
  if (!std::filesystem::exists(dir + limit_file, error)) dir = mount;
  auto limit = ParseMemoryLimit(ReadTextFile(dir + limit_file));
  if (!limit) return std::nullopt;
  auto usage = ParseNumber<uint64_t>(
      Trim(ReadTextFile(dir + (v1 ? "/memory.usage_in_bytes" : "/memory.current"))));
  if (!usage) return std::nullopt;
  auto inactive = ParseMemoryStat(ReadTextFile(dir + "/memory.stat"),
                                  v1 ? "total_inactive_file" : "inactive_file");
  return CgroupMemory{*limit, *usage, inactive.value_or(0)};
}

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

double SpeedWorkload(SpeedClock clock) {
  // A fixed mix of integer and floating-point work the optimiser cannot remove, in
  // registers: no cache or memory a neighbour could slow.
  clockid_t id = clock == SpeedClock::kThreadCpu ? CLOCK_THREAD_CPUTIME_ID : CLOCK_MONOTONIC;
  timespec start{}, end{};
  ::clock_gettime(id, &start);
  uint64_t x = 88172645463325252ull;
  double acc = 0;
  for (int i = 0; i < 4'000'000; ++i) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    acc += static_cast<double>(x & 0xffff) * 1e-5;
    acc = acc > 1e6 ? acc * 0.5 : acc;
  }
  ::clock_gettime(id, &end);
  volatile double sink = acc;
  (void)sink;
  double us = static_cast<double>(end.tv_sec - start.tv_sec) * 1e6 +
              static_cast<double>(end.tv_nsec - start.tv_nsec) / 1e3;
  return std::round(kReferenceMicros / std::max(us, 1.0) * 100.0) / 100.0;
}

double MeasureCpuSpeed(int runs, SpeedClock clock) {
  double best = 0;
  for (int run = 0; run < runs; ++run) best = std::max(best, SpeedWorkload(clock));
  return best;
}

void LoadAverage::Sample(double runnable, double elapsed_ms) {
  previous_ = first_ ? runnable : last_;
  last_ = runnable;
  if (first_) {
    smoothed_ = runnable;
    first_ = false;
    return;
  }
  double alpha = 1.0 - std::exp(-std::max(elapsed_ms, 0.0) / time_constant_ms_);
  smoothed_ += alpha * (runnable - smoothed_);
}

NodeMetrics::NodeMetrics(double fixed_speed)
    : cores_(UsableCores()),
      speed_(fixed_speed > 0 ? fixed_speed : MeasureCpuSpeed()),
      speed_fixed_(fixed_speed > 0),
      next_speed_run_(std::chrono::steady_clock::now() + kFirstSpeedRerun),
      load_(5000.0) {
  std::ifstream stat("/proc/stat");
  std::stringstream text;
  text << stat.rdbuf();
  boot_time_s_ = ParseBootTime(text.str());
  Sample(0);
}

void NodeMetrics::RemeasureSpeed(std::chrono::steady_clock::time_point now) {
  // One more short run now and then, each later than the one before: the best figure
  // stays, so that a node started beside a busy neighbour soon publishes its own speed.
  if (speed_fixed_ || now < next_speed_run_) return;
  speed_ = std::max(speed_, MeasureCpuSpeed(1));
  speed_rerun_ = std::min(speed_rerun_ * 2, kLastSpeedRerun);
  next_speed_run_ = now + speed_rerun_;
}

std::optional<int> NodeMetrics::RunnableNow() {
  cpu_set_t mine;
  CPU_ZERO(&mine);
  if (sched_getaffinity(0, sizeof mine, &mine) == 0) {
    auto online = ParseCpuList(ReadTextFile("/sys/devices/system/cpu/online"));
    if (online) {
      cpu_set_t usable;
      CPU_AND(&usable, &*online, &mine);
      if (!CPU_EQUAL(&usable, &*online)) {
        // Confined to some cores: only the tasks on them load this node.
        return CountRunnableTasks(usable, gettid());
      }
    }
  }
  auto running = ParseProcsRunning(ReadTextFile("/proc/stat"));
  // The sampler itself is running while it reads: it is not load.
  if (running) return std::max(*running - 1, 0);
  return std::nullopt;
}

std::optional<MemInfo> ReadNodeMemory() {
  MemInfo memory = ParseMemInfo(ReadTextFile("/proc/meminfo"));
  if (memory.mem_total_mb == 0) return std::nullopt;
  if (auto cgroup = ReadCgroupMemory()) memory = LimitMemInfo(memory, *cgroup);
  return memory;
}

void NodeMetrics::Sample(double elapsed_ms) {
  sampled_at_ = std::chrono::steady_clock::now();
  RemeasureSpeed(sampled_at_);
  cores_ = UsableCores();
  if (auto runnable = RunnableNow()) load_.Sample(*runnable, elapsed_ms);
  if (auto memory = ReadNodeMemory()) memory_ = *memory;
  users_ = LoggedInUsers();
}

uint64_t ParseBootTime(const std::string& proc_stat) {
  size_t at = proc_stat.find("\nbtime ");
  if (at == std::string::npos) return 0;
  unsigned long long seconds = 0;
  if (std::sscanf(proc_stat.c_str() + at + 1, "btime %llu", &seconds) != 1) return 0;
  return seconds;
}

int LoggedInUsers() {
  std::set<std::string> names;
  setutxent();
  while (const utmpx* entry = getutxent()) {
    if (entry->ut_type != USER_PROCESS || entry->ut_user[0] == '\0') continue;
    names.insert(std::string(entry->ut_user, strnlen(entry->ut_user, sizeof entry->ut_user)));
  }
  endutxent();
  return static_cast<int>(names.size());
}

}  // namespace homeward
