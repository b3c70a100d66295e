// The home id of a lock's holder: a job's process as its shim names it.
#include "lock_holder.h"

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#include "../../preload/pid_map.h"

namespace homeward {

namespace {

// The job's ids from the process's environment as its daemon started it (the job could
// rewrite them, and so misname only its own locks' holder).
bool JobPidMap(pid_t pid, preload::PidMap* map) {
  std::string path = "/proc/" + std::to_string(pid) + "/environ";
  FILE* f = std::fopen(path.c_str(), "re");
  if (!f) return false;
  std::string env;
  char buf[4096];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, f)) > 0 && env.size() < (1u << 20)) env.append(buf, n);
  std::fclose(f);
  std::string home_pid, home_ppid, base;
  for (size_t at = 0; at < env.size();) {
    size_t end = env.find('\0', at);
    if (end == std::string::npos) end = env.size();
    std::string_view var(env.data() + at, end - at);
    auto take = [&](std::string_view name, std::string* out) {
      if (var.substr(0, name.size()) == name) *out = std::string(var.substr(name.size()));
    };
    take("HOMEWARD_HOME_PID=", &home_pid);
    take("HOMEWARD_HOME_PPID=", &home_ppid);
    take("HOMEWARD_PID_BASE=", &base);
    at = end + 1;
  }
  return preload::MakePidMap(home_pid.c_str(), home_ppid.c_str(), base.c_str(), map);
}

}  // namespace

long InnermostPid(pid_t pid) {
  std::string path = "/proc/" + std::to_string(pid) + "/status";
  FILE* f = std::fopen(path.c_str(), "re");
  if (!f) return 0;
  char line[256];
  long inner = 0;
  int levels = 0;
  while (std::fgets(line, sizeof line, f)) {
    if (std::strncmp(line, "NStgid:", 7) != 0) continue;
    for (char* at = line + 7; *at;) {
      char* end;
      long v = std::strtol(at, &end, 10);
      if (end == at) break;
      inner = v;
      ++levels;
      at = end;
    }
    break;
  }
  std::fclose(f);
  return levels > 1 ? inner : 0;
}

pid_t HomeIdOf(pid_t pid) {
  if (pid <= 0) return pid;
  long inner = InnermostPid(pid);
  if (inner <= 0) return pid;
  preload::PidMap map;
  if (!JobPidMap(pid, &map)) return pid;
  return static_cast<pid_t>(map.ToHome(inner));
}

}  // namespace homeward
