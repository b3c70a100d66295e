// Threads that run on any CPU the process may use, whoever starts them. A new thread
// inherits its creator's CPU affinity, and homefs's FUSE lanes pin themselves each to the
// CPU whose requests they take: a connection, flushing or sending thread that a lane
// happens to start would be pinned with it, and then wait behind whatever job runs on that
// CPU (a CPU-bound job there halved another CPU's random reads from a home).
#pragma once

#include <pthread.h>
#include <sched.h>
#include <unistd.h>

#include <thread>
#include <utility>

namespace homeward {

// Gives the calling thread the CPUs of the process's main thread.
inline void TakeProcessCpus() {
  cpu_set_t cpus;
  if (::sched_getaffinity(::getpid(), sizeof cpus, &cpus) == 0) {
    ::sched_setaffinity(0, sizeof cpus, &cpus);
  }
}

// `name` (at most 15 characters, as the kernel keeps them) replaces the creator's, which
// the thread would inherit too.
template <typename F>
std::thread UnpinnedThread(const char* name, F&& body) {
  return std::thread([name, body = std::forward<F>(body)]() mutable {
    TakeProcessCpus();
    ::pthread_setname_np(::pthread_self(), name);
    body();
  });
}

}  // namespace homeward
