// A job's pid 1 for the migration tests: leads its own session (so CRIU can dump the
// whole session), starts the program as pid 2, forwards signals to it and reaps orphans.
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <initializer_list>

namespace {
pid_t program = -1;
void Forward(int signo) {
  if (program > 0) kill(program, signo);
}
}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: job_init PROGRAM [ARG...]\n");
    return 2;
  }
  setsid();
  program = fork();
  if (program == 0) {
    execv(argv[1], argv + 1);
    _exit(127);
  }
  struct sigaction action {};
  action.sa_handler = Forward;
  action.sa_flags = SA_RESTART;
  for (int signo : {SIGTERM, SIGINT, SIGHUP, SIGUSR1, SIGUSR2}) sigaction(signo, &action, nullptr);
  for (;;) {
    int status;
    pid_t done = wait(&status);
    if (done < 0) continue;
    if (done == program) return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  }
}
