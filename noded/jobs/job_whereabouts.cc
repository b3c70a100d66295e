#include "job_whereabouts.h"

#include <algorithm>

namespace homeward {

bool JobWhereabouts::Publish(Table table) {
  std::lock_guard lock(mutex_);
  if (table == table_) return false;
  table_ = std::move(table);
  return true;
}

std::vector<std::string> JobWhereabouts::NodesOf(pid_t home_pid) const {
  std::lock_guard lock(mutex_);
  auto it = table_.find(home_pid);
  return it == table_.end() ? std::vector<std::string>{} : it->second;
}

bool JobWhereabouts::RunsOn(pid_t home_pid, const std::string& node) const {
  auto nodes = NodesOf(home_pid);
  return std::find(nodes.begin(), nodes.end(), node) != nodes.end();
}

}  // namespace homeward
