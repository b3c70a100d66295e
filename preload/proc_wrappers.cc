// libc's path functions with /proc/<home id> translated to the inner pid (proc_path.h).
// Only the exported entry points are covered: a path given to a raw system call, or one
// libc opens internally, is left as it is.
#undef _FILE_OFFSET_BITS  // Both open and open64 are defined here, each under its own name.

#include <dirent.h>
#include <dlfcn.h>
#include <fcntl.h>
#include <sys/syscall.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdarg>
#include <cstdio>

#include "c_boundary.h"
#include "proc_path.h"
#include "raw_syscall.h"
#include "shim_state.h"

namespace {

using homeward::preload::kProcPathMax;

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

const char* Proc(const char* path, char* buffer) {
  const auto& state = homeward::preload::State();
  if (!state.active) return path;
  return homeward::preload::TranslateProcPath(state.map, path, buffer,
                                              homeward::preload::RawSyscall(SYS_getpid));
}

mode_t ModeArg(int flags, va_list args) {
  return (flags & (O_CREAT | O_TMPFILE)) != 0 ? static_cast<mode_t>(va_arg(args, int)) : 0;
}

}  // namespace

#pragma GCC visibility push(default)
extern "C" {

int open(const char* path, int flags, ...) {
  static std::atomic<void*> slot;
  va_list args;
  va_start(args, flags);
  mode_t mode = ModeArg(flags, args);
  va_end(args);
  return homeward::GuardedCall("preload", [&] {
    char buffer[kProcPathMax];
    return Next<int (*)(const char*, int, ...)>(slot, "open")(Proc(path, buffer), flags, mode);
  });
}

int open64(const char* path, int flags, ...) {
  static std::atomic<void*> slot;
  va_list args;
  va_start(args, flags);
  mode_t mode = ModeArg(flags, args);
  va_end(args);
  return homeward::GuardedCall("preload", [&] {
    char buffer[kProcPathMax];
    return Next<int (*)(const char*, int, ...)>(slot, "open64")(Proc(path, buffer), flags, mode);
  });
}

int openat(int dirfd, const char* path, int flags, ...) {
  static std::atomic<void*> slot;
  va_list args;
  va_start(args, flags);
  mode_t mode = ModeArg(flags, args);
  va_end(args);
  return homeward::GuardedCall("preload", [&] {
    char buffer[kProcPathMax];
    return Next<int (*)(int, const char*, int, ...)>(slot, "openat")(dirfd, Proc(path, buffer),
                                                                     flags, mode);
  });
}

int openat64(int dirfd, const char* path, int flags, ...) {
  static std::atomic<void*> slot;
  va_list args;
  va_start(args, flags);
  mode_t mode = ModeArg(flags, args);
  va_end(args);
  return homeward::GuardedCall("preload", [&] {
    char buffer[kProcPathMax];
    return Next<int (*)(int, const char*, int, ...)>(slot, "openat64")(dirfd, Proc(path, buffer),
                                                                       flags, mode);
  });
}

FILE* fopen(const char* path, const char* mode) {
  static std::atomic<void*> slot;
  return homeward::GuardedCall("preload", [&] {
    char buffer[kProcPathMax];
    return Next<FILE* (*)(const char*, const char*)>(slot, "fopen")(Proc(path, buffer), mode);
  });
}

FILE* fopen64(const char* path, const char* mode) {
  static std::atomic<void*> slot;
  return homeward::GuardedCall("preload", [&] {
    char buffer[kProcPathMax];
    return Next<FILE* (*)(const char*, const char*)>(slot, "fopen64")(Proc(path, buffer), mode);
  });
}

DIR* opendir(const char* path) {
  static std::atomic<void*> slot;
  return homeward::GuardedCall("preload", [&] {
    char buffer[kProcPathMax];
    return Next<DIR* (*)(const char*)>(slot, "opendir")(Proc(path, buffer));
  });
}

}  // extern "C"

#define HW_PATH_FN(ret, name, params, args_before, args_after)                            \
  extern "C" ret name params noexcept {                                                   \
    static std::atomic<void*> slot;                                                       \
    return homeward::GuardedCall(#name, [&] {                                             \
      char buffer[kProcPathMax];                                                          \
      return Next<ret(*) params>(slot, #name)(args_before Proc(path, buffer) args_after); \
    });                                                                                   \
  }
#define HW_COMMA ,

HW_PATH_FN(int, stat, (const char* path, struct stat* st), , HW_COMMA st)
HW_PATH_FN(int, lstat, (const char* path, struct stat* st), , HW_COMMA st)
HW_PATH_FN(int, stat64, (const char* path, struct stat64* st), , HW_COMMA st)
HW_PATH_FN(int, lstat64, (const char* path, struct stat64* st), , HW_COMMA st)
HW_PATH_FN(int, fstatat, (int dirfd, const char* path, struct stat* st, int flags), dirfd HW_COMMA,
           HW_COMMA st HW_COMMA flags)
HW_PATH_FN(int, fstatat64, (int dirfd, const char* path, struct stat64* st, int flags),
           dirfd HW_COMMA, HW_COMMA st HW_COMMA flags)
HW_PATH_FN(int, access, (const char* path, int mode), , HW_COMMA mode)
HW_PATH_FN(int, faccessat, (int dirfd, const char* path, int mode, int flags), dirfd HW_COMMA,
           HW_COMMA mode HW_COMMA flags)
HW_PATH_FN(ssize_t, readlink, (const char* path, char* out, size_t size), ,
           HW_COMMA out HW_COMMA size)
HW_PATH_FN(ssize_t, readlinkat, (int dirfd, const char* path, char* out, size_t size),
           dirfd HW_COMMA, HW_COMMA out HW_COMMA size)
HW_PATH_FN(int, statx,
           (int dirfd, const char* path, int flags, unsigned int mask, struct statx* out),
           dirfd HW_COMMA, HW_COMMA flags HW_COMMA mask HW_COMMA out)

#pragma GCC visibility pop
