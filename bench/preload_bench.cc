// Times the calls the job shim touches, in ns per call, as one program run natively, under
// libmosix_preload.so, or under proot: `preload_bench calls` prints "name ns" lines;
// `preload_bench cpu N` does N units of pure computation (for the whole-program overhead).
#include <fcntl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>

namespace {

double Now() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec * 1e9 + ts.tv_nsec;
}

// The best of many short rounds: the machine is shared, and a round that no other
// process interrupted gives the call's own cost.
template <typename F>
double NsPerCall(long iterations, F&& call) {
  constexpr int kRounds = 50;
  long per_round = std::max(1L, iterations / 8);
  double best = 1e18;
  for (int round = 0; round < kRounds; ++round) {
    double start = Now();
    for (long i = 0; i < per_round; ++i) call();
    best = std::min(best, (Now() - start) / static_cast<double>(per_round));
  }
  return best;
}

volatile long g_sink;

int Calls(double scale) {
  // Each call's count at this scale (a fraction for slow runners such as proot).
  auto n = [scale](long base) { return std::max(1L, static_cast<long>(base * scale)); };
  struct stat st;
  printf("getpid %.1f\n", NsPerCall(n(200000), [] { g_sink = getpid(); }));
  printf("syscall_getpid %.1f\n", NsPerCall(n(50000), [] { g_sink = syscall(SYS_getpid); }));
  printf("gettid %.1f\n", NsPerCall(n(200000), [] { g_sink = gettid(); }));
  printf("stat %.1f\n", NsPerCall(n(50000), [&] { g_sink = stat("/usr", &st); }));
  printf("open_close %.1f\n", NsPerCall(n(20000), [] {
           int fd = open("/dev/null", O_RDONLY);
           g_sink = fd;
           close(fd);
         }));
  // Last: SO_PASSCRED arms the shim's traps of sendmsg and recvmsg for the rest of the
  // process (preload/credentials.h), so the same pair is timed before and after.
  int pair[2];
  if (socketpair(AF_UNIX, SOCK_DGRAM, 0, pair) != 0) return 1;
  auto round_trip = [&pair] {
    char byte = 'b';
    iovec iov = {&byte, 1};
    alignas(cmsghdr) char control[CMSG_SPACE(sizeof(ucred))];
    msghdr msg = {};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    g_sink = sendmsg(pair[1], &msg, 0);
    msg.msg_control = control;
    msg.msg_controllen = sizeof(control);
    g_sink = recvmsg(pair[0], &msg, 0);
  };
  printf("sendmsg_recvmsg %.1f\n", NsPerCall(n(20000), round_trip));
  int on = 1;
  if (setsockopt(pair[0], SOL_SOCKET, SO_PASSCRED, &on, sizeof(on)) != 0) return 1;
  printf("sendmsg_recvmsg_passcred %.1f\n", NsPerCall(n(20000), round_trip));
  return 0;
}

// A fixed amount of integer work with no system calls in the loop.
int Cpu(long units) {
  unsigned long x = 88172645463325252UL;
  for (long u = 0; u < units; ++u) {
    for (int i = 0; i < 1000000; ++i) {
      x ^= x << 13;
      x ^= x >> 7;
      x ^= x << 17;
    }
  }
  printf("%lu\n", x);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc >= 2 && strcmp(argv[1], "calls") == 0) return Calls(argc > 2 ? atof(argv[2]) : 1);
  if (argc >= 3 && strcmp(argv[1], "cpu") == 0) return Cpu(atol(argv[2]));
  fprintf(stderr, "usage: preload_bench calls [SCALE] | cpu UNITS\n");
  return 2;
}
