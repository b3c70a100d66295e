/* A signal's sender is a home id wherever the program reads it: si_pid in a SA_SIGINFO
 * handler (kill, sigqueue, SIGCHLD), in signalfd records, in sigwaitinfo, sigtimedwait
 * and waitid results (a signalfd read with read, readv or preadv2, through copies made with
 * dup, dup2, dup3 and fcntl's F_DUPFD and F_DUPFD_CLOEXEC). The go signal, sent at home to the job's home pid, is delivered by
 * the job's init: its sender is the init's home id, the program's getppid(). A handler and
 * a signalfd set up before the moves still translate after them. pthread_cancel, whose
 * handler checks si_pid against getpid(), works. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <pthread.h>
#include <sys/signalfd.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <time.h>

#include "ids_common.h"

static volatile sig_atomic_t g_usr2_pid = -1, g_usr2_code, g_usr2_count;
static volatile sig_atomic_t g_chld_pid = -1, g_chld_count;
static volatile sig_atomic_t g_rt_pid = -1, g_rt_value, g_rt_count;
/* The signalfd and its copies, each read in every round, in its own way. */
enum { SFD_READ, SFD_READV, SFD_PREADV2 };
static struct {
  const char* how;
  int fd;
  int read_with;
} g_signalfds[] = {{"signalfd", -1, SFD_READ},       {"dup", -1, SFD_READ},
                   {"dup2", -1, SFD_READV},          {"dup3", -1, SFD_PREADV2},
                   {"F_DUPFD", -1, SFD_READ},        {"F_DUPFD_CLOEXEC", -1, SFD_READV}};
#define SIGNALFDS (int)(sizeof(g_signalfds) / sizeof(g_signalfds[0]))

static void on_usr2(int sig, siginfo_t* info, void* context) {
  (void)sig;
  (void)context;
  g_usr2_pid = info->si_pid;
  g_usr2_code = info->si_code;
  ++g_usr2_count;
}

static void on_chld(int sig, siginfo_t* info, void* context) {
  (void)sig;
  (void)context;
  g_chld_pid = info->si_pid;
  ++g_chld_count;
}

static void on_rt(int sig, siginfo_t* info, void* context) {
  (void)sig;
  (void)context;
  g_rt_pid = info->si_pid;
  g_rt_value = info->si_value.sival_int;
  ++g_rt_count;
}

static void* sleeper(void* arg) {
  (void)arg;
  for (;;) pause();
  return NULL;
}

static void handle(int sig, void (*fn)(int, siginfo_t*, void*)) {
  struct sigaction act;
  memset(&act, 0, sizeof(act));
  act.sa_sigaction = fn;
  act.sa_flags = SA_SIGINFO | SA_RESTART;
  sigaction(sig, &act, NULL);
}

/* A child that sends `sig` to its parent `how`, once released, then exits. */
enum how { BY_KILL, BY_QUEUE };

static pid_t sender(int sig, enum how how, int value) {
  int go[2];
  if (pipe(go) != 0) abort();
  pid_t pid = fork();
  if (pid == 0) {
    close(go[1]);
    char byte;
    if (read(go[0], &byte, 1) != 1) _exit(100);
    if (how == BY_KILL) {
      kill(getppid(), sig);
    } else {
      union sigval v = {.sival_int = value};
      sigqueue(getppid(), sig, v);
    }
    _exit(0);
  }
  close(go[0]);
  if (write(go[1], "x", 1) != 1) abort();
  close(go[1]);
  return pid;
}

static void reap(pid_t pid) {
  siginfo_t info;
  memset(&info, 0, sizeof(info));
  int rc = waitid(P_PID, (id_t)pid, &info, WEXITED);
  CHECK(rc == 0 && info.si_pid == pid, "waitid: %d, si_pid %ld, child %ld", rc, (long)info.si_pid,
        (long)pid);
}

/* Waits until `count` reaches `want`, taking signals as they come. */
static void await(volatile sig_atomic_t* count, int want, sigset_t* open) {
  while (*count < want) sigsuspend(open);
}

