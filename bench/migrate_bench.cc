// Migration benchmark of the migrate library: for jobs holding 16 MiB .. 4 GiB of touched
// memory, the floor (criu dump to tmpfs, then criu restore, same node) beside a move by
// stop and copy (dump to tmpfs, stream over loopback TCP into another tmpfs directory,
// restore) and a paged move (the memory to a page server across the connection while criu
// dumps, the rest after), as a markdown table or, with --json, a line per size for
// bench/migrate.py, which adds moves through the daemons.
//   migrate_bench [--sizes 16,256,1024,4096] [--reps N] [--dir /dev/shm/...] [--json]
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sched.h>
#include <signal.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <thread>
#include <utility>

#include "checkpoint.h"
#include "error.h"
#include "fd.h"
#include "image_stream.h"
#include "page_relay.h"
#include "secure_channel.h"

using namespace homeward;
using namespace homeward::migrate;
using Clock = std::chrono::steady_clock;

namespace {

double Seconds(Clock::duration d) {
  return std::chrono::duration<double>(d).count();
}

// The job a run moves; killed when dropped, so that a run that fails leaves nothing.
struct BenchJob {
  pid_t init = -1;
  Fd in, out, err, status;
  BenchJob(pid_t pid, Fd in_fd, Fd out_fd, Fd err_fd, Fd status_fd)
      : init(pid), in(std::move(in_fd)), out(std::move(out_fd)), err(std::move(err_fd)),
        status(std::move(status_fd)) {}
  BenchJob(BenchJob&& other) noexcept
      : init(std::exchange(other.init, -1)), in(std::move(other.in)),
        out(std::move(other.out)), err(std::move(other.err)), status(std::move(other.status)) {}
  BenchJob& operator=(BenchJob&&) = delete;
  ~BenchJob() { Kill(); }
  void Kill() {
    KillJob(init);
    init = -1;
  }
  std::vector<uint64_t> Inodes() const {
    return {PipeInode(in.get()), PipeInode(out.get()), PipeInode(err.get()),
            PipeInode(status.get())};
  }
};

BenchJob StartJob(size_t mib) {
  Pipe in = Pipe::Create(), out = Pipe::Create(), err = Pipe::Create(), st = Pipe::Create();
  std::string init = JOB_INIT_PATH, hog = MEMHOG_PATH, size = std::to_string(mib);
  char* argv[] = {init.data(), hog.data(), size.data(), nullptr};
  long pid = syscall(SYS_clone, CLONE_NEWPID | CLONE_NEWNS | CLONE_NEWUTS | SIGCHLD, nullptr,
                     nullptr, nullptr, nullptr);
  if (pid < 0) throw SystemError(errno, "clone");
  if (pid == 0) {
    dup2(in.read.get(), 0);
    dup2(out.write.get(), 1);
    dup2(err.write.get(), 2);
    dup2(st.write.get(), 3);
    syscall(SYS_close_range, 4, ~0U, 0);
    mount(nullptr, "/", nullptr, MS_REC | MS_PRIVATE, nullptr);
    execv(argv[0], argv);
    _exit(127);
  }
  BenchJob job{static_cast<pid_t>(pid), std::move(in.write), std::move(out.read),
               std::move(err.read), std::move(st.read)};
  char ready[6];
  if (ReadSome(job.status.get(), ready, 6, "ready") != 6) Fail(ErrorKind::kFailed, "not ready");
  return job;
}

struct Restored {
  pid_t init;
  Pipe in, out, err, status;
};

// `huge_pages`: RestoreOptions::huge_pages (false: criu's own restore).
Restored RestoreWithPipes(const std::string& dir, const std::vector<uint64_t>& inodes,
                          bool huge_pages = true) {
  Restored r{-1, Pipe::Create(), Pipe::Create(), Pipe::Create(), Pipe::Create()};
  RestoreOptions options;
  options.huge_pages = huge_pages;
  options.pipes = {{inodes[0], r.in.read.get()},
                   {inodes[1], r.out.write.get()},
                   {inodes[2], r.err.write.get()},
                   {inodes[3], r.status.write.get()}};
  r.init = Restore(dir, options).init_pid;
  return r;
}

struct Sample {
  double frozen = 0, total = 0, dump = 0, stream = 0, restore = 0;
};

// The floor: criu dump (which kills the job) to tmpfs, then criu restore. Its total is
// the wall time of both; its frozen time, as a move's, starts at criu's freeze (its stats).
// `huge_pages`: the restore reads into huge pages as moves do (else criu's own).
Sample Floor(size_t mib, const std::string& base, bool huge_pages) {
  BenchJob job = StartJob(mib);
  std::string dir = base + "/floor";
  mkdir(dir.c_str(), 0700);
  DumpOptions options;
  options.after = AfterDump::kKill;
  options.external_pipes = job.Inodes();
  auto t0 = Clock::now();
  DumpResult dumped = Dump(job.init, dir, options);
  auto t1 = Clock::now();
  job.Kill();
  Restored r = RestoreWithPipes(dir, options.external_pipes, huge_pages);
  auto t2 = Clock::now();
  RemoveImageDir(dir);
  KillJob(r.init);
  double frozen_in_dump = dumped.frozen_time.count() > 0
                              ? std::chrono::duration<double>(dumped.frozen_time).count()
                              : Seconds(t1 - t0);
  return {frozen_in_dump + Seconds(t2 - t1), Seconds(t2 - t0), Seconds(t1 - t0), 0,
          Seconds(t2 - t1)};
}

// The end of a move whose images arrived in `recv_dir`: restore there, then release the
// source (stopped by its dump) and both directories. `t0`: the dump began; `dumped`: it
// ended.
Sample RestoreMoved(BenchJob& job, const std::string& dump_dir,
                    const std::string& recv_dir, Clock::time_point t0,
                    Clock::time_point dumped) {
  RemoveImageDir(dump_dir);
  auto received = Clock::now();
  Restored r = RestoreWithPipes(recv_dir, job.Inodes());
  auto restored = Clock::now();
  job.Kill();
  RemoveImageDir(recv_dir);
  auto done = Clock::now();
  KillJob(r.init);
  return {Seconds(restored - t0), Seconds(done - t0), Seconds(dumped - t0),
          Seconds(received - dumped), Seconds(restored - received)};
}

// Both ends of a TCP connection over loopback.
std::pair<Fd, Fd> LoopbackPair() {
  Fd listener = Fd::Adopt(HW_SYSCALL(socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0)));
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  HW_SYSCALL(bind(listener.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr));
  HW_SYSCALL(listen(listener.get(), 1));
  socklen_t len = sizeof addr;
  HW_SYSCALL(getsockname(listener.get(), reinterpret_cast<sockaddr*>(&addr), &len));
  Fd client = Fd::Adopt(HW_SYSCALL(socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0)));
  HW_SYSCALL(connect(client.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr));
  Fd server = Fd::Adopt(HW_SYSCALL(accept4(listener.get(), nullptr, nullptr, SOCK_CLOEXEC)));
  return {std::move(client), std::move(server)};
}

