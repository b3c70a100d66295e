/* The owner of a conflicting lock on a local file (a memfd: not homefs, whose owners the
 * home's file service answers) is a home id in F_GETLK and F_OFD_GETLK; an open file
 * description's lock has no owner (-1), as the kernel says. The lock holder is a child
 * forked before the moves. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/wait.h>

#include "ids_common.h"

static pid_t g_holder = -1;
static int g_order[2], g_done[2];
static int g_file = -1;

/* The holder: for each command byte on g_order ('p' a process lock on bytes 0-9, 'o' an
 * open file description's on 20-29, 'u' both undone, 'q' quit), does it and answers on g_done. */
static void holder(void) {
  int ofd = -1;
  for (;;) {
    char command;
    if (read(g_order[0], &command, 1) != 1) _exit(100);
    struct flock lock;
    memset(&lock, 0, sizeof(lock));
    lock.l_type = F_WRLCK;
    lock.l_whence = SEEK_SET;
    lock.l_len = 10;
    int rc = 0;
    if (command == 'p') {
      lock.l_start = 0;
      rc = fcntl(g_file, F_SETLK, &lock);
    } else if (command == 'o') {
      char self[64];
      snprintf(self, sizeof(self), "/proc/self/fd/%d", g_file);
      if (ofd < 0) ofd = open(self, O_RDWR);
      lock.l_start = 20;
      rc = ofd < 0 ? -1 : fcntl(ofd, F_OFD_SETLK, &lock);
    } else if (command == 'u') {
      lock.l_type = F_UNLCK;
      lock.l_len = 0;
      rc = fcntl(g_file, F_SETLK, &lock);
      if (rc == 0 && ofd >= 0) rc = fcntl(ofd, F_OFD_SETLK, &lock);
    } else {
      _exit(0);
    }
    char answer = rc == 0 ? 'y' : 'n';
    if (write(g_done[1], &answer, 1) != 1) _exit(101);
  }
}

static void order(char command) {
  if (write(g_order[1], &command, 1) != 1) abort();
  char answer;
  CHECK(read(g_done[0], &answer, 1) == 1 && answer == 'y', "the holder could not take lock %c",
        command);
}

static struct flock probe(int cmd, off_t start) {
  struct flock lock;
  memset(&lock, 0, sizeof(lock));
  lock.l_type = F_WRLCK;
  lock.l_whence = SEEK_SET;
  lock.l_start = start;
  lock.l_len = 10;
  int rc = fcntl(g_file, cmd, &lock);
  CHECK(rc == 0, "fcntl(%d) at %ld: %s", cmd, (long)start, strerror(errno));
  return lock;
}

static void check(int round) {
  (void)round;
  order('p');
  order('o');
  CHECK(ids_is_job_id(g_holder), "the holder's pid %ld", (long)g_holder);
  struct flock lock = probe(F_GETLK, 0);
  CHECK(lock.l_type == F_WRLCK && lock.l_pid == g_holder,
        "F_GETLK: type %d owner %ld, the holder is %ld", lock.l_type, (long)lock.l_pid,
        (long)g_holder);
  lock = probe(F_OFD_GETLK, 0);
  CHECK(lock.l_type == F_WRLCK && lock.l_pid == g_holder,
        "F_OFD_GETLK on a process lock: type %d owner %ld, the holder is %ld", lock.l_type,
        (long)lock.l_pid, (long)g_holder);
  lock = probe(F_GETLK, 20);
  CHECK(lock.l_type == F_WRLCK && lock.l_pid == -1,
        "F_GETLK on an open file description's lock: type %d owner %ld", lock.l_type,
        (long)lock.l_pid);
  lock = probe(F_GETLK, 40);
  CHECK(lock.l_type == F_UNLCK, "F_GETLK where nothing is locked: type %d", lock.l_type);
  order('u'); /* nothing held while the job moves on */
}

int main(int argc, char** argv) {
  ids_init();
  g_file = memfd_create("ids_lock", 0);
  if (g_file < 0 || ftruncate(g_file, 4096) != 0 || pipe(g_order) != 0 || pipe(g_done) != 0) {
    printf("FAIL set-up: %s\n", strerror(errno));
    return 2;
  }
  g_holder = fork();
  if (g_holder == 0) holder();
  int verdict = ids_run(argc, argv, check);
  char quit = 'q';
  if (write(g_order[1], &quit, 1) != 1) abort();
  int status;
  pid_t got = waitpid(g_holder, &status, 0);
  CHECK(got == g_holder, "waitpid for the holder: %ld, holder %ld", (long)got, (long)g_holder);
  return verdict == 0 && ids_failures == 0 ? 0 : 1;
}