static void check(int round) {
  (void)round;
  CHECK(ids_go_code == SI_USER, "the go signal's si_code %d", (int)ids_go_code);
  /* Sent from outside the job (the shim's daemon-free test): a pid namespace shows 0. */
  long go_sender = getenv("IDS_GO_FROM_OUTSIDE") != NULL ? 0 : (long)getppid();
  CHECK(ids_go_pid == go_sender,
        "the go signal (sent at home, delivered by the job's init) came from %ld, want %ld",
        (long)ids_go_pid, go_sender);

  /* The program's own handlers are reported back, not the shim's trampoline. */
  struct sigaction old;
  sigaction(SIGUSR2, NULL, &old);
  CHECK(old.sa_sigaction == on_usr2 && (old.sa_flags & SA_SIGINFO), "SIGUSR2's handler %p",
        (void*)old.sa_sigaction);

  sigset_t all, open;
  sigemptyset(&all);
  sigaddset(&all, SIGUSR2);
  sigaddset(&all, SIGCHLD);
  sigaddset(&all, SIGRTMIN);
  sigprocmask(SIG_BLOCK, &all, &open);
  sigdelset(&open, SIGUSR2);
  sigdelset(&open, SIGCHLD);
  sigdelset(&open, SIGRTMIN);

  /* To itself. */
  int before = g_usr2_count;
  kill(getpid(), SIGUSR2);
  await(&g_usr2_count, before + 1, &open);
  CHECK(g_usr2_pid == getpid(), "kill to itself: si_pid %ld, getpid %ld", (long)g_usr2_pid,
        (long)getpid());

  /* From a child: kill, then sigqueue; and the child's SIGCHLD. */
  before = g_usr2_count;
  int chld_before = g_chld_count;
  pid_t child = sender(SIGUSR2, BY_KILL, 0);
  await(&g_usr2_count, before + 1, &open);
  CHECK(g_usr2_pid == child && g_usr2_code == SI_USER, "kill from child %ld: si_pid %ld code %d",
        (long)child, (long)g_usr2_pid, (int)g_usr2_code);
  await(&g_chld_count, chld_before + 1, &open);
  CHECK(g_chld_pid == child, "SIGCHLD of child %ld: si_pid %ld", (long)child, (long)g_chld_pid);
  reap(child);

  before = g_rt_count;
  child = sender(SIGRTMIN, BY_QUEUE, 4242);
  await(&g_rt_count, before + 1, &open);
  CHECK(g_rt_pid == child && g_rt_value == 4242, "sigqueue from child %ld: si_pid %ld value %d",
        (long)child, (long)g_rt_pid, (int)g_rt_value);
  reap(child);
  sigprocmask(SIG_UNBLOCK, &all, NULL);

  /* signalfd and its copies, made before the moves: SIGURG stays blocked for them. */
  for (int i = 0; i < SIGNALFDS; ++i) {
    child = sender(SIGURG, BY_KILL, 0);
    struct signalfd_siginfo record;
    memset(&record, 0, sizeof(record));
    ssize_t n;
    if (g_signalfds[i].read_with == SFD_READ) {
      n = read(g_signalfds[i].fd, &record, sizeof(record));
    } else {
      /* Split inside ssi_pid (bytes 12 to 15), so that the record is whole in neither. */
      struct iovec parts[2] = {{&record, 14}, {(char*)&record + 14, sizeof(record) - 14}};
      n = g_signalfds[i].read_with == SFD_READV ? readv(g_signalfds[i].fd, parts, 2)
                                                  : preadv2(g_signalfds[i].fd, parts, 2, -1, 0);
    }
    CHECK(n == (ssize_t)sizeof(record) && record.ssi_signo == SIGURG &&
              (pid_t)record.ssi_pid == child,
          "signalfd (%s) read %ld: signal %u from %u, child %ld", g_signalfds[i].how, (long)n,
          record.ssi_signo, record.ssi_pid, (long)child);
    reap(child);
  }

  /* A closed copy's number, reused by a pipe, reads as it is: a pid-like record stays. */
  int reused = dup(g_signalfds[0].fd);
  close(reused);
  int fds[2];
  CHECK(pipe(fds) == 0, "pipe: %s", strerror(errno));
  if (fds[0] != reused) CHECK(dup2(fds[0], reused) == reused, "dup2 of a pipe onto %d", reused);
  struct signalfd_siginfo fake;
  memset(&fake, 0, sizeof(fake));
  fake.ssi_signo = SIGURG;
  fake.ssi_code = SI_USER;
  fake.ssi_pid = 3;
  CHECK(write(fds[1], &fake, sizeof(fake)) == (ssize_t)sizeof(fake), "write to the pipe");
  struct signalfd_siginfo got;
  memset(&got, 0, sizeof(got));
  CHECK(read(reused, &got, sizeof(got)) == (ssize_t)sizeof(got) && got.ssi_pid == 3,
        "a pipe at a signalfd copy's number: pid %u read back, 3 written", got.ssi_pid);
  if (fds[0] != reused) close(reused);
  close(fds[0]);
  close(fds[1]);

  /* sigwaitinfo and sigtimedwait (SIGWINCH and SIGPWR blocked since the start). */
  child = sender(SIGWINCH, BY_KILL, 0);
  sigset_t wanted;
  sigemptyset(&wanted);
  sigaddset(&wanted, SIGWINCH);
  siginfo_t info;
  memset(&info, 0, sizeof(info));
  int sig = sigwaitinfo(&wanted, &info);
  CHECK(sig == SIGWINCH && info.si_pid == child, "sigwaitinfo: %d from %ld, child %ld", sig,
        (long)info.si_pid, (long)child);
  reap(child);

  child = sender(SIGPWR, BY_QUEUE, 7);
  sigemptyset(&wanted);
  sigaddset(&wanted, SIGPWR);
  struct timespec timeout = {30, 0};
  memset(&info, 0, sizeof(info));
  sig = sigtimedwait(&wanted, &info, &timeout);
  CHECK(sig == SIGPWR && info.si_pid == child && info.si_code == SI_QUEUE,
        "sigtimedwait: %d from %ld code %d, child %ld", sig, (long)info.si_pid, info.si_code,
        (long)child);
  reap(child);

  /* glibc's pthread_cancel: its SIGCANCEL handler acts only on a signal whose si_pid is
   * getpid(), so it works only if the two agree. */
  pthread_t thread;
  void* result = NULL;
  CHECK(pthread_create(&thread, NULL, sleeper, NULL) == 0, "pthread_create");
  pthread_cancel(thread);
  struct timespec until;
  clock_gettime(CLOCK_REALTIME, &until);
  until.tv_sec += 30;
  int joined = pthread_timedjoin_np(thread, &result, &until);
  CHECK(joined == 0 && result == PTHREAD_CANCELED, "a cancelled thread: join %d", joined);
}

