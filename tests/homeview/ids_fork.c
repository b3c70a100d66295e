/* Process creation and reaping give home ids: fork right after each call the shim wraps
 * (the shim's marker must not be left in a register for fork's clone to slip past the
 * filter with), vfork, raw clone and clone3, posix_spawn; and wait, waitpid and waitid
 * return the same ids. Children made before the moves are reaped after them. */
#define _GNU_SOURCE
#include <linux/sched.h>
#include <sched.h>
#include <spawn.h>
#include <stdint.h>
#include <sys/syscall.h>
#include <sys/utsname.h>
#include <sys/wait.h>

#include "ids_common.h"

extern char** environ;

/* The shim's marker (preload/raw_syscall.h). */
#define MARKER 0x6d6f73697848776dULL

/* r9 as the last call left it. */
static inline uint64_t r9_now(void) {
  uint64_t value;
  __asm__ volatile("mov %%r9, %0" : "=r"(value));
  return value;
}

/* A child that reports its own ids on `report` and exits with `code` once `release` has
 * something (or at once when it is -1). */
struct child {
  pid_t pid;
  int report;
  int release;
  const char* how;
};

static void child_body(int report, int release, int code) {
  long ids[2] = {(long)getpid(), (long)getppid()};
  if (write(report, ids, sizeof(ids)) != (ssize_t)sizeof(ids)) _exit(100);
  char byte;
  if (release >= 0 && read(release, &byte, 1) != 1) _exit(101);
  _exit(code);
}

/* Checks what the child reported against what its parent was told. */
static void check_child(const struct child* c) {
  long ids[2];
  CHECK(ids_read_all(c->report, ids, sizeof(ids)) == 0, "%s: no report", c->how);
  CHECK(ids_is_job_id(c->pid), "%s returned %ld, not a home id of the job", c->how, (long)c->pid);
  CHECK(ids[0] == c->pid, "%s: the child's getpid %ld, its parent was told %ld", c->how, ids[0],
        (long)c->pid);
  CHECK(ids[1] == getpid(), "%s: the child's getppid %ld, its parent is %ld", c->how, ids[1],
        (long)getpid());
}

typedef pid_t (*maker)(void);

static pid_t by_fork(void) {
  return fork();
}
static pid_t by_vfork_wrapper(void) {
  return vfork();
}
static pid_t by_raw_vfork(void) {
  return (pid_t)syscall(SYS_vfork);
}
static pid_t by_raw_fork(void) {
  return (pid_t)syscall(SYS_fork);
}
static pid_t by_raw_clone(void) {
  return (pid_t)syscall(SYS_clone, SIGCHLD, 0, 0, 0, 0);
}
static pid_t by_raw_clone3(void) {
  struct clone_args args;
  memset(&args, 0, sizeof(args));
  args.exit_signal = SIGCHLD;
  return (pid_t)syscall(SYS_clone3, &args, sizeof(args));
}

/* Makes a child with `make`; a vfork child reports and exits at once. */
static struct child start(maker make, const char* how, int code, int wait_release) {
  int report[2], release[2];
  if (pipe(report) != 0 || pipe(release) != 0) abort();
  struct child c = {0, report[0], release[1], how};
  pid_t pid = make();
  if (pid == 0) child_body(report[1], wait_release ? release[0] : -1, code);
  CHECK(pid > 0, "%s failed: %s", how, strerror(errno));
  c.pid = pid;
  close(report[1]);
  close(release[0]);
  return c;
}

static void release(struct child* c) {
  if (write(c->release, "x", 1) != 1) abort();
}

static void check_status(const struct child* c, int status, int code) {
  CHECK(WIFEXITED(status) && WEXITSTATUS(status) == code, "%s: status %#x, want exit %d", c->how,
        status, code);
}

/* Each call the shim wraps, then a fork at once: no register may still hold the marker. */
static struct child g_after[8];
static int g_after_count;

