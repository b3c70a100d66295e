// Checking libuv calls: their errors are negative errno values.
#pragma once

#include <string_view>

namespace homeward {

// Throws Error naming `what` and libuv's message when `status` < 0; returns it otherwise.
int CheckUv(int status, std::string_view what);

}  // namespace homeward