// Stop and copy: dump (job left stopped) to tmpfs, stream over loopback TCP into another
// directory, restore there, then release the source. Frozen: dump start to restored.
Sample StopAndCopy(size_t mib, const std::string& base) {
  BenchJob job = StartJob(mib);
  std::string dump_dir = base + "/dump", recv_dir = base + "/received";
  mkdir(dump_dir.c_str(), 0700);
  auto [source, target] = LoopbackPair();

  auto t0 = Clock::now();
  DumpOptions options;
  options.external_pipes = job.Inodes();
  Dump(job.init, dump_dir, options);
  auto t1 = Clock::now();
  std::thread receiver([&] { ReceiveImages(target.get(), recv_dir); });
  {
    SendOptions send;
    send.remove_sent_files = true;
    SendImages(source.get(), dump_dir, {}, send);
    source.Reset();
  }
  receiver.join();
  return RestoreMoved(job, dump_dir, recv_dir, t0, t1);
}

// A move as the daemons make it: the memory to a page server on the other side of the
// loopback connection while criu dumps, the rest of the images after it, then restore.
// In clear (the daemons' connections are encrypted: bench/run crypto shows that cost).
Sample Paged(size_t mib, const std::string& base) {
  BenchJob job = StartJob(mib);
  std::string dump_dir = base + "/dump", recv_dir = base + "/received";
  mkdir(dump_dir.c_str(), 0700);
  mkdir(recv_dir.c_str(), 0700);
  auto [source_fd, target_fd] = LoopbackPair();
  auto source = SecureStream::Plain(std::move(source_fd), "source");
  auto target = SecureStream::Plain(std::move(target_fd), "target");
  DumpOptions options;
  options.external_pipes = job.Inodes();
  auto t0 = Clock::now();
  Clock::time_point dumped;
  std::thread sender([&] {
    PageRelayOut pages(*source);
    options.pages = &pages;
    Dump(job.init, dump_dir, options);
    dumped = Clock::now();
    pages.Finish();
    SendOptions send;
    send.remove_sent_files = true;
    SendImages(*source, dump_dir, {}, send);
  });
  ReceivePages(*target, recv_dir);
  ReceiveOptions receive;
  receive.into_existing = true;
  ReceiveImages(*target, recv_dir, receive);
  sender.join();
  return RestoreMoved(job, dump_dir, recv_dir, t0, dumped);
}

