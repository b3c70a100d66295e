/* Ids the home's where libc does not help, and after execve. The program starts, makes a
 * signalfd and a datagram socket pair whose receiving end has SO_PASSCRED (set by raw
 * system call), and executes itself again, keeping both: the new image must know its
 * inherited signalfd (si_pid of records read from it are home ids) and that its raw
 * recvmsg/sendmsg carry credentials. Then it forks a sender child and starts a thread.
 * Each round checks: the signalfd's senders (itself, a child); SCM_CREDENTIALS received by
 * raw recvmsg and recvmmsg and by libc's recvmsg (translated once), sent by the child with
 * raw sendmsg (implicit, and explicit naming its getpid(), which the kernel must accept)
 * and raw sendmmsg; the entries of /proc/self/task (the program's and its thread's home
 * ids) and of /proc (home ids only, the child and the init among them); and the status
 * of the thread opened as /proc/self/task/<its gettid()>; and a signalfd the child
 * made and sent by SCM_RIGHTS. */
#define _GNU_SOURCE
#include <dirent.h>
#include <fcntl.h>
#include <pthread.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>

#include "ids_common.h"

static int g_signalfd = -1;
static int g_pair[2] = {-1, -1}; /* datagrams: [0] receives with SO_PASSCRED */
static int g_order[2];           /* the program's commands to the sender child */
static pid_t g_child = -1;
static volatile pid_t g_thread_tid = -1;

/* A message of one byte; with explicit credentials naming `pid` when pid > 0. */
struct message {
  char byte;
  struct iovec iov;
  union {
    char buffer[CMSG_SPACE(sizeof(struct ucred))];
    struct cmsghdr align;
  } control;
  struct msghdr msg;
};

static void prepare(struct message* m, long pid, int receiving) {
  memset(m, 0, sizeof(*m));
  m->byte = 'r';
  m->iov.iov_base = &m->byte;
  m->iov.iov_len = 1;
  m->msg.msg_iov = &m->iov;
  m->msg.msg_iovlen = 1;
  if (pid > 0 || receiving) {
    m->msg.msg_control = m->control.buffer;
    m->msg.msg_controllen = sizeof(m->control.buffer);
  }
  if (pid > 0) {
    struct cmsghdr* header = CMSG_FIRSTHDR(&m->msg);
    header->cmsg_level = SOL_SOCKET;
    header->cmsg_type = SCM_CREDENTIALS;
    header->cmsg_len = CMSG_LEN(sizeof(struct ucred));
    struct ucred cred = {(pid_t)pid, getuid(), getgid()};
    memcpy(CMSG_DATA(header), &cred, sizeof(cred));
  }
}

/* The credentials' pid of a received message; 0 when it has none. */
static long credentials_pid(struct msghdr* msg) {
  for (struct cmsghdr* h = CMSG_FIRSTHDR(msg); h != NULL; h = CMSG_NXTHDR(msg, h)) {
    if (h->cmsg_level == SOL_SOCKET && h->cmsg_type == SCM_CREDENTIALS) {
      struct ucred cred;
      memcpy(&cred, CMSG_DATA(h), sizeof(cred));
      return cred.pid;
    }
  }
  return 0;
}

/* Sends a signalfd of its own making (SIGUSR2) to the program, by SCM_RIGHTS. */
static void send_signalfd(void) {
  sigset_t usr2;
  sigemptyset(&usr2);
  sigaddset(&usr2, SIGUSR2);
  int fd = signalfd(-1, &usr2, 0);
  char byte = 's';
  struct iovec iov = {&byte, 1};
  union {
    char buffer[CMSG_SPACE(sizeof(int))];
    struct cmsghdr align;
  } control;
  memset(&control, 0, sizeof(control));
  struct msghdr msg;
  memset(&msg, 0, sizeof(msg));
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = control.buffer;
  msg.msg_controllen = sizeof(control.buffer);
  struct cmsghdr* header = CMSG_FIRSTHDR(&msg);
  header->cmsg_level = SOL_SOCKET;
  header->cmsg_type = SCM_RIGHTS;
  header->cmsg_len = CMSG_LEN(sizeof(int));
  memcpy(CMSG_DATA(header), &fd, sizeof(fd));
  if (fd < 0 || sendmsg(g_pair[1], &msg, 0) != 1) _exit(102);
  close(fd);
}

/* The child: 's' sends a signalfd (send_signalfd), 'i' raw sendmsg without credentials (the kernel
 * attaches them), 'e' raw sendmsg naming its getpid(), 'm' both in one raw sendmmsg; a failure
 * sends byte 'f' with no credentials instead. 'q' quits. */
