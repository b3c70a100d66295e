// Prints what a program sees of its node, one "key=value" per line: the host name, its
// ids, its working directory and a file's real path, /data/marker, and the same ids and
// name from raw system calls (which the job shim answers through its seccomp trap). Run
// plainly, under the shim, at home or away, the output should be the same.
#include <limits.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <sys/utsname.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>

int main(int argc, char** argv) {
  const char* relative = argc > 1 ? argv[1] : ".";
  struct utsname uts;
  printf("uname.nodename=%s\n", uname(&uts) == 0 ? uts.nodename : strerror(errno));
  char host[HOST_NAME_MAX + 1];
  printf("gethostname=%s\n", gethostname(host, sizeof(host)) == 0 ? host : strerror(errno));
  printf("getpid=%d\n", getpid());
  printf("getppid=%d\n", getppid());
  printf("gettid=%d\n", gettid());
  char path[PATH_MAX];
  printf("cwd=%s\n", getcwd(path, sizeof(path)) != nullptr ? path : strerror(errno));
  printf("realpath(%s)=%s\n", relative,
         realpath(relative, path) != nullptr ? path : strerror(errno));
  if (FILE* f = fopen("/data/marker", "r")) {
    char line[256] = {};
    if (fgets(line, sizeof(line), f) == nullptr) line[0] = '\0';
    line[strcspn(line, "\n")] = '\0';
    printf("marker=%s\n", line);
    fclose(f);
  } else {
    printf("marker=<%s>\n", strerror(errno));
  }
  printf("syscall.getpid=%ld\n", syscall(SYS_getpid));
  printf("syscall.getppid=%ld\n", syscall(SYS_getppid));
  printf("syscall.gettid=%ld\n", syscall(SYS_gettid));
  struct utsname raw;
  printf("syscall.uname.nodename=%s\n",
         syscall(SYS_uname, &raw) == 0 ? raw.nodename : strerror(errno));
  return 0;
}
