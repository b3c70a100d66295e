// libc's path functions with /proc/<home id> translated to the inner pid (proc_path.h), and
// /proc status and stat files opened for reading with their id fields as the home's
// (home_ids.h).
// A relative path is translated too when its directory (a descriptor's, or the working
// directory) is in /proc: openat(proc_fd, "self/status").
// readdir and readdir64 of /proc and of /proc/<pid>/task name the job's processes and
// threads by their home ids.
// Only the exported entry points are covered: a path given to a raw system call, or one
// libc opens internally, is left as it is.
#undef _FILE_OFFSET_BITS  // Both open and open64 are defined here, each under its own name.

#include <dirent.h>
#include <dlfcn.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdarg>
#include <cstddef>
#include <cstdio>
#include <cstring>

#include "c_boundary.h"
#include "emulate.h"
#include "home_ids.h"
#include "next_symbol.h"
#include "proc_path.h"
#include "raw_syscall.h"
#include "shim_state.h"

namespace {

using homeward::preload::kProcPathMax;

using homeward::preload::Next;

const char* Proc(const char* path, char* buffer) {
  const auto& state = homeward::preload::State();
  if (!state.active) return path;
  return homeward::preload::TranslateProcPath(state.map, path, buffer,
                                              homeward::preload::RawSyscall(SYS_getpid));
}

constexpr long kProcSuperMagic = 0x9fa0;

bool IsDigit(char c) {
  return c >= '0' && c <= '9';
}

// True for a relative path that could need translating were its directory in /proc: one
// naming a pid ("<id>/...") or ending in an id file ("self/status", "stat"). Only these
// pay for asking what the directory is.
bool MayBeProcRelative(const char* path) {
  if (path == nullptr || path[0] == '\0' || path[0] == '/') return false;
  if (IsDigit(path[0])) return true;
  const char* last = path;
  for (const char* c = path; *c != '\0'; ++c) {
    if (*c == '/') last = c + 1;
  }
  const char* names[] = {"stat", "status"};
  for (const char* name : names) {
    size_t i = 0;
    while (name[i] != '\0' && last[i] == name[i]) ++i;
    if (name[i] == '\0' && last[i] == '\0') return true;
  }
  return false;
}

// `path` relative to `dirfd` (or the working directory) in /proc, made absolute and
// translated into `buffer` when that changes what it names or shows (a home id in it, an
// id file); null otherwise, and the path is used as the program gave it. Out of line, so
// that its buffer is on the stack only for these few paths.
__attribute__((noinline)) const char* ProcRelative(int dirfd, const char* path, char* buffer) {
  using homeward::preload::RawSyscall;
  struct statfs fs;
  long stated = dirfd == AT_FDCWD ? RawSyscall(SYS_statfs, reinterpret_cast<long>("."),
                                               reinterpret_cast<long>(&fs))
                                  : RawSyscall(SYS_fstatfs, dirfd, reinterpret_cast<long>(&fs));
  if (stated != 0 || fs.f_type != kProcSuperMagic) return nullptr;
  char link[40];
  if (dirfd == AT_FDCWD) {
    snprintf(link, sizeof(link), "/proc/self/cwd");
  } else {
    snprintf(link, sizeof(link), "/proc/self/fd/%d", dirfd);
  }
  char absolute[kProcPathMax];
  long length = RawSyscall(SYS_readlinkat, AT_FDCWD, reinterpret_cast<long>(link),
                           reinterpret_cast<long>(absolute), kProcPathMax - 1);
  if (length <= 0 || absolute[0] != '/') return nullptr;
  if (absolute[length - 1] != '/') absolute[length++] = '/';
  for (const char* c = path; *c != '\0'; ++c) {
    if (length + 1 >= static_cast<long>(kProcPathMax)) return nullptr;
    absolute[length++] = *c;
  }
  absolute[length] = '\0';
  const char* translated = Proc(absolute, buffer);
  if (translated == buffer) return buffer;
  if (homeward::preload::ClassifyProcIdFile(absolute) == homeward::preload::ProcIdFile::kNone) {
    return nullptr;
  }
  for (long i = 0; i <= length; ++i) buffer[i] = absolute[i];
  return buffer;
}

// Proc for a path relative to `dirfd` (AT_FDCWD: the working directory).
const char* ProcAt(int dirfd, const char* path, char* buffer) {
  if (!MayBeProcRelative(path) || !homeward::preload::State().active) return Proc(path, buffer);
  const char* absolute = ProcRelative(dirfd, path, buffer);
  return absolute != nullptr ? absolute : path;
}

// What OpenIds answers for a path whose ids it does not rewrite: open it as usual.
constexpr long kNotIds = 1L << 40;

// The text of an open /proc id file, rewritten, in a memory file opened read-only like
// the file it stands for; kNotIds when it cannot be. The buffers are mapped rather than on
// the stack, which may be a small thread's: this runs only for these few files.
long Rewritten(long fd, homeward::preload::ProcIdFile kind, int flags) {
  using homeward::preload::RawSyscall;
  constexpr long kBuffer = 65536;
  long mapped = homeward::preload::RawSyscall6(SYS_mmap, 0, 2 * kBuffer, PROT_READ | PROT_WRITE,
                                               MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (mapped < 0 && mapped > -4096) return kNotIds;
  char* in = reinterpret_cast<char*>(mapped);
  char* out = in + kBuffer;
  long size = 0;
  for (;;) {
    long n = RawSyscall(SYS_read, fd, reinterpret_cast<long>(in + size), kBuffer - size);
    if (n == -EINTR) continue;
    if (n <= 0) break;
    size += n;
    if (size == kBuffer) break;
  }
  long length = size == kBuffer
                    ? -1
                    : homeward::preload::RewriteProcIdFile(homeward::preload::State().map, kind, in,
                                                           static_cast<size_t>(size), out, kBuffer);
  long memory = length < 0
                    ? -1
                    : RawSyscall(SYS_memfd_create, reinterpret_cast<long>("proc-ids"), MFD_CLOEXEC);
  for (long done = 0; memory >= 0 && done < length;) {
    long n = RawSyscall(SYS_write, memory, reinterpret_cast<long>(out + done), length - done);
    if (n == -EINTR) continue;
    if (n <= 0) {
      RawSyscall(SYS_close, memory);
      memory = -1;
    }
    done += n;
  }
  RawSyscall(SYS_munmap, mapped, 2 * kBuffer);
  if (memory < 0) return kNotIds;  // larger than any such file: shown as the kernel has it
  // Reopened read-only through /proc/self/fd, so that a write fails as on the real file.
  char self[40];
  snprintf(self, sizeof(self), "/proc/self/fd/%ld", memory);
  long reopened = RawSyscall(SYS_openat, AT_FDCWD, reinterpret_cast<long>(self),
                             O_RDONLY | (flags & (O_CLOEXEC | O_NONBLOCK)));
  if (reopened < 0) {
    RawSyscall(SYS_lseek, memory, 0, SEEK_SET);
    if ((flags & O_CLOEXEC) == 0) RawSyscall(SYS_fcntl, memory, F_SETFD, 0);
    return memory;
  }
  RawSyscall(SYS_close, memory);
  return reopened;
}

// /proc/<pid>/status and /proc/<pid>/stat (home_ids.h) opened for reading: their text with
// the ids as the home's (Rewritten). Returns the descriptor, -errno, or kNotIds. The text
// is read once, when opened: a program that reads such a file again seeks back and
// rereads, and sees it unchanged.
long OpenIds(const char* path, int flags) {
  using homeward::preload::RawSyscall;
  const auto& state = homeward::preload::State();
  if (!state.active || path == nullptr || path[0] != '/') return kNotIds;
  auto kind = homeward::preload::ClassifyProcIdFile(path);
  if (kind == homeward::preload::ProcIdFile::kNone || (flags & O_ACCMODE) != O_RDONLY ||
      (flags & (O_PATH | O_DIRECTORY | O_CREAT | O_TMPFILE)) != 0) {
    return kNotIds;
  }
  long fd = RawSyscall(SYS_openat, AT_FDCWD, reinterpret_cast<long>(path), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return fd;
  long result = Rewritten(fd, kind, flags);
  RawSyscall(SYS_close, fd);
  return result;
}

// Opens `path` as the libc function `open` (taking flags and mode) would, unless its ids
// are rewritten.
template <typename Open>
int OpenPath(const char* path, int flags, Open open) {
  long ids = OpenIds(path, flags);
  if (ids != kNotIds) return static_cast<int>(homeward::preload::ToLibc(ids));
  return open(path);
}

// fopen's mode as open's flags, for the read-only modes whose ids are rewritten ("r",
// "rb", "re", ...); -1 for the others.
int ReadOnlyFlags(const char* mode) {
  if (mode == nullptr || mode[0] != 'r') return -1;
  int flags = O_RDONLY;
  for (const char* c = mode + 1; *c != '\0' && *c != ','; ++c) {
    if (*c == '+') return -1;
    if (*c == 'e') flags |= O_CLOEXEC;
  }
  return flags;
}

FILE* FopenPath(const char* path, const char* mode, FILE* (*fopen)(const char*, const char*)) {
  int flags = ReadOnlyFlags(mode);
  if (flags >= 0) {
    long ids = OpenIds(path, flags);
    if (ids != kNotIds) {
      if (ids < 0) {
        errno = static_cast<int>(-ids);
        return nullptr;
      }
      FILE* file = fdopen(static_cast<int>(ids), mode);
      if (file == nullptr) close(static_cast<int>(ids));
      return file;
    }
  }
  return fopen(path, mode);
}

mode_t ModeArg(int flags, va_list args) {
  return (flags & (O_CREAT | O_TMPFILE)) != 0 ? static_cast<mode_t>(va_arg(args, int)) : 0;
}

// True when `fd` is a directory that lists pids: /proc itself, or a /proc/<pid>/task.
bool ListsPids(int fd) {
  using homeward::preload::RawSyscall;
  struct statfs fs;
  if (RawSyscall(SYS_fstatfs, fd, reinterpret_cast<long>(&fs)) != 0 ||
      fs.f_type != kProcSuperMagic) {
    return false;
  }
  char link[40];
  snprintf(link, sizeof(link), "/proc/self/fd/%d", fd);
  char target[64];
  long length = RawSyscall(SYS_readlinkat, AT_FDCWD, reinterpret_cast<long>(link),
                           reinterpret_cast<long>(target), sizeof(target) - 1);
  if (length <= 0) return false;
  target[length] = '\0';
  if (strcmp(target, "/proc") == 0) return true;
  const char* c = target + 5;
  if (strncmp(target, "/proc/", 6) != 0 || !IsDigit(*++c)) return false;
  while (IsDigit(*c)) ++c;
  return strcmp(c, "/task") == 0;
}

// The entries readdir renamed, one per directory stream (the last few a thread read):
// each stays valid until the next readdir of its stream, as readdir's own do.
static_assert(sizeof(dirent) == sizeof(dirent64) &&
              offsetof(dirent, d_name) == offsetof(dirent64, d_name));
struct Renamed {
  DIR* dir;
  dirent64 entry;
};
constexpr unsigned kRenamedSlots = 4;
__attribute__((tls_model("initial-exec"))) thread_local Renamed t_renamed[kRenamedSlots];
__attribute__((tls_model("initial-exec"))) thread_local unsigned t_next_renamed;

// An entry of /proc or of a task directory is named by an inner pid (or tid): handed back
// renamed to its home id, as getpid and gettid give them and as /proc/<home id> opens
// (the path functions turn it back). Other entries are handed back as they are.
dirent64* HomeEntry(DIR* dir, dirent64* entry) {
  const auto& state = homeward::preload::State();
  if (entry == nullptr || !state.active || !IsDigit(entry->d_name[0])) return entry;
  long id = 0;
  const char* c = entry->d_name;
  for (; IsDigit(*c) && id < homeward::preload::kPidSpan; ++c) id = id * 10 + (*c - '0');
  if (*c != '\0' || id >= homeward::preload::kPidSpan || !ListsPids(dirfd(dir))) return entry;
  Renamed* slot = nullptr;
  for (Renamed& r : t_renamed) {
    if (r.dir == dir) slot = &r;
  }
  if (slot == nullptr) slot = &t_renamed[t_next_renamed++ % kRenamedSlots];
  slot->dir = dir;
  slot->entry.d_ino = entry->d_ino;
  slot->entry.d_off = entry->d_off;
  slot->entry.d_type = entry->d_type;
  slot->entry.d_reclen = sizeof(slot->entry);
  snprintf(slot->entry.d_name, sizeof(slot->entry.d_name), "%ld", state.map.ToHome(id));
  return &slot->entry;
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
    auto real = Next<int (*)(const char*, int, ...)>(slot, "open");
    return OpenPath(ProcAt(AT_FDCWD, path, buffer), flags,
                    [&](const char* p) { return real(p, flags, mode); });
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
    auto real = Next<int (*)(const char*, int, ...)>(slot, "open64");
    return OpenPath(ProcAt(AT_FDCWD, path, buffer), flags,
                    [&](const char* p) { return real(p, flags, mode); });
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
    auto real = Next<int (*)(int, const char*, int, ...)>(slot, "openat");
    return OpenPath(ProcAt(dirfd, path, buffer), flags,
                    [&](const char* p) { return real(dirfd, p, flags, mode); });
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
    auto real = Next<int (*)(int, const char*, int, ...)>(slot, "openat64");
    return OpenPath(ProcAt(dirfd, path, buffer), flags,
                    [&](const char* p) { return real(dirfd, p, flags, mode); });
  });
}

FILE* fopen(const char* path, const char* mode) {
  static std::atomic<void*> slot;
  return homeward::GuardedCall("preload", [&] {
    char buffer[kProcPathMax];
    return FopenPath(ProcAt(AT_FDCWD, path, buffer), mode,
                     Next<FILE* (*)(const char*, const char*)>(slot, "fopen"));
  });
}

FILE* fopen64(const char* path, const char* mode) {
  static std::atomic<void*> slot;
  return homeward::GuardedCall("preload", [&] {
    char buffer[kProcPathMax];
    return FopenPath(ProcAt(AT_FDCWD, path, buffer), mode,
                     Next<FILE* (*)(const char*, const char*)>(slot, "fopen64"));
  });
}

DIR* opendir(const char* path) {
  static std::atomic<void*> slot;
  return homeward::GuardedCall("preload", [&] {
    char buffer[kProcPathMax];
    return Next<DIR* (*)(const char*)>(slot, "opendir")(ProcAt(AT_FDCWD, path, buffer));
  });
}

dirent* readdir(DIR* dir) {
  static std::atomic<void*> slot;
  return homeward::GuardedCall("readdir", [&] {
    auto* entry = reinterpret_cast<dirent64*>(Next<dirent* (*)(DIR*)>(slot, "readdir")(dir));
    return reinterpret_cast<dirent*>(HomeEntry(dir, entry));
  });
}

dirent64* readdir64(DIR* dir) {
  static std::atomic<void*> slot;
  return homeward::GuardedCall("readdir64", [&] {
    return HomeEntry(dir, Next<dirent64* (*)(DIR*)>(slot, "readdir64")(dir));
  });
}

// A closed stream's renamed entry is forgotten: another may get its address.
int closedir(DIR* dir) {
  static std::atomic<void*> slot;
  return homeward::GuardedCall("closedir", [&] {
    for (Renamed& r : t_renamed) {
      if (r.dir == dir) r.dir = nullptr;
    }
    return Next<int (*)(DIR*)>(slot, "closedir")(dir);
  });
}

}  // extern "C"

