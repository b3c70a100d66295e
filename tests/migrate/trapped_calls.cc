// A program whose system calls a seccomp filter traps to its SIGSYS handler, as the job
// shim's are (preload/filter.cc): it makes raw getpid calls without pause, each answered
// by the handler, so that a dump often stops it between a trap and its handler. Says
// "ready" on fd 3, calls until its stdin ends, then prints "final calls=N lost=M": a
// call whose trap a checkpoint lost comes back as its own number, not the answer.
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <ucontext.h>
#include <unistd.h>

#include <cerrno>
#include <cstddef>
#include <cstdio>
#include <cstring>

namespace {

constexpr long kAnswer = 424242;
constexpr int kSysSeccomp = 1;  // si_code of a seccomp trap

void OnTrap(int, siginfo_t* info, void* context) {
  auto* uc = static_cast<ucontext_t*>(context);
  bool getpid = info->si_code == kSysSeccomp && info->si_syscall == SYS_getpid;
  uc->uc_mcontext.gregs[REG_RAX] = getpid ? kAnswer : -ENOSYS;
}

bool TrapGetpid() {
  struct sigaction action = {};
  action.sa_sigaction = OnTrap;
  action.sa_flags = SA_SIGINFO | SA_NODEFER | SA_RESTART;  // as the shim's handler
  if (sigaction(SIGSYS, &action, nullptr) != 0) return false;
  sock_filter filter[] = {
      BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(seccomp_data, nr)),
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_getpid, 0, 1),
      BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_TRAP),
      BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
  };
  sock_fprog program = {sizeof(filter) / sizeof(filter[0]), filter};
  return prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0 &&
         prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &program) == 0;
}

// True once stdin has ended (the test closes it).
bool InputEnded() {
  pollfd in = {0, POLLIN, 0};
  if (poll(&in, 1, 0) <= 0) return false;
  char byte;
  return read(0, &byte, 1) <= 0;
}

}  // namespace

int main() {
  if (!TrapGetpid()) {
    perror("trapped_calls: seccomp filter");
    return 2;
  }
  if (write(3, "ready\n", 6) != 6) return 3;
  long calls = 0, lost = 0;
  do {
    for (int i = 0; i < 1000; ++i, ++calls) {
      if (syscall(SYS_getpid) != kAnswer) ++lost;
    }
  } while (!InputEnded());
  printf("final calls=%ld lost=%ld\n", calls, lost);
  return 0;
}
