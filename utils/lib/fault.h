// Fault points: named places compiled into the code where a failure test can make a step
// fail on purpose (like CRIU's CRIU_FAULT). HOMEWARD_FAULT=name[,name...] selects them;
// main() reads the variable once and passes the set down, so there is no global state.
#pragma once

#include <set>
#include <string>
#include <string_view>

namespace homeward {

class FaultPoints {
 public:
  FaultPoints() = default;
  // Parses "name[,name...]"; empty names are ignored.
  static FaultPoints Parse(std::string_view spec);
  // The set that HOMEWARD_FAULT names (empty when it is unset).
  static FaultPoints FromEnvironment();

  // True when `name` was selected: the caller then fails the way the point describes.
  bool Hit(std::string_view name) const;
  // Throws Error(kFailed, "fault point <name>") when `name` was selected.
  void Check(std::string_view name) const;
  bool empty() const { return names_.empty(); }

 private:
  std::set<std::string, std::less<>> names_;
};

}  // namespace homeward
