#include "home_grace.h"

namespace homeward {

void HomeGrace::Unreachable(const std::string& home, int64_t now_ms) {
  since_.try_emplace(home, Outage{now_ms, false});
}

void HomeGrace::Reachable(const std::string& home) {
  since_.erase(home);
}

std::vector<std::string> HomeGrace::Overdue(int64_t now_ms) {
  std::vector<std::string> overdue;
  for (auto& [home, outage] : since_) {
    if (outage.handled || now_ms - outage.since_ms < grace_.count()) continue;
    outage.handled = true;
    overdue.push_back(home);
  }
  return overdue;
}

}  // namespace homeward