static void sender(void) {
  for (;;) {
    char command;
    if (read(g_order[0], &command, 1) != 1 || command == 'q') _exit(0);
    if (command == 's') {
      send_signalfd();
      continue;
    }
    struct message m[2];
    prepare(&m[0], command == 'i' ? 0 : getpid(), 0);
    long sent;
    if (command == 'm') {
      prepare(&m[1], 0, 0);
      struct mmsghdr v[2];
      memset(v, 0, sizeof(v));
      v[0].msg_hdr = m[0].msg;
      v[1].msg_hdr = m[1].msg;
      sent = syscall(SYS_sendmmsg, g_pair[1], v, 2, 0) == 2 ? 1 : -1;
    } else {
      sent = syscall(SYS_sendmsg, g_pair[1], &m[0].msg, 0);
    }
    if (sent != 1) {
      char fail = 'f';
      for (int i = 0; i < (command == 'm' ? 2 : 1); ++i) {
        if (send(g_pair[1], &fail, 1, 0) != 1) _exit(101);
      }
    }
  }
}

static void order(char command) {
  if (write(g_order[1], &command, 1) != 1) abort();
}

/* Receives one message with a raw recvmsg (or libc's): its credentials' pid. */
static long receive(int raw) {
  struct message m;
  prepare(&m, 0, 1);
  long n = raw ? syscall(SYS_recvmsg, g_pair[0], &m.msg, 0) : recvmsg(g_pair[0], &m.msg, 0);
  if (n != 1) return -1;
  return m.byte == 'f' ? -2 : credentials_pid(&m.msg);
}

static void check_credentials(void) {
  order('i');
  long pid = receive(1);
  CHECK(pid == g_child, "raw recvmsg, credentials the kernel attached: %ld, sender %ld", pid,
        (long)g_child);
  order('e');
  pid = receive(1);
  CHECK(pid == g_child, "raw sendmsg naming its getpid(), raw recvmsg: %ld, sender %ld", pid,
        (long)g_child);
  order('i');
  pid = receive(0);
  CHECK(pid == g_child, "libc's recvmsg in an armed process: %ld, sender %ld", pid, (long)g_child);
  order('m');
  struct message m[2];
  struct mmsghdr v[2];
  memset(v, 0, sizeof(v));
  for (int i = 0; i < 2; ++i) {
    prepare(&m[i], 0, 1);
    v[i].msg_hdr = m[i].msg;
  }
  long n = syscall(SYS_recvmmsg, g_pair[0], v, 2, 0, NULL);
  long pids[2] = {-1, -1};
  for (int i = 0; i < 2 && n == 2; ++i) {
    pids[i] = m[i].byte == 'f' ? -2 : credentials_pid(&v[i].msg_hdr);
  }
  CHECK(n == 2 && pids[0] == g_child && pids[1] == g_child,
        "raw sendmmsg and recvmmsg: %ld messages, pids %ld and %ld, sender %ld", n, pids[0],
        pids[1], (long)g_child);
}

/* A signal sent to the program by itself and by a short-lived child, read from the
 * signalfd the first image made. */
static void check_signalfd(void) {
  struct signalfd_siginfo record;
  kill(getpid(), SIGUSR2);
  ssize_t n = read(g_signalfd, &record, sizeof(record));
  CHECK(n == (ssize_t)sizeof(record) && record.ssi_pid == (uint32_t)getpid(),
        "inherited signalfd, from itself: %zd bytes, ssi_pid %ld, getpid %ld", n,
        (long)record.ssi_pid, (long)getpid());
  pid_t child = fork();
  if (child == 0) {
    kill(getppid(), SIGUSR2);
    _exit(0);
  }
  n = read(g_signalfd, &record, sizeof(record));
  CHECK(n == (ssize_t)sizeof(record) && record.ssi_pid == (uint32_t)child,
        "inherited signalfd, from child %ld: ssi_pid %ld", (long)child, (long)record.ssi_pid);
  int status;
  CHECK(waitpid(child, &status, 0) == child, "waitpid %ld: %s", (long)child, strerror(errno));
}

/* A signalfd the child made and sent by SCM_RIGHTS, read here: its senders are home ids
 * too. */
static void check_received_signalfd(void) {
  order('s');
  char byte;
  struct iovec iov = {&byte, 1};
  union {
    char buffer[CMSG_SPACE(sizeof(struct ucred)) + CMSG_SPACE(sizeof(int))];
    struct cmsghdr align;
  } control;
  struct msghdr msg;
  memset(&msg, 0, sizeof(msg));
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = control.buffer;
  msg.msg_controllen = sizeof(control.buffer);
  int fd = -1;
  if (recvmsg(g_pair[0], &msg, 0) == 1) {
    for (struct cmsghdr* h = CMSG_FIRSTHDR(&msg); h != NULL; h = CMSG_NXTHDR(&msg, h)) {
      if (h->cmsg_level == SOL_SOCKET && h->cmsg_type == SCM_RIGHTS) {
        memcpy(&fd, CMSG_DATA(h), sizeof(fd));
      }
    }
  }
  CHECK(fd >= 0, "no signalfd received: %s", strerror(errno));
  if (fd < 0) return;
  struct signalfd_siginfo record;
  kill(getpid(), SIGUSR2);
  ssize_t n = read(fd, &record, sizeof(record));
  CHECK(n == (ssize_t)sizeof(record) && record.ssi_pid == (uint32_t)getpid(),
        "signalfd received by SCM_RIGHTS: %zd bytes, ssi_pid %ld, getpid %ld", n,
        (long)record.ssi_pid, (long)getpid());
  close(fd);
}

