// The shim's libc wrappers call on to the definition they wrap.
#pragma once

#include <dlfcn.h>

#include <atomic>

namespace homeward::preload {

// The next definition of `name` (libc's), looked up once; racing threads store the same
// value, so no lock is needed (a lock could be inherited held by a forked child).
template <typename Fn>
Fn Next(std::atomic<void*>& slot, const char* name) {
  void* fn = slot.load(std::memory_order_acquire);
  if (fn == nullptr) {
    fn = dlsym(RTLD_NEXT, name);
    slot.store(fn, std::memory_order_release);
  }
  return reinterpret_cast<Fn>(fn);
}

}  // namespace homeward::preload
