/* Unix socket credentials within the job name processes by their home ids: SO_PEERCRED of
 * a connected peer, SCM_CREDENTIALS the kernel attaches (SO_PASSCRED) and those a sender
 * gives itself with its getpid(), which the kernel must accept as its own; with sendmsg
 * and recvmsg, and several at once with sendmmsg and recvmmsg. The sender is a
 * child forked before the moves, on a socket pair made then. */
#define _GNU_SOURCE
#include <stddef.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>

#include "ids_common.h"

static pid_t g_child = -1;
static int g_pair[2];  /* datagrams: credentials */
static int g_order[2]; /* the parent's commands to the child */

/* Sends one byte on `fd`, with explicit credentials naming the sender when `explicit`. */
static int send_byte(int fd, int explicit) {
  char byte = 'c';
  struct iovec iov = {&byte, 1};
  union {
    char buffer[CMSG_SPACE(sizeof(struct ucred))];
    struct cmsghdr align;
  } control;
  memset(&control, 0, sizeof(control));
  struct msghdr msg;
  memset(&msg, 0, sizeof(msg));
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  if (explicit) {
    msg.msg_control = control.buffer;
    msg.msg_controllen = sizeof(control.buffer);
    struct cmsghdr* header = CMSG_FIRSTHDR(&msg);
    header->cmsg_level = SOL_SOCKET;
    header->cmsg_type = SCM_CREDENTIALS;
    header->cmsg_len = CMSG_LEN(sizeof(struct ucred));
    struct ucred cred = {getpid(), getuid(), getgid()};
    memcpy(CMSG_DATA(header), &cred, sizeof(cred));
  }
  return sendmsg(fd, &msg, 0) == 1 ? 0 : -1;
}

/* Sends two one-byte messages in one sendmmsg: the first with explicit credentials naming
 * the sender, the second with none (the kernel attaches them). */
static int send_two(int fd) {
  char bytes[2] = {'m', 'n'};
  struct iovec iov[2] = {{&bytes[0], 1}, {&bytes[1], 1}};
  union {
    char buffer[CMSG_SPACE(sizeof(struct ucred))];
    struct cmsghdr align;
  } control;
  memset(&control, 0, sizeof(control));
  struct mmsghdr messages[2];
  memset(messages, 0, sizeof(messages));
  for (int i = 0; i < 2; ++i) {
    messages[i].msg_hdr.msg_iov = &iov[i];
    messages[i].msg_hdr.msg_iovlen = 1;
  }
  messages[0].msg_hdr.msg_control = control.buffer;
  messages[0].msg_hdr.msg_controllen = sizeof(control.buffer);
  struct cmsghdr* header = CMSG_FIRSTHDR(&messages[0].msg_hdr);
  header->cmsg_level = SOL_SOCKET;
  header->cmsg_type = SCM_CREDENTIALS;
  header->cmsg_len = CMSG_LEN(sizeof(struct ucred));
  struct ucred cred = {getpid(), getuid(), getgid()};
  memcpy(CMSG_DATA(header), &cred, sizeof(cred));
  if (sendmmsg(fd, messages, 2, 0) != 2) return -1;
  /* The program's own control message is left as it gave it. */
  memcpy(&cred, CMSG_DATA(header), sizeof(cred));
  return cred.pid == getpid() ? 0 : -2;
}

/* Receives two messages with one recvmmsg; their credentials' pids into `pids`. */
static int receive_two(int fd, long pids[2]) {
  char bytes[2];
  struct iovec iov[2] = {{&bytes[0], 1}, {&bytes[1], 1}};
  union {
    char buffer[CMSG_SPACE(sizeof(struct ucred))];
    struct cmsghdr align;
  } control[2];
  struct mmsghdr messages[2];
  memset(messages, 0, sizeof(messages));
  for (int i = 0; i < 2; ++i) {
    messages[i].msg_hdr.msg_iov = &iov[i];
    messages[i].msg_hdr.msg_iovlen = 1;
    messages[i].msg_hdr.msg_control = control[i].buffer;
    messages[i].msg_hdr.msg_controllen = sizeof(control[i].buffer);
  }
  if (recvmmsg(fd, messages, 2, 0, NULL) != 2) return -1;
  for (int i = 0; i < 2; ++i) {
    pids[i] = 0;
    struct msghdr* msg = &messages[i].msg_hdr;
    for (struct cmsghdr* h = CMSG_FIRSTHDR(msg); h != NULL; h = CMSG_NXTHDR(msg, h)) {
      if (h->cmsg_level == SOL_SOCKET && h->cmsg_type == SCM_CREDENTIALS) {
        struct ucred cred;
        memcpy(&cred, CMSG_DATA(h), sizeof(cred));
        pids[i] = cred.pid;
      }
    }
  }
  return 0;
}

