// Logging set-up.
#include "log.h"

#include <spdlog/sinks/stdout_sinks.h>

namespace homeward {

void SetupLogging(const std::string& process, const std::string& node, const std::string& level) {
  auto logger = spdlog::stderr_logger_mt(process);
  logger->set_pattern(fmt::format("%Y-%m-%d %H:%M:%S.%e {}[{}] %^%l%$: %v", process, node));
  logger->set_level(spdlog::level::from_str(level));
  logger->flush_on(spdlog::level::trace);
  spdlog::set_default_logger(logger);
}

}  // namespace homeward
