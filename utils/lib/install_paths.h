// Where Homeward's programs find each other: beside the running executable, in the
// build tree (<build>/noded/mosnoded next to <build>/homefs/mosmount) and installed.
#pragma once

#include <string>
#include <vector>

namespace homeward {

// The first of `candidates` (paths relative to the running executable's directory) that
// exists, or empty when none does.
std::string FindBesideExecutable(const std::vector<std::string>& candidates);

}  // namespace homeward
