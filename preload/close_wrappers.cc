// The closes out of the close wrapper's reach: stdio's (fclose and freopen close their
// descriptor inside libc) and the closes of many descriptors at once (close_range,
// closefrom). A close drops the process's POSIX locks on the file, which the shim holds on
// a description of its own (posix_locks.h): that one closes too, after stdio's buffered
// output is written (as the kernel drops them at the close itself); and the shim's own
// descriptions are not the program's to close with a range.
#undef _FILE_OFFSET_BITS  // freopen and freopen64 are each defined here.

#include <stdio.h>
#include <unistd.h>

#include <cerrno>

#include <atomic>

#include "c_boundary.h"
#include "next_symbol.h"
#include "posix_locks.h"
#include "shim_state.h"

namespace {

using homeward::preload::Next;

// The description holding the locks on `stream`'s file, taken from the shim's table.
int Detach(FILE* stream) {
  if (stream == nullptr || !homeward::preload::State().active) return -1;
  int fd = fileno(stream);
  return fd < 0 ? -1 : homeward::preload::DetachOnClose(fd);
}

FILE* Reopen(const char* name, std::atomic<void*>& slot, const char* path, const char* mode,
             FILE* stream) {
  return homeward::GuardedCall(name, [&] {
    int fd = stream == nullptr ? -1 : fileno(stream);
    int own = Detach(stream);
    FILE* result =
        Next<FILE* (*)(const char*, const char*, FILE*)>(slot, name)(path, mode, stream);
    homeward::preload::CloseDetached(own, fd);
    return result;
  });
}

}  // namespace

#pragma GCC visibility push(default)
extern "C" {

int fclose(FILE* stream) {
  static std::atomic<void*> slot;
  return homeward::GuardedCall("fclose", [&] {
    int fd = stream == nullptr ? -1 : fileno(stream);
    int own = Detach(stream);
    int result = Next<int (*)(FILE*)>(slot, "fclose")(stream);
    homeward::preload::CloseDetached(own, fd);
    return result;
  });
}

FILE* freopen(const char* path, const char* mode, FILE* stream) {
  static std::atomic<void*> slot;
  return Reopen("freopen", slot, path, mode, stream);
}

FILE* freopen64(const char* path, const char* mode, FILE* stream) {
  static std::atomic<void*> slot;
  return Reopen("freopen64", slot, path, mode, stream);
}

int close_range(unsigned first, unsigned last, int flags) noexcept {
  static std::atomic<void*> slot;
  return homeward::GuardedCall("close_range", [&] {
    if (!homeward::preload::State().active) {
      return Next<int (*)(unsigned, unsigned, int)>(slot, "close_range")(first, last, flags);
    }
    long result = homeward::preload::CloseRange(first, last, flags);
    if (result < 0) {
      errno = static_cast<int>(-result);
      return -1;
    }
    return 0;
  });
}

void closefrom(int lowest) noexcept {
  static std::atomic<void*> slot;
  homeward::GuardedCall("closefrom", [&] {
    if (homeward::preload::State().active && lowest >= 0 &&
        homeward::preload::CloseRange(static_cast<unsigned>(lowest), ~0U, 0) == 0) {
      return;
    }
    Next<void (*)(int)>(slot, "closefrom")(lowest);  // as libc does it, without close_range
  });
}

}  // extern "C"
#pragma GCC visibility pop
