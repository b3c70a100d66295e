// ipc_check: a job's System V IPC, checked wherever the job runs.
//
// Makes a semaphore set, a message queue and a shared memory segment in the job's IPC
// namespace (fixed keys: the namespace is the job's own), keeps the segment attached, and
// then, for every round N the test asks for with a file "checkN" in the working
// directory, checks that each object is still the one it made (same id by key) with the
// contents the previous round left, and changes them for the next round: semaphore values,
// the messages in the queue (one taken, one added), the segment's bytes (through the old
// attachment and a new one). Prints "ipc N ok" or "ipc N FAIL: what" and exits on a file
// "end" after removing its objects (status 0 when every round passed).
//
// `ipc_check mq` instead holds a POSIX message queue with a message in it, prints "mq ok",
// and removes it on a file "end": CRIU carries no such queue, so the job must stay pinned.
#include <errno.h>
#include <fcntl.h>
#include <mqueue.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ipc.h>
#include <sys/msg.h>
#include <sys/sem.h>
#include <sys/shm.h>
#include <time.h>
#include <unistd.h>

enum { kSems = 3, kShmSize = 256 * 1024, kMessageBytes = 64 };
static const key_t kKey = 0x484f4d45;  // "HOME"

union semun {
  int val;
  struct semid_ds* buf;
  unsigned short* array;
};

struct message {
  long type;
  char text[kMessageBytes];
};

static int sem_id, msg_id, shm_id;
static unsigned char* shm;  // attached since the start: what used to pin a job
static char failure[512];

static int Fail(const char* format, ...) {
  va_list args;
  va_start(args, format);
  vsnprintf(failure, sizeof failure, format, args);
  va_end(args);
  return -1;
}

// Round `round`'s expected contents: a byte pattern, semaphore values, message texts.
static unsigned char PatternByte(int round, size_t i) {
  return (unsigned char)((i * 131u + (unsigned)round * 17u) & 0xff);
}
static unsigned short SemValue(int round, int sem) {
  return (unsigned short)(3 + 2 * sem + round);
}
static void MessageText(int number, char* text) {
  snprintf(text, kMessageBytes, "message %d from the job", number);
}

static void Fill(int round) {
  for (size_t i = 0; i < kShmSize; ++i) shm[i] = PatternByte(round, i);
}

static int SetSems(int round) {
  unsigned short values[kSems];
  for (int s = 0; s < kSems; ++s) values[s] = SemValue(round, s);
  union semun arg = {.array = values};
  return semctl(sem_id, 0, SETALL, arg);
}

static int Send(int number) {
  struct message m = {.type = number};
  MessageText(number, m.text);
  return msgsnd(msg_id, &m, sizeof m.text, IPC_NOWAIT);
}

// Three messages (1, 2, 3) in the queue at round 0; every round takes the oldest and adds
// the next, so at round N the queue holds N+1, N+2, N+3.
static int Setup(void) {
  sem_id = semget(kKey, kSems, IPC_CREAT | IPC_EXCL | 0600);
  msg_id = msgget(kKey, IPC_CREAT | IPC_EXCL | 0600);
  shm_id = shmget(kKey, kShmSize, IPC_CREAT | IPC_EXCL | 0600);
  if (sem_id < 0 || msg_id < 0 || shm_id < 0) return Fail("create: %s", strerror(errno));
  shm = shmat(shm_id, NULL, 0);
  if (shm == (void*)-1) return Fail("shmat: %s", strerror(errno));
  Fill(0);
  if (SetSems(0) != 0) return Fail("semctl SETALL: %s", strerror(errno));
  for (int n = 1; n <= 3; ++n) {
    if (Send(n) != 0) return Fail("msgsnd: %s", strerror(errno));
  }
  return 0;
}

