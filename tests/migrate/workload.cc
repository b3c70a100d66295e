// The zdtm-shaped workload the migration tests move: it builds state (an input file read
// at an offset, a file it appends to, an interval timer, a SIGUSR1 handler, a child on a
// pipe, memory at fixed addresses: dense, sparse, dense but marked MADV_NOHUGEPAGE, and
// dense and shared with the child; see workload_memory.h), says "ready" on fd 3, then
// does one step per "step" line on stdin, and at the end of stdin checks that all of that
// state survived and prints its verdict.
#include <fcntl.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cinttypes>
#include <cstdio>
#include <cstring>
#include <string>

#include "workload_memory.h"

namespace {

volatile sig_atomic_t ticks = 0;
volatile sig_atomic_t usr1 = 0;
void OnAlarm(int) {
  ticks = ticks + 1;
}
void OnUsr1(int) {
  usr1 = usr1 + 1;
}

void Say(int fd, const std::string& text) {
  size_t done = 0;
  while (done < text.size()) {
    ssize_t n = write(fd, text.data() + done, text.size() - done);
    if (n < 0) _exit(3);
    done += static_cast<size_t>(n);
  }
}

bool ReadExact(int fd, void* data, size_t size) {
  size_t done = 0;
  while (done < size) {
    ssize_t n = read(fd, static_cast<char*>(data) + done, size - done);
    if (n <= 0) return false;
    done += static_cast<size_t>(n);
  }
  return true;
}

// Reads a line from stdin; false at end of input.
bool ReadLine(std::string& line) {
  line.clear();
  char c;
  for (;;) {
    ssize_t n = read(0, &c, 1);
    if (n < 0) continue;
    if (n == 0) return !line.empty();
    if (c == '\n') return true;
    line += c;
  }
}

using namespace homeward::migrate::workload;

constexpr size_t kPage = 4096;

struct Region {
  uintptr_t start;
  size_t size;
  size_t stride;             // pages written: every `stride`-th
  bool no_huge = false;      // marked MADV_NOHUGEPAGE
  bool before_fork = false;  // the child shares it, copy-on-write
};
// Memory a child shares copy-on-write criu reads before it forks the children; the rest,
// this process's alone, criu's restorer reads in place.
constexpr Region kRegions[] = {{kDenseMemory, kDenseBytes, 1},
                               {kSparseMemory, kSparseBytes, 2},
                               {kNoHugeMemory, kNoHugeBytes, 1, true},
                               {kSharedMemory, kSharedBytes, 1, false, true}};

unsigned char PageByte(uintptr_t page) {
  return static_cast<unsigned char>((page / kPage) * 7 + 1);
}

// Maps and writes the regions made before the fork, or after it.
bool MapMemory(bool before_fork) {
  for (const Region& r : kRegions) {
    if (r.before_fork != before_fork) continue;
    void* at = mmap(reinterpret_cast<void*>(r.start), r.size, PROT_READ | PROT_WRITE,
                    MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
    if (at != reinterpret_cast<void*>(r.start)) return false;
    if (r.no_huge && madvise(at, r.size, MADV_NOHUGEPAGE) != 0) return false;
    for (uintptr_t page = r.start; page < r.start + r.size; page += r.stride * kPage) {
      memset(reinterpret_cast<void*>(page), PageByte(page), kPage);
    }
  }
  return true;
}

// Every written page still holds its bytes, every other page is still zero.
bool MemoryIntact() {
  for (const Region& r : kRegions) {
    for (uintptr_t page = r.start; page < r.start + r.size; page += kPage) {
      bool written = ((page - r.start) / kPage) % r.stride == 0;
      unsigned char want = written ? PageByte(page) : 0;
      const auto* bytes = reinterpret_cast<const unsigned char*>(page);
      for (size_t i = 0; i < kPage; ++i) {
        if (bytes[i] != want) return false;
      }
    }
  }
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 3) {
    std::fprintf(stderr, "usage: workload INPUT APPEND\n");
    return 2;
  }
  int input = open(argv[1], O_RDONLY | O_CLOEXEC);
  int append = open(argv[2], O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
  if (input < 0 || append < 0) return 4;
  struct sigaction action {};
  action.sa_flags = SA_RESTART;
  action.sa_handler = OnAlarm;
  sigaction(SIGALRM, &action, nullptr);
  action.sa_handler = OnUsr1;
  sigaction(SIGUSR1, &action, nullptr);
  itimerval timer{{0, 5000}, {0, 5000}};
  setitimer(ITIMER_REAL, &timer, nullptr);
  if (!MapMemory(true)) return 8;
  int to_child[2], from_child[2];
  if (pipe2(to_child, O_CLOEXEC) < 0 || pipe2(from_child, O_CLOEXEC) < 0) return 5;
  pid_t child = fork();
  if (child == 0) {
    close(to_child[1]);
    close(from_child[0]);
    uint64_t value;
    while (ReadExact(to_child[0], &value, sizeof value)) {
      value = value * 2 + 1;
      Say(from_child[1], std::string(reinterpret_cast<char*>(&value), sizeof value));
    }
    _exit(0);
  }
  close(to_child[0]);
  close(from_child[1]);
  if (!MapMemory(false)) return 8;  // this process's alone
  Say(3, "ready\n");

  uint64_t steps = 0;
  std::string line;
  while (ReadLine(line)) {
    if (line != "step") continue;
    ++steps;
    char record[17] = {};
    if (!ReadExact(input, record, 16)) return 6;
    record[15] = '\0';  // the record's newline
    Say(to_child[1], std::string(reinterpret_cast<char*>(&steps), sizeof steps));
    uint64_t reply = 0;
    if (!ReadExact(from_child[0], &reply, sizeof reply)) return 7;
    char out[128];
    std::snprintf(out, sizeof out, "step %" PRIu64 " input=%s child=%" PRIu64 "\n", steps, record,
                  reply);
    Say(1, out);
    std::snprintf(out, sizeof out, "%" PRIu64 "\n", steps);
    Say(append, out);
  }

  // Self-check: the timer still fires, the child still answers and exits cleanly.
  int start = ticks;
  while (ticks < start + 2) pause();
  itimerval left{};
  getitimer(ITIMER_REAL, &left);
  bool timer_ok = left.it_interval.tv_usec == 5000;
  close(to_child[1]);
  int status = 0;
  bool child_ok =
      waitpid(child, &status, 0) == child && WIFEXITED(status) && WEXITSTATUS(status) == 0;
  bool memory_ok = MemoryIntact();
  char out[160];
  std::snprintf(out, sizeof out,
                "final steps=%" PRIu64 " usr1=%d offset=%ld timer=%s child=%s memory=%s\n", steps,
                static_cast<int>(usr1), static_cast<long>(lseek(input, 0, SEEK_CUR)),
                timer_ok ? "ok" : "BAD", child_ok ? "ok" : "BAD", memory_ok ? "ok" : "BAD");
  Say(1, out);
  return timer_ok && child_ok && memory_ok ? 0 : 1;
}