/* Receives one byte on `fd` with its credentials' pid (0 when it came with none). */
static long receive_pid(int fd) {
  char byte;
  struct iovec iov = {&byte, 1};
  union {
    char buffer[CMSG_SPACE(sizeof(struct ucred))];
    struct cmsghdr align;
  } control;
  struct msghdr msg;
  memset(&msg, 0, sizeof(msg));
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = control.buffer;
  msg.msg_controllen = sizeof(control.buffer);
  if (recvmsg(fd, &msg, 0) != 1) return -1;
  for (struct cmsghdr* h = CMSG_FIRSTHDR(&msg); h != NULL; h = CMSG_NXTHDR(&msg, h)) {
    if (h->cmsg_level == SOL_SOCKET && h->cmsg_type == SCM_CREDENTIALS) {
      struct ucred cred;
      memcpy(&cred, CMSG_DATA(h), sizeof(cred));
      return cred.pid;
    }
  }
  return 0;
}

/* The child: 'i' sends implicit credentials, 'e' explicit ones, 'm' both with sendmmsg
 * (or two bytes 'f' when it fails), 'c' connects to the
 * listening socket named by the parent and reports its peer's pid, 'q' quits. */
static void child(void) {
  for (;;) {
    char command;
    if (read(g_order[0], &command, 1) != 1) _exit(100);
    if (command == 'i' || command == 'e') {
      if (send_byte(g_pair[1], command == 'e') != 0) {
        char fail = 'f';
        if (send(g_pair[1], &fail, 1, 0) != 1) _exit(101);
      }
    } else if (command == 'm') {
      if (send_two(g_pair[1]) == -1) {
        char fail = 'f';
        if (send(g_pair[1], &fail, 1, 0) != 1 || send(g_pair[1], &fail, 1, 0) != 1) _exit(101);
      }
    } else if (command == 'c') {
      struct sockaddr_un address;
      memset(&address, 0, sizeof(address));
      address.sun_family = AF_UNIX;
      snprintf(address.sun_path + 1, sizeof(address.sun_path) - 1, "homeward-ids-%ld",
               (long)getppid());
      int fd = socket(AF_UNIX, SOCK_STREAM, 0);
      socklen_t length =
          (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + strlen(address.sun_path + 1));
      long peer = -1;
      if (fd >= 0 && connect(fd, (struct sockaddr*)&address, length) == 0) {
        struct ucred cred;
        socklen_t size = sizeof(cred);
        if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &size) == 0) peer = cred.pid;
      }
      if (send(g_pair[1], &peer, sizeof(peer), 0) != (ssize_t)sizeof(peer)) _exit(102);
      char byte;
      if (fd >= 0 && read(fd, &byte, 1) < 0) _exit(103); /* until the parent closes */
      if (fd >= 0) close(fd);
    } else {
      _exit(0);
    }
  }
}

static void order(char command) {
  if (write(g_order[1], &command, 1) != 1) abort();
}