// `dir` is the directory a relative path starts from (AT_FDCWD or the call's dirfd).
#define HW_PATH_FN(dir, ret, name, params, args_before, args_after)                              \
  extern "C" ret name params noexcept {                                                          \
    static std::atomic<void*> slot;                                                              \
    return homeward::GuardedCall(#name, [&] {                                                    \
      char buffer[kProcPathMax];                                                                 \
      return Next<ret(*) params>(slot, #name)(args_before ProcAt(dir, path, buffer) args_after); \
    });                                                                                          \
  }
#define HW_COMMA ,

HW_PATH_FN(AT_FDCWD, int, stat, (const char* path, struct stat* st), , HW_COMMA st)
HW_PATH_FN(AT_FDCWD, int, lstat, (const char* path, struct stat* st), , HW_COMMA st)
HW_PATH_FN(AT_FDCWD, int, stat64, (const char* path, struct stat64* st), , HW_COMMA st)
HW_PATH_FN(AT_FDCWD, int, lstat64, (const char* path, struct stat64* st), , HW_COMMA st)
HW_PATH_FN(dirfd, int, fstatat, (int dirfd, const char* path, struct stat* st, int flags),
           dirfd HW_COMMA, HW_COMMA st HW_COMMA flags)
HW_PATH_FN(dirfd, int, fstatat64, (int dirfd, const char* path, struct stat64* st, int flags),
           dirfd HW_COMMA, HW_COMMA st HW_COMMA flags)
HW_PATH_FN(AT_FDCWD, int, access, (const char* path, int mode), , HW_COMMA mode)
HW_PATH_FN(dirfd, int, faccessat, (int dirfd, const char* path, int mode, int flags),
           dirfd HW_COMMA, HW_COMMA mode HW_COMMA flags)
HW_PATH_FN(AT_FDCWD, ssize_t, readlink, (const char* path, char* out, size_t size), ,
           HW_COMMA out HW_COMMA size)
HW_PATH_FN(dirfd, ssize_t, readlinkat, (int dirfd, const char* path, char* out, size_t size),
           dirfd HW_COMMA, HW_COMMA out HW_COMMA size)
HW_PATH_FN(dirfd, int, statx,
           (int dirfd, const char* path, int flags, unsigned int mask, struct statx* out),
           dirfd HW_COMMA, HW_COMMA flags HW_COMMA mask HW_COMMA out)

#pragma GCC visibility pop
