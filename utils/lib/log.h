// Logging: Homeward logs through spdlog. main() configures it once; code logs with
// spdlog::info/warn/error and never writes to stderr directly.
#pragma once

#include <string>

#include <spdlog/spdlog.h>

namespace homeward {

// Sets the level ("trace".."off") and a pattern that names the process and node.
void SetupLogging(const std::string& process, const std::string& node, const std::string& level);

}  // namespace homeward
