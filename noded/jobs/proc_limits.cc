// Reading /proc/<pid>/limits: a header line, then one line per resource with its name,
// soft limit, hard limit and unit (fs/proc/base.c, proc_pid_limits).
#include "proc_limits.h"

#include <cerrno>
#include <cstdlib>
#include <optional>
#include <string>

namespace homeward {

namespace {

// The kernel's names of the limits. Names hold spaces, so a line is matched by its name
// rather than split at the first blank.
struct LimitName {
  std::string_view name;
  int resource;
};
constexpr LimitName kLimitNames[] = {
    {"Max cpu time", RLIMIT_CPU},
    {"Max file size", RLIMIT_FSIZE},
    {"Max data size", RLIMIT_DATA},
    {"Max stack size", RLIMIT_STACK},
    {"Max core file size", RLIMIT_CORE},
    {"Max resident set", RLIMIT_RSS},
    {"Max processes", RLIMIT_NPROC},
    {"Max open files", RLIMIT_NOFILE},
    {"Max locked memory", RLIMIT_MEMLOCK},
    {"Max address space", RLIMIT_AS},
    {"Max file locks", RLIMIT_LOCKS},
    {"Max pending signals", RLIMIT_SIGPENDING},
    {"Max msgqueue size", RLIMIT_MSGQUEUE},
    {"Max nice priority", RLIMIT_NICE},
    {"Max realtime priority", RLIMIT_RTPRIO},
    {"Max realtime timeout", RLIMIT_RTTIME},
};

// The next blank-separated word of `rest`, which is advanced past it.
std::string_view NextWord(std::string_view& rest) {
  size_t start = rest.find_first_not_of(" \t");
  if (start == std::string_view::npos) {
    rest = {};
    return {};
  }
  size_t end = rest.find_first_of(" \t", start);
  if (end == std::string_view::npos) end = rest.size();
  std::string_view word = rest.substr(start, end - start);
  rest.remove_prefix(end);
  return word;
}

std::optional<rlim_t> ParseValue(std::string_view word) {
  if (word == "unlimited") return RLIM_INFINITY;
  if (word.empty() || word.find_first_not_of("0123456789") != std::string_view::npos) {
    return std::nullopt;
  }
  std::string digits(word);
  errno = 0;
  unsigned long long value = std::strtoull(digits.c_str(), nullptr, 10);
  if (errno == ERANGE) return std::nullopt;
  return static_cast<rlim_t>(value);
}

}  // namespace

std::vector<ProcLimit> ParseProcLimits(std::string_view text) {
  std::vector<ProcLimit> limits;
  while (!text.empty()) {
    size_t end = text.find('\n');
    std::string_view line = text.substr(0, end);
    text.remove_prefix(end == std::string_view::npos ? text.size() : end + 1);
    for (const LimitName& known : kLimitNames) {
      // The name is followed by blanks: "Max file size" must not match "Max file sizes".
      if (line.size() <= known.name.size() || line.substr(0, known.name.size()) != known.name ||
          (line[known.name.size()] != ' ' && line[known.name.size()] != '\t')) {
        continue;
      }
      std::string_view rest = line.substr(known.name.size());
      std::optional<rlim_t> soft = ParseValue(NextWord(rest));
      std::optional<rlim_t> hard = ParseValue(NextWord(rest));
      if (soft && hard) limits.push_back({known.resource, *soft, *hard});
      break;
    }
  }
  return limits;
}

}  // namespace homeward