#define FORK_AFTER(call)                                                                 \
  do {                                                                                   \
    call;                                                                                \
    uint64_t r9 = r9_now();                                                              \
    CHECK(r9 != MARKER, "the shim's marker is left in r9 after %s", #call);              \
    g_after[g_after_count] = start(by_fork, "fork after " #call, 10 + g_after_count, 1); \
    ++g_after_count;                                                                     \
  } while (0)

static void forks_after_wrapped_calls(void) {
  struct utsname name;
  g_after_count = 0;
  FORK_AFTER(setsid());
  FORK_AFTER(getpid());
  FORK_AFTER(getppid());
  FORK_AFTER(getpgrp());
  FORK_AFTER(getsid(0));
  FORK_AFTER(kill(getpid(), 0));
  FORK_AFTER(uname(&name));
  FORK_AFTER(gettid());
}

/* Reaps the children of forks_after_wrapped_calls, each in its own way. */
static void reap_after(void) {
  for (int i = 0; i < g_after_count; ++i) {
    struct child* c = &g_after[i];
    check_child(c);
    release(c);
    int status = 0;
    if (i % 3 == 0) {
      pid_t got = wait(&status);
      CHECK(got == c->pid, "wait after %s returned %ld, fork %ld", c->how, (long)got, (long)c->pid);
    } else if (i % 3 == 1) {
      pid_t got = waitpid(c->pid, &status, 0);
      CHECK(got == c->pid, "waitpid after %s returned %ld, fork %ld", c->how, (long)got,
            (long)c->pid);
    } else {
      siginfo_t info;
      memset(&info, 0, sizeof(info));
      int rc = waitid(P_PID, (id_t)c->pid, &info, WEXITED);
      CHECK(rc == 0 && info.si_pid == c->pid, "waitid after %s: %d, si_pid %ld, fork %ld", c->how,
            rc, (long)info.si_pid, (long)c->pid);
      status = (info.si_status & 0xff) << 8;
    }
    check_status(c, status, 10 + i);
    close(c->report);
    close(c->release);
  }
}

static void creation_calls(void) {
  struct {
    maker make;
    const char* how;
  } makers[] = {
      {by_fork, "fork"},         {by_vfork_wrapper, "vfork"}, {by_raw_vfork, "raw vfork"},
      {by_raw_fork, "raw fork"}, {by_raw_clone, "raw clone"}, {by_raw_clone3, "raw clone3"},
  };
  for (size_t i = 0; i < sizeof(makers) / sizeof(makers[0]); ++i) {
    struct child c = start(makers[i].make, makers[i].how, 30 + (int)i, 0);
    check_child(&c);
    siginfo_t info;
    memset(&info, 0, sizeof(info));
    int rc = waitid(P_ALL, 0, &info, WEXITED);
    CHECK(rc == 0 && info.si_pid == c.pid && info.si_status == 30 + (int)i,
          "waitid(P_ALL) after %s: %d, si_pid %ld status %d, child %ld", c.how, rc,
          (long)info.si_pid, info.si_status, (long)c.pid);
    close(c.report);
    close(c.release);
  }
  /* A thread-like clone3 (its own stack, shared memory) is refused, so that libc falls back
   * to clone, whose flags the filter can read. */
  struct clone_args thread;
  memset(&thread, 0, sizeof(thread));
  static char stack[16384];
  thread.flags = CLONE_VM;
  thread.stack = (uint64_t)(uintptr_t)stack;
  thread.stack_size = sizeof(stack);
  long rc = syscall(SYS_clone3, &thread, sizeof(thread));
  CHECK(rc == -1 && errno == ENOSYS, "a thread's clone3 returned %ld (errno %d)", rc, errno);
}

/* posix_spawn (a clone sharing memory, or vfork) gives the child's home id, the one the
 * child sees as its own ($$ in the shell) and waitpid returns. */
static void spawn(void) {
  char path[] = "ids_fork_spawn_XXXXXX";
  int fd = mkstemp(path);
  CHECK(fd >= 0, "mkstemp: %s", strerror(errno));
  if (fd < 0) return;
  char script[256];
  snprintf(script, sizeof(script), "echo $$ $PPID > %s", path);
  char* argv[] = {"sh", "-c", script, NULL};
  pid_t pid = 0;
  int err = posix_spawn(&pid, "/bin/sh", NULL, NULL, argv, environ);
  CHECK(err == 0, "posix_spawn: %s", strerror(err));
  CHECK(ids_is_job_id(pid), "posix_spawn gave %ld, not a home id of the job", (long)pid);
  int status;
  pid_t got = waitpid(pid, &status, 0);
  CHECK(got == pid, "waitpid after posix_spawn returned %ld, spawned %ld", (long)got, (long)pid);
  long self = 0, parent = 0;
  FILE* f = fdopen(fd, "r");
  CHECK(f != NULL && fscanf(f, "%ld %ld", &self, &parent) == 2, "the spawned shell said nothing");
  CHECK(self == pid && parent == getpid(),
        "the spawned shell: $$ %ld $PPID %ld, spawned %ld by %ld", self, parent, (long)pid,
        (long)getpid());
  if (f != NULL) fclose(f);
  unlink(path);
}

static void check(int round) {
  CHECK(getpid() == ids_home_pid, "getpid %ld, home pid %ld", (long)getpid(), ids_home_pid);
  if (round == 1) {
    /* The children forked before the moves. */
    reap_after();
  } else {
    forks_after_wrapped_calls();
    reap_after();
  }
  creation_calls();
  spawn();
}

int main(int argc, char** argv) {
  ids_init();
  forks_after_wrapped_calls();
  return ids_run(argc, argv, check);
}
