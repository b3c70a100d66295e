// Fault points chosen by HOMEWARD_FAULT.
#include "fault.h"

#include <cstdlib>

#include "error.h"

namespace homeward {

FaultPoints FaultPoints::Parse(std::string_view spec) {
  FaultPoints points;
  while (!spec.empty()) {
    size_t comma = spec.find(',');
    std::string_view name = spec.substr(0, comma);
    if (!name.empty()) points.names_.emplace(name);
    if (comma == std::string_view::npos) break;
    spec.remove_prefix(comma + 1);
  }
  return points;
}

FaultPoints FaultPoints::FromEnvironment() {
  const char* spec = std::getenv("HOMEWARD_FAULT");
  return spec ? Parse(spec) : FaultPoints();
}

bool FaultPoints::Hit(std::string_view name) const {
  return names_.find(name) != names_.end();
}

void FaultPoints::Check(std::string_view name) const {
  if (Hit(name)) Fail(ErrorKind::kFailed, "fault point {} hit (HOMEWARD_FAULT)", name);
}

}  // namespace homeward