/* The numeric entries of `path`, each checked to be a home id; whether `want` (up to
 * three ids) are among them. */
static void check_listing(const char* path, const long* want, int wanted) {
  DIR* dir = opendir(path);
  CHECK(dir != NULL, "opendir %s: %s", path, strerror(errno));
  if (dir == NULL) return;
  int found[3] = {0, 0, 0};
  struct dirent* entry;
  while ((entry = readdir(dir)) != NULL) {
    if (entry->d_name[0] < '0' || entry->d_name[0] > '9') continue;
    long id = atol(entry->d_name);
    CHECK(ids_is_home_id(id), "%s lists %s, not a home id", path, entry->d_name);
    for (int i = 0; i < wanted; ++i) found[i] |= id == want[i];
  }
  closedir(dir);
  for (int i = 0; i < wanted; ++i) CHECK(found[i], "%s does not list %ld", path, want[i]);
}

static void check_proc(void) {
  long task[2] = {getpid(), g_thread_tid};
  check_listing("/proc/self/task", task, 2);
  long all[3] = {getpid(), getppid(), g_child};
  check_listing("/proc", all, 3);
  char path[64];
  snprintf(path, sizeof(path), "/proc/self/task/%ld/status", (long)g_thread_tid);
  FILE* status = fopen(path, "r");
  CHECK(status != NULL, "fopen %s: %s", path, strerror(errno));
  if (status == NULL) return;
  char line[256];
  long pid = -1;
  while (fgets(line, sizeof(line), status) != NULL) {
    if (strncmp(line, "Pid:", 4) == 0) pid = atol(line + 4);
  }
  fclose(status);
  CHECK(pid == g_thread_tid, "%s: Pid %ld, the thread's gettid() %ld", path, pid,
        (long)g_thread_tid);
}

static void check(int round) {
  (void)round;
  CHECK(ids_is_job_id(g_child), "the sender child's pid %ld", (long)g_child);
  check_signalfd();
  check_credentials();
  check_received_signalfd();
  check_proc();
}

static void* sleeper(void* arg) {
  (void)arg;
  g_thread_tid = gettid();
  for (;;) pause();
  return NULL;
}

/* The first image: the signalfd and the socket pair, then execve of itself. */
static int first_image(char** argv) {
  sigset_t usr2;
  sigemptyset(&usr2);
  sigaddset(&usr2, SIGUSR2);
  sigprocmask(SIG_BLOCK, &usr2, NULL); /* kept through execve */
  int sfd = signalfd(-1, &usr2, 0);
  int pair[2];
  int on = 1;
  if (sfd < 0 || socketpair(AF_UNIX, SOCK_DGRAM, 0, pair) != 0 ||
      syscall(SYS_setsockopt, pair[0], SOL_SOCKET, SO_PASSCRED, &on, sizeof(on)) != 0) {
    printf("FAIL setting up: %s\n", strerror(errno));
    return 1;
  }
  char numbers[3][16];
  snprintf(numbers[0], sizeof(numbers[0]), "%d", sfd);
  snprintf(numbers[1], sizeof(numbers[1]), "%d", pair[0]);
  snprintf(numbers[2], sizeof(numbers[2]), "%d", pair[1]);
  char* next[] = {
      argv[0], argv[1] != NULL ? argv[1] : "1", "exec", numbers[0], numbers[1], numbers[2], NULL};
  execv("/proc/self/exe", next);
  printf("FAIL execv: %s\n", strerror(errno));
  return 1;
}

int main(int argc, char** argv) {
  if (argc < 6 || strcmp(argv[2], "exec") != 0) return first_image(argv);
  g_signalfd = atoi(argv[3]);
  g_pair[0] = atoi(argv[4]);
  g_pair[1] = atoi(argv[5]);
  ids_init();
  if (pipe(g_order) != 0) abort();
  g_child = fork();
  if (g_child == 0) {
    close(g_order[1]);
    sender();
  }
  close(g_order[0]);
  pthread_t thread;
  if (pthread_create(&thread, NULL, sleeper, NULL) != 0) abort();
  while (g_thread_tid == -1) sched_yield();
  int result = ids_run(argc, argv, check);
  order('q');
  waitpid(g_child, NULL, 0);
  return result;
}
