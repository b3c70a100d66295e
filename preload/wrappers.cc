// The libc functions the shim replaces. Each makes the call through Emulate, as the
// SIGSYS handler does, but without a trap: the common calls (getpid, waitpid, kill) cost
// one ordinary system call. Errors become errno here, the shim's one C boundary.
#include <dlfcn.h>
#include <spawn.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <csignal>
#include <cstring>

#include "c_boundary.h"
#include "emulate.h"
#include "shim_state.h"

namespace {

using homeward::preload::Emulate;
using homeward::preload::ToLibc;

// Every system call hook below answers through here, behind the one C-boundary guard.
long Call(long nr, long a0 = 0, long a1 = 0, long a2 = 0, long a3 = 0, long a4 = 0) {
  return homeward::GuardedCall("preload", [&] {
    const long args[6] = {a0, a1, a2, a3, a4, 0};
    return ToLibc(Emulate(nr, args, nullptr));
  });
}

long Ptr(const void* p) {
  return reinterpret_cast<long>(p);
}

// posix_spawn's child is a clone sharing the parent's memory, which the filter lets pass
// (see filter.cc), so its pid comes back as the kernel's and is mapped here.
template <typename Fn>
int Spawn(const char* name, pid_t* pid, const char* path, const posix_spawn_file_actions_t* actions,
          const posix_spawnattr_t* attr, char* const argv[], char* const envp[]) {
  return homeward::GuardedCall(name, [&] {
    auto real = reinterpret_cast<Fn>(dlsym(RTLD_NEXT, name));
    if (real == nullptr) return ENOSYS;
    pid_t child = 0;
    int err = real(&child, path, actions, attr, argv, envp);
    if (err == 0 && pid != nullptr) {
      const auto& state = homeward::preload::State();
      *pid = static_cast<pid_t>(state.active ? state.map.ToHome(child) : child);
    }
    return err;
  });
}

using SpawnFn = int (*)(pid_t*, const char*, const posix_spawn_file_actions_t*,
                        const posix_spawnattr_t*, char* const[], char* const[]);

}  // namespace

#pragma GCC visibility push(default)
extern "C" {

pid_t getpid() noexcept {
  return static_cast<pid_t>(Call(SYS_getpid));
}
pid_t getppid() noexcept {
  return static_cast<pid_t>(Call(SYS_getppid));
}
pid_t gettid() noexcept {
  return static_cast<pid_t>(Call(SYS_gettid));
}
pid_t getpgrp() noexcept {
  return static_cast<pid_t>(Call(SYS_getpgrp));
}
pid_t getpgid(pid_t pid) noexcept {
  return static_cast<pid_t>(Call(SYS_getpgid, pid));
}
pid_t getsid(pid_t pid) noexcept {
  return static_cast<pid_t>(Call(SYS_getsid, pid));
}
pid_t setsid() noexcept {
  return static_cast<pid_t>(Call(SYS_setsid));
}
int setpgid(pid_t pid, pid_t pgid) noexcept {
  return static_cast<int>(Call(SYS_setpgid, pid, pgid));
}
// A terminal's process groups and session, in home ids (see TerminalIoctl in emulate.cc).
pid_t tcgetpgrp(int fd) noexcept {
  pid_t group = 0;
  return Call(SYS_ioctl, fd, TIOCGPGRP, Ptr(&group)) < 0 ? -1 : group;
}
int tcsetpgrp(int fd, pid_t group) noexcept {
  return static_cast<int>(Call(SYS_ioctl, fd, TIOCSPGRP, Ptr(&group)));
}
pid_t tcgetsid(int fd) noexcept {
  pid_t session = 0;
  return Call(SYS_ioctl, fd, TIOCGSID, Ptr(&session)) < 0 ? -1 : session;
}
int kill(pid_t pid, int sig) noexcept {
  return static_cast<int>(Call(SYS_kill, pid, sig));
}
int killpg(pid_t pgrp, int sig) noexcept {
  if (pgrp <= 1) {
    errno = EINVAL;
    return -1;
  }
  return static_cast<int>(Call(SYS_kill, -static_cast<long>(pgrp), sig));
}
int tgkill(pid_t tgid, pid_t tid, int sig) noexcept {
  return static_cast<int>(Call(SYS_tgkill, tgid, tid, sig));
}

pid_t wait4(pid_t pid, int* status, int options, struct rusage* usage) noexcept {
  return static_cast<pid_t>(Call(SYS_wait4, pid, Ptr(status), options, Ptr(usage)));
}
pid_t wait3(int* status, int options, struct rusage* usage) noexcept {
  return static_cast<pid_t>(Call(SYS_wait4, -1, Ptr(status), options, Ptr(usage)));
}
pid_t waitpid(pid_t pid, int* status, int options) {
  return static_cast<pid_t>(Call(SYS_wait4, pid, Ptr(status), options, 0));
}
pid_t wait(int* status) {
  return static_cast<pid_t>(Call(SYS_wait4, -1, Ptr(status), 0, 0));
}
int waitid(idtype_t type, id_t id, siginfo_t* info, int options) {
  return static_cast<int>(Call(SYS_waitid, type, id, Ptr(info), options, 0));
}

int uname(struct utsname* name) noexcept {
  return static_cast<int>(Call(SYS_uname, Ptr(name)));
}
int gethostname(char* name, size_t len) noexcept {
  struct utsname uts;
  if (Call(SYS_uname, Ptr(&uts)) != 0) return -1;
  size_t n = strlen(uts.nodename);
  if (n + 1 > len) {
    errno = ENAMETOOLONG;
    return -1;
  }
  memcpy(name, uts.nodename, n + 1);
  return 0;
}

// A vfork child would share this function's frame with its parent; fork is the safe
// equivalent (POSIX lets vfork be fork), and its pid is mapped by the fork trap.
pid_t vfork() noexcept {
  return fork();
}

int posix_spawn(pid_t* pid, const char* path, const posix_spawn_file_actions_t* actions,
                const posix_spawnattr_t* attr, char* const argv[], char* const envp[]) {
  return Spawn<SpawnFn>("posix_spawn", pid, path, actions, attr, argv, envp);
}
int posix_spawnp(pid_t* pid, const char* file, const posix_spawn_file_actions_t* actions,
                 const posix_spawnattr_t* attr, char* const argv[], char* const envp[]) {
  return Spawn<SpawnFn>("posix_spawnp", pid, file, actions, attr, argv, envp);
}

}  // extern "C"
#pragma GCC visibility pop
