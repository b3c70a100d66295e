// A library whose constructor makes trapped calls. ld.so runs it before the shim's own
// constructor, so in a program executed from inside a job (the filter inherited) it
// only works if the shim answered traps from the start.
#include <sys/syscall.h>
#include <unistd.h>

#include <csignal>

long early_getpid = 0;
long early_syscall_getpid = 0;
long early_sigaction = -1;

__attribute__((constructor)) static void EarlyConstructor() {
  struct sigaction ignore = {};
  ignore.sa_handler = SIG_IGN;
  early_sigaction = sigaction(SIGPIPE, &ignore, nullptr);
  early_getpid = getpid();
  early_syscall_getpid = syscall(SYS_getpid);
}