static void check(int round) {
  (void)round;
  CHECK(ids_is_job_id(g_child), "the child's pid %ld", (long)g_child);
  int on = 1;
  CHECK(setsockopt(g_pair[0], SOL_SOCKET, SO_PASSCRED, &on, sizeof(on)) == 0, "SO_PASSCRED: %s",
        strerror(errno));
  order('i');
  long pid = receive_pid(g_pair[0]);
  CHECK(pid == g_child, "SCM_CREDENTIALS the kernel attached: pid %ld, the sender is %ld", pid,
        (long)g_child);
  order('e');
  pid = receive_pid(g_pair[0]);
  CHECK(pid == g_child, "SCM_CREDENTIALS the sender gave (its getpid): pid %ld, sender %ld", pid,
        (long)g_child);

  order('m');
  long pids[2] = {-1, -1};
  CHECK(receive_two(g_pair[0], pids) == 0 && pids[0] == g_child && pids[1] == g_child,
        "SCM_CREDENTIALS by sendmmsg and recvmmsg: pids %ld (given) and %ld (attached), sender "
        "%ld",
        pids[0], pids[1], (long)g_child);
  /* The same within one process, on a pair of its own. */
  int own[2];
  CHECK(socketpair(AF_UNIX, SOCK_DGRAM, 0, own) == 0 &&
            setsockopt(own[0], SOL_SOCKET, SO_PASSCRED, &on, sizeof(on)) == 0,
        "a datagram pair: %s", strerror(errno));
  int sent = send_two(own[1]);
  CHECK(sent == 0, "sendmmsg with its getpid as credentials: %s",
        sent == -1 ? strerror(errno) : "its control message was changed");
  pids[0] = pids[1] = -1;
  CHECK(sent != 0 || (receive_two(own[0], pids) == 0 && pids[0] == getpid() && pids[1] == getpid()),
        "recvmmsg of its own: pids %ld and %ld, getpid %ld", pids[0], pids[1], (long)getpid());
  close(own[0]);
  close(own[1]);

  /* A stream connection: each side's SO_PEERCRED names the other. */
  struct sockaddr_un address;
  memset(&address, 0, sizeof(address));
  address.sun_family = AF_UNIX;
  snprintf(address.sun_path + 1, sizeof(address.sun_path) - 1, "homeward-ids-%ld", (long)getpid());
  socklen_t length =
      (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + strlen(address.sun_path + 1));
  int listener = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  CHECK(listener >= 0 && bind(listener, (struct sockaddr*)&address, length) == 0 &&
            listen(listener, 1) == 0,
        "listen: %s", strerror(errno));
  order('c');
  int conn = accept(listener, NULL, NULL);
  CHECK(conn >= 0, "accept: %s", strerror(errno));
  struct ucred cred = {0, 0, 0};
  socklen_t size = sizeof(cred);
  CHECK(getsockopt(conn, SOL_SOCKET, SO_PEERCRED, &cred, &size) == 0 && cred.pid == g_child,
        "SO_PEERCRED of the child's connection: %ld, child %ld", (long)cred.pid, (long)g_child);
  long peer = 0;
  CHECK(recv(g_pair[0], &peer, sizeof(peer), 0) == (ssize_t)sizeof(peer) && peer == getpid(),
        "the child's SO_PEERCRED: %ld, the parent is %ld", peer, (long)getpid());
  close(conn);
  close(listener);

  /* Both ends of a pair made by one process name that process. */
  int pair[2];
  CHECK(socketpair(AF_UNIX, SOCK_STREAM, 0, pair) == 0, "socketpair");
  size = sizeof(cred);
  CHECK(getsockopt(pair[1], SOL_SOCKET, SO_PEERCRED, &cred, &size) == 0 && cred.pid == getpid(),
        "SO_PEERCRED of its own pair: %ld, getpid %ld", (long)cred.pid, (long)getpid());
  close(pair[0]);
  close(pair[1]);
}

int main(int argc, char** argv) {
  ids_init();
  if (socketpair(AF_UNIX, SOCK_DGRAM, 0, g_pair) != 0 || pipe(g_order) != 0) {
    printf("FAIL set-up: %s\n", strerror(errno));
    return 2;
  }
  g_child = fork();
  if (g_child == 0) child();
  int verdict = ids_run(argc, argv, check);
  order('q');
  int status;
  CHECK(waitpid(g_child, &status, 0) == g_child, "waitpid for the child");
  return verdict == 0 && ids_failures == 0 ? 0 : 1;
}
