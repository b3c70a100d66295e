// The memory the migration tests' workload holds (workload.cc) and the tests look at in
// /proc/PID/smaps (migrate_test.cc): each region 2 MiB-aligned at a fixed address, so
// that runs compare.
#pragma once

#include <cstddef>
#include <cstdint>

namespace homeward::migrate::workload {

constexpr uintptr_t kDenseMemory = 0x6f0000000000;   // 8 MiB, every page written
constexpr uintptr_t kSparseMemory = 0x6f0001000000;  // 4 MiB, every other page written
constexpr uintptr_t kNoHugeMemory = 0x6f0002000000;  // 4 MiB, every page, MADV_NOHUGEPAGE
constexpr uintptr_t kSharedMemory = 0x6f0003000000;  // 4 MiB, every page, shared with the child

}  // namespace homeward::migrate::workload
