// Locating sibling programs.
#include "install_paths.h"

#include <filesystem>

namespace homeward {

std::string FindBesideExecutable(const std::vector<std::string>& candidates) {
  std::error_code ec;
  auto dir = std::filesystem::read_symlink("/proc/self/exe", ec).parent_path();
  for (const auto& candidate : candidates) {
    auto path = (dir / candidate).lexically_normal();
    if (std::filesystem::exists(path, ec)) return path.string();
  }
  return {};
}

}  // namespace homeward
