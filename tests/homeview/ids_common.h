/* What the home-id checks share. Each program is run as a job with `mosrun`: it sets up
 * what must cross migrations (children, descriptors, handlers), prints "ready <pid>", and
 * then, each time it is sent SIGUSR1 (at home, to the job's home pid, as a user would),
 * checks that every id it sees is one of the home's, prints "check <n> ok" or a "FAIL"
 * line per failed check, and after the last round (argv[1], 1 by default) exits 0 when
 * every check passed, 1 otherwise.
 *
 * The home's ids of a job (preload/pid_map.h): the program is HOMEWARD_HOME_PID (its
 * mosrun at home), the job's init HOMEWARD_HOME_PPID, and every other process of the job
 * HOMEWARD_PID_BASE + its pid in the job's namespace: never a small namespace pid. */
#ifndef HOMEWARD_TESTS_IDS_COMMON_H
#define HOMEWARD_TESTS_IDS_COMMON_H

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <unistd.h>

#define IDS_SPAN 4194304L

static long ids_home_pid, ids_home_ppid, ids_base;
static int ids_failures;
static volatile sig_atomic_t ids_go;
static volatile sig_atomic_t ids_go_pid = -1;
static volatile sig_atomic_t ids_go_code;

#define CHECK(cond, ...)                                     \
  do {                                                       \
    if (!(cond)) {                                           \
      ++ids_failures;                                        \
      printf("FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond); \
      printf(__VA_ARGS__);                                   \
      printf("\n");                                          \
      fflush(stdout);                                        \
    }                                                        \
  } while (0)

static long ids_env(const char* name) {
  const char* value = getenv(name);
  if (value == NULL) {
    printf("FAIL %s is not set: not run as a job\n", name);
    exit(2);
  }
  return atol(value);
}

/* A process of the job other than the program and its init, as the home knows it. */
static int ids_is_job_id(long id) {
  return id > ids_base && id < ids_base + IDS_SPAN;
}

/* Any of the job's home ids. */
static int ids_is_home_id(long id) {
  return id == ids_home_pid || id == ids_home_ppid || ids_is_job_id(id);
}

static void ids_on_go(int sig, siginfo_t* info, void* context) {
  (void)sig;
  (void)context;
  ids_go_pid = info->si_pid;
  ids_go_code = info->si_code;
  ids_go = 1;
}

/* Reads the job's ids and puts in the SIGUSR1 handler (a siginfo one: it records who sent
 * the go, which ids_siginfo checks). */
static void ids_init(void) {
  ids_home_pid = ids_env("HOMEWARD_HOME_PID");
  ids_home_ppid = ids_env("HOMEWARD_HOME_PPID");
  ids_base = ids_env("HOMEWARD_PID_BASE");
  setvbuf(stdout, NULL, _IOLBF, 0);
  struct sigaction act;
  memset(&act, 0, sizeof(act));
  act.sa_sigaction = ids_on_go;
  act.sa_flags = SA_SIGINFO | SA_RESTART;
  sigaction(SIGUSR1, &act, NULL);
  sigset_t usr1;
  sigemptyset(&usr1);
  sigaddset(&usr1, SIGUSR1);
  sigprocmask(SIG_BLOCK, &usr1, NULL);
}

/* Says it is ready (once) and waits for the next SIGUSR1. */
static void ids_wait_for_go(int round) {
  if (round == 1) printf("ready %ld\n", (long)getpid());
  sigset_t open;
  sigprocmask(SIG_SETMASK, NULL, &open);
  sigdelset(&open, SIGUSR1);
  while (!ids_go) sigsuspend(&open);
  ids_go = 0;
}

/* Runs `check` once per round, each after a go; exits with the verdict. */
static int ids_run(int argc, char** argv, void (*check)(int round)) {
  int rounds = argc > 1 ? atoi(argv[1]) : 1;
  for (int round = 1; round <= rounds; ++round) {
    ids_wait_for_go(round);
    int before = ids_failures;
    check(round);
    printf("check %d %s\n", round, ids_failures == before ? "ok" : "failed");
  }
  return ids_failures == 0 ? 0 : 1;
}

/* Reads exactly `size` bytes (a child's report on a pipe). */
static int ids_read_all(int fd, void* buffer, size_t size) {
  char* at = buffer;
  while (size > 0) {
    ssize_t n = read(fd, at, size);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return -1;
    at += n;
    size -= (size_t)n;
  }
  return 0;
}

#endif
