/* The id fields a program reads in /proc are the home's: Pid, PPid, Tgid and NSpid of
 * /proc/self/status, /proc/<pid>/status and /proc/thread-self/status (NSpid, which would
 * list the node's namespaces, shows the one home id), and the pid, ppid, pgrp, session
 * fields of /proc/self/stat; read with stdio, with open/read, and opened with openat
 * relative to a descriptor of /proc ("self/status") or of the file's own directory
 * ("status"), or by open with /proc the working directory, for the program itself and for a child
 * forked before the moves. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <sys/wait.h>

#include "ids_common.h"

static pid_t g_child = -1;
static int g_quit[2];

/* How slurp opens a file. */
enum { BY_OPEN, BY_FOPEN, AT_PROC, AT_DIR, IN_PROC, HOWS };

/* Opens `path` ("/proc/...") with openat: relative to a descriptor of /proc (AT_PROC) or of
 * the file's directory (AT_DIR); or with open, relative to /proc as the working directory
 * (IN_PROC). */
static int open_at(const char* path, int how) {
  if (how == IN_PROC) {
    char cwd[4096];
    if (getcwd(cwd, sizeof(cwd)) == NULL || chdir("/proc") != 0) return -1;
    int fd = open(path + strlen("/proc/"), O_RDONLY | O_CLOEXEC);
    int saved = errno;
    if (chdir(cwd) != 0) abort();
    errno = saved;
    return fd;
  }
  char dir[64];
  const char* name;
  if (how == AT_PROC) {
    snprintf(dir, sizeof(dir), "/proc");
    name = path + strlen("/proc/");
  } else {
    const char* slash = strrchr(path, '/');
    snprintf(dir, sizeof(dir), "%.*s", (int)(slash - path), path);
    name = slash + 1;
  }
  int dirfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dirfd < 0) return -1;
  int fd = openat(dirfd, name, O_RDONLY | O_CLOEXEC);
  int saved = errno;
  close(dirfd);
  errno = saved;
  return fd;
}

/* The text of `path`, read with open and read, fopen and fread, or openat and read. */
static int slurp(const char* path, int how, char* out, size_t size) {
  size_t used = 0;
  if (how == BY_FOPEN) {
    FILE* f = fopen(path, "r");
    if (f == NULL) return -1;
    used = fread(out, 1, size - 1, f);
    fclose(f);
  } else {
    int fd = how == BY_OPEN ? open(path, O_RDONLY | O_CLOEXEC) : open_at(path, how);
    if (fd < 0) return -1;
    for (;;) {
      ssize_t n = read(fd, out + used, size - 1 - used);
      if (n <= 0) break;
      used += (size_t)n;
    }
    close(fd);
  }
  out[used] = '\0';
  return 0;
}

/* The values after "key:" in a status text, as one string ("31337", "81234\t2"). */
static const char* field(const char* text, const char* key, char* out, size_t size) {
  size_t n = strlen(key);
  for (const char* line = text; line != NULL && *line != '\0';) {
    if (strncmp(line, key, n) == 0 && line[n] == ':') {
      const char* v = line + n + 1;
      while (*v == '\t' || *v == ' ') ++v;
      size_t k = 0;
      while (v[k] != '\0' && v[k] != '\n' && k + 1 < size) {
        out[k] = v[k];
        ++k;
      }
      out[k] = '\0';
      return out;
    }
    line = strchr(line, '\n');
    if (line != NULL) ++line;
  }
  out[0] = '\0';
  return out;
}

static void check_status(const char* path, int how, long pid, long ppid) {
  char text[8192], value[128], want[32];
  CHECK(slurp(path, how, text, sizeof(text)) == 0, "%s (%d): %s", path, how, strerror(errno));
  snprintf(want, sizeof(want), "%ld", pid);
  CHECK(strcmp(field(text, "Pid", value, sizeof(value)), want) == 0, "%s: Pid %s, want %s", path,
        value, want);
  CHECK(strcmp(field(text, "Tgid", value, sizeof(value)), want) == 0, "%s: Tgid %s, want %s", path,
        value, want);
  CHECK(strcmp(field(text, "NSpid", value, sizeof(value)), want) == 0, "%s: NSpid %s, want %s",
        path, value, want);
  CHECK(strcmp(field(text, "NStgid", value, sizeof(value)), want) == 0, "%s: NStgid %s, want %s",
        path, value, want);
  snprintf(want, sizeof(want), "%ld", ppid);
  CHECK(strcmp(field(text, "PPid", value, sizeof(value)), want) == 0, "%s: PPid %s, want %s", path,
        value, want);
  CHECK(strcmp(field(text, "TracerPid", value, sizeof(value)), "0") == 0, "%s: TracerPid %s", path,
        value);
}

static void check_stat(const char* path, int how, long pid, long ppid, long pgrp, long sid) {
  char text[4096];
  CHECK(slurp(path, how, text, sizeof(text)) == 0, "%s (%d): %s", path, how, strerror(errno));
  long got_pid = 0, got_ppid = 0, got_pgrp = 0, got_sid = 0;
  char state = 0;
  const char* close = strrchr(text, ')');
  CHECK(close != NULL && sscanf(text, "%ld", &got_pid) == 1 &&
            sscanf(close + 1, " %c %ld %ld %ld", &state, &got_ppid, &got_pgrp, &got_sid) == 4,
        "%s: %s", path, text);
  CHECK(got_pid == pid && got_ppid == ppid && got_pgrp == pgrp && got_sid == sid,
        "%s: pid %ld ppid %ld pgrp %ld session %ld, want %ld %ld %ld %ld", path, got_pid, got_ppid,
        got_pgrp, got_sid, pid, ppid, pgrp, sid);
}

static void check(int round) {
  (void)round;
  long self = getpid(), parent = getppid();
  CHECK(self == ids_home_pid && parent == ids_home_ppid, "getpid %ld getppid %ld", self, parent);
  char path[64];
  for (int how = 0; how < HOWS; ++how) {
    check_status("/proc/self/status", how, self, parent);
    check_status("/proc/thread-self/status", how, self, parent);
    snprintf(path, sizeof(path), "/proc/%ld/status", self);
    check_status(path, how, self, parent);
    check_stat("/proc/self/stat", how, self, parent, getpgrp(), getsid(0));
    snprintf(path, sizeof(path), "/proc/%ld/status", (long)g_child);
    check_status(path, how, g_child, self);
    snprintf(path, sizeof(path), "/proc/%ld/stat", (long)g_child);
    check_stat(path, how, g_child, self, getpgid(g_child), getsid(g_child));
  }
  CHECK(ids_is_job_id(g_child), "the child's pid %ld", (long)g_child);
}

int main(int argc, char** argv) {
  ids_init();
  if (pipe(g_quit) != 0) return 2;
  g_child = fork();
  if (g_child == 0) {
    char byte;
    _exit(read(g_quit[0], &byte, 1) == 1 ? 0 : 1);
  }
  int verdict = ids_run(argc, argv, check);
  if (write(g_quit[1], "q", 1) != 1) abort();
  int status;
  CHECK(waitpid(g_child, &status, 0) == g_child, "waitpid for the child");
  return verdict == 0 && ids_failures == 0 ? 0 : 1;
}
