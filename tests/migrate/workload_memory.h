// The memory the migration tests' workload holds (workload.cc) and the tests look at in
// /proc/PID/smaps (migrate_test.cc): each region 2 MiB-aligned at a fixed address, so
// that runs compare.
#pragma once

#include <cstddef>
#include <cstdint>

namespace homeward::migrate::workload {

constexpr uintptr_t kDenseMemory = 0x6f0000000000;   // every page written
constexpr uintptr_t kSparseMemory = 0x6f0001000000;  // every other page written
constexpr uintptr_t kNoHugeMemory = 0x6f0002000000;  // every page, MADV_NOHUGEPAGE
constexpr uintptr_t kSharedMemory = 0x6f0003000000;  // every page, shared with the child
constexpr size_t kDenseBytes = 8 << 20, kSparseBytes = 4 << 20, kNoHugeBytes = 4 << 20,
                 kSharedBytes = 4 << 20;

}  // namespace homeward::migrate::workload