static int Check(int round) {
  // Same objects, found by key as any program of the job would.
  if (semget(kKey, 0, 0) != sem_id) return Fail("semaphore set by key: %s", strerror(errno));
  if (msgget(kKey, 0) != msg_id) return Fail("message queue by key: %s", strerror(errno));
  if (shmget(kKey, 0, 0) != shm_id) return Fail("shared memory by key: %s", strerror(errno));

  unsigned short values[kSems];
  union semun arg = {.array = values};
  if (semctl(sem_id, 0, GETALL, arg) != 0) return Fail("semctl GETALL: %s", strerror(errno));
  for (int s = 0; s < kSems; ++s) {
    if (values[s] != SemValue(round - 1, s)) {
      return Fail("semaphore %d is %u, want %u", s, values[s], SemValue(round - 1, s));
    }
  }
  // A semaphore operation works on the restored set: take one from each, give it back.
  struct sembuf ops[kSems];
  for (int s = 0; s < kSems; ++s) ops[s] = (struct sembuf){(unsigned short)s, -1, IPC_NOWAIT};
  if (semop(sem_id, ops, kSems) != 0) return Fail("semop: %s", strerror(errno));
  if (SetSems(round) != 0) return Fail("semctl SETALL: %s", strerror(errno));

  struct msqid_ds queue;
  if (msgctl(msg_id, IPC_STAT, &queue) != 0) return Fail("msgctl: %s", strerror(errno));
  if (queue.msg_qnum != 3) return Fail("%lu messages in the queue, want 3", queue.msg_qnum);
  struct message m;
  ssize_t got = msgrcv(msg_id, &m, sizeof m.text, 0, IPC_NOWAIT);
  if (got != (ssize_t)sizeof m.text) return Fail("msgrcv: %zd (%s)", got, strerror(errno));
  char want[kMessageBytes];
  MessageText(round, want);
  if (m.type != round || strcmp(m.text, want) != 0) {
    return Fail("message type %ld '%.64s', want type %d '%s'", m.type, m.text, round, want);
  }
  if (Send(round + 3) != 0) return Fail("msgsnd: %s", strerror(errno));

  unsigned char* again = shmat(shm_id, NULL, SHM_RDONLY);
  if (again == (void*)-1) return Fail("shmat again: %s", strerror(errno));
  for (size_t i = 0; i < kShmSize; ++i) {
    unsigned char want_byte = PatternByte(round - 1, i);
    if (shm[i] != want_byte || again[i] != want_byte) {
      shmdt(again);
      return Fail("shared memory byte %zu is %u (new attachment %u), want %u", i, shm[i], again[i],
                  want_byte);
    }
  }
  Fill(round);
  int same = again[kShmSize - 1] == PatternByte(round, kShmSize - 1);
  shmdt(again);
  if (!same) return Fail("a write through one attachment is not seen through the other");
  return 0;
}

static int Exists(const char* name) {
  return access(name, F_OK) == 0;
}

static int Exists(const char* name);

static int HoldPosixQueue(void) {
  struct mq_attr attr = {.mq_maxmsg = 4, .mq_msgsize = kMessageBytes};
  mqd_t queue = mq_open("/homeward-check", O_CREAT | O_EXCL | O_RDWR, 0600, &attr);
  if (queue == (mqd_t)-1 || mq_send(queue, "held", 5, 1) != 0) {
    printf("mq FAIL: %s\n", strerror(errno));
    return 1;
  }
  printf("mq ok\n");
  struct timespec pause = {0, 20 * 1000 * 1000};
  while (!Exists("end")) nanosleep(&pause, NULL);
  mq_close(queue);
  mq_unlink("/homeward-check");
  return 0;
}

int main(int argc, char** argv) {
  setvbuf(stdout, NULL, _IOLBF, 0);
  if (argc == 2 && strcmp(argv[1], "mq") == 0) return HoldPosixQueue();
  if (Setup() != 0) {
    printf("ipc 0 FAIL: %s\n", failure);
    return 1;
  }
  printf("ipc 0 ok (sem %d msg %d shm %d)\n", sem_id, msg_id, shm_id);
  int failed = 0;
  int round = 1;
  for (;;) {
    char name[32];
    snprintf(name, sizeof name, "check%d", round);
    if (Exists(name)) {
      if (Check(round) == 0) {
        printf("ipc %d ok\n", round);
      } else {
        printf("ipc %d FAIL: %s\n", round, failure);
        failed = 1;
      }
      ++round;
      continue;
    }
    if (Exists("end")) break;
    struct timespec pause = {0, 20 * 1000 * 1000};
    nanosleep(&pause, NULL);
  }
  shmdt(shm);
  shmctl(shm_id, IPC_RMID, NULL);
  semctl(sem_id, 0, IPC_RMID);
  msgctl(msg_id, IPC_RMID, NULL);
  printf("ipc end %s\n", failed ? "FAIL" : "ok");
  return failed;
}
