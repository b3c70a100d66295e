// Included first in every file of the fuzz build (-include): Cap'n Proto 0.9's headers
// do not compile with clang 16 in C++20. blob.h compares `const char*` with kj::StringPtr
// and relies on C++20's reversed member operator==, which clang 16 (P2468) no longer
// considers because StringPtr also declares operator!=. kj declares the free operators
// only before C++20; declaring them here, for C++20, restores what the headers expect.
#pragma once

#include <kj/string.h>

#if __cpp_impl_three_way_comparison && defined(__clang__)
namespace kj {
inline bool operator==(const char* a, const StringPtr& b) {
  return b == StringPtr(a);
}
inline bool operator!=(const char* a, const StringPtr& b) {
  return !(b == StringPtr(a));
}
}  // namespace kj
#endif
