// A stand-in for the job init in the shim's tests: pid 1 of the test's pid namespace. It
// starts its arguments as pid 2, reaps every process that ends up its child, and exits as
// pid 2 did. (The real job init belongs to the daemon.)
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <csignal>
#include <cstdio>
#include <cstring>

int main(int argc, char** argv) {
  if (argc < 2) {
    fprintf(stderr, "usage: test_init PROGRAM [ARGS...]\n");
    return 2;
  }
  pid_t child = fork();
  if (child < 0) {
    perror("test_init: fork");
    return 1;
  }
  if (child == 0) {
    execvp(argv[1], argv + 1);
    fprintf(stderr, "test_init: cannot run %s: %s\n", argv[1], strerror(errno));
    _exit(127);
  }
  int result = 1;
  for (;;) {
    int status;
    pid_t pid = wait(&status);
    if (pid < 0) {
      if (errno == EINTR) continue;
      break;
    }
    if (pid == child) {
      result = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    }
  }
  return result;
}
