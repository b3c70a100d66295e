#include "node_directory.h"

namespace homeward {

bool NodeDirectory::Update(const std::string& name, const KnownNode& node) {
  std::lock_guard lock(mutex_);
  auto [it, added] = nodes_.try_emplace(name, node);
  if (added) return true;
  if (it->second.cluster.empty() && !node.cluster.empty()) return false;
  it->second = node;
  return true;
}

std::optional<KnownNode> NodeDirectory::Find(const std::string& name) const {
  std::lock_guard lock(mutex_);
  auto it = nodes_.find(name);
  if (it == nodes_.end()) return std::nullopt;
  return it->second;
}

}  // namespace homeward