int main(int argc, char** argv) {
  ids_init();
  handle(SIGUSR2, on_usr2);
  handle(SIGCHLD, on_chld);
  handle(SIGRTMIN, on_rt);
  sigset_t blocked;
  sigemptyset(&blocked);
  sigaddset(&blocked, SIGURG);
  sigaddset(&blocked, SIGWINCH);
  sigaddset(&blocked, SIGPWR);
  sigprocmask(SIG_BLOCK, &blocked, NULL);
  sigset_t urg;
  sigemptyset(&urg);
  sigaddset(&urg, SIGURG);
  int sfd = signalfd(-1, &urg, SFD_CLOEXEC);
  if (sfd < 0) {
    printf("FAIL signalfd: %s\n", strerror(errno));
    return 2;
  }
  g_signalfds[0].fd = sfd;
  g_signalfds[1].fd = dup(sfd);
  g_signalfds[2].fd = dup2(sfd, 40);
  g_signalfds[3].fd = dup3(sfd, 41, O_CLOEXEC);
  g_signalfds[4].fd = fcntl(sfd, F_DUPFD, 50);
  g_signalfds[5].fd = fcntl(sfd, F_DUPFD_CLOEXEC, 60);
  for (int i = 0; i < SIGNALFDS; ++i) {
    if (g_signalfds[i].fd < 0) {
      printf("FAIL signalfd copy by %s: %s\n", g_signalfds[i].how, strerror(errno));
      return 2;
    }
  }
  return ids_run(argc, argv, check);
}
