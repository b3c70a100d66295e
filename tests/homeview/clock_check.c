// clock_check: a job's CLOCK_MONOTONIC and CLOCK_BOOTTIME, watched wherever the job runs.
//
// Reads both clocks every 10 ms and keeps the largest step back (none allowed) and the
// largest step forward between two readings. For every round N the test asks for with a
// file "checkN" in the working directory it prints
//   "clock N back_ns=B jump_ms=J mono_s=M boot_s=T"
// (the largest step back and forward of either clock since the start, and the clocks
// now), and exits on a file "end", with status 1 if a clock ever went back.
#include <stdint.h>
#include <stdio.h>
#include <time.h>
#include <unistd.h>

static int64_t Now(clockid_t clock) {
  struct timespec ts;
  clock_gettime(clock, &ts);
  return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

int main(void) {
  setvbuf(stdout, NULL, _IOLBF, 0);
  const clockid_t clocks[2] = {CLOCK_MONOTONIC, CLOCK_BOOTTIME};
  int64_t last[2], back = 0, jump = 0;
  for (int c = 0; c < 2; ++c) last[c] = Now(clocks[c]);
  printf("clock 0 mono_s=%.3f boot_s=%.3f\n", last[0] / 1e9, last[1] / 1e9);
  int round = 1;
  for (unsigned tick = 0;; ++tick) {
    for (int c = 0; c < 2; ++c) {
      int64_t now = Now(clocks[c]);
      if (last[c] - now > back) back = last[c] - now;
      if (now - last[c] > jump) jump = now - last[c];
      last[c] = now;
    }
    if (tick % 2 == 0) {  // the files every 20 ms
      char name[32];
      snprintf(name, sizeof name, "check%d", round);
      if (access(name, F_OK) == 0) {
        printf("clock %d back_ns=%lld jump_ms=%lld mono_s=%.3f boot_s=%.3f\n", round,
               (long long)back, (long long)(jump / 1000000), last[0] / 1e9, last[1] / 1e9);
        ++round;
      } else if (access("end", F_OK) == 0) {
        break;
      }
    }
    struct timespec pause = {0, 10 * 1000 * 1000};
    nanosleep(&pause, NULL);
  }
  printf("clock end %s\n", back > 0 ? "FAIL" : "ok");
  return back > 0;
}