Sample Median(std::vector<Sample> samples) {
  std::sort(samples.begin(), samples.end(),
            [](const Sample& a, const Sample& b) { return a.total < b.total; });
  return samples[samples.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<size_t> sizes{16, 256, 1024, 4096};
  int reps = 3;
  bool json = false;
  std::string base = "/dev/shm/homeward-migrate-bench";
  for (int i = 1; i + 1 < argc; i += 2) {
    std::string flag = argv[i], value = argv[i + 1];
    if (flag == "--json") {
      --i;
      continue;
    }
    if (flag == "--sizes") {
      sizes.clear();
      for (size_t at = 0; at <= value.size();) {
        size_t comma = std::min(value.find(',', at), value.size());
        sizes.push_back(std::stoul(value.substr(at, comma - at)));
        at = comma + 1;
      }
    } else if (flag == "--reps") {
      reps = std::stoi(value);
    } else if (flag == "--dir") {
      base = value;
    }
  }
  for (int i = 1; i < argc; ++i) json = json || std::string(argv[i]) == "--json";
  try {
    if (geteuid() != 0) Fail(ErrorKind::kInvalidInput, "the benchmark needs root (CRIU)");
    HW_SYSCALL(prctl(PR_SET_CHILD_SUBREAPER, 1));
    mkdir(base.c_str(), 0700);
    if (!json) {
      std::printf(
          "| memory | floor (dump+restore) | stop-and-copy total | paged frozen | paged total | "
          "paged total/floor | paged: dump / rest / restore |\n");
      std::printf("| --- | --- | --- | --- | --- | --- | --- |\n");
    }
    for (size_t mib : sizes) {
      int n = mib >= 1024 ? 1 : reps;
      std::vector<Sample> floors, huge_floors, copies, pages;
      for (int i = 0; i < n; ++i) {
        floors.push_back(Floor(mib, base, false));
        huge_floors.push_back(Floor(mib, base, true));
        copies.push_back(StopAndCopy(mib, base));
        pages.push_back(Paged(mib, base));
      }
      Sample f = Median(floors), h = Median(huge_floors), c = Median(copies), p = Median(pages);
      if (json) {
        auto sample = [](const Sample& x) {
          return fmt::format(
              R"({{"frozen": {:.3f}, "total": {:.3f}, "dump": {:.3f}, "stream": {:.3f}, )"
              R"("restore": {:.3f}}})",
              x.frozen, x.total, x.dump, x.stream, x.restore);
        };
        std::printf(
            "{\"mib\": %zu, \"floor\": %s, \"floor_huge\": %s, \"copy\": %s, \"paged\": %s}\n",
            mib, sample(f).c_str(), sample(h).c_str(), sample(c).c_str(), sample(p).c_str());
      } else {
        std::printf(
            "| %zu MiB | %.3f s | %.3f s | %.3f s | %.3f s | %.2fx | %.3f / %.3f / %.3f s |\n",
            mib, f.total, c.total, p.frozen, p.total, p.total / f.total, p.dump, p.stream,
            p.restore);
      }
      std::fflush(stdout);
    }
    rmdir(base.c_str());
  } catch (const Error& e) {
    std::fprintf(stderr, "migrate_bench: %s\n", e.what());
    return 1;
  }
  return 0;
}
