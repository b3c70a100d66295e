// The home's CPU per metadata request, in process: a FileSession with its change watcher
// and its replay log, as the file service runs them, fed requests directly (no network,
// no FUSE, no client), beside the bare system calls a local process makes for the same
// work, in one run. Served as root (trusted) and as an ordinary user (fs ids switched per
// thread). CPU time of the whole process (the watcher's included), per file. Run by
// bench/run file_service.
#include <fcntl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <exception>
#include <filesystem>
#include <functional>
#include <mutex>
#include <set>
#include <string>
#include <thread>

#include <CLI/CLI.hpp>
#include <capnp/message.h>

#include "error.h"
#include "fd.h"
#include "file_server.h"
#include "replay_cache.h"

using namespace homeward;
using Op = schema::FileOp;

namespace {

double CpuSeconds() {
  rusage u{};
  ::getrusage(RUSAGE_SELF, &u);
  return static_cast<double>(u.ru_utime.tv_sec + u.ru_stime.tv_sec) +
         static_cast<double>(u.ru_utime.tv_usec + u.ru_stime.tv_usec) / 1e6;
}

// Microseconds of CPU per file that `work` spends, and `settle` after it (the watcher's
// events for the work read).
double PerFile(int files, const std::function<void()>& work,
               const std::function<void()>& settle = {}) {
  double before = CpuSeconds();
  work();
  if (settle) settle();
  return (CpuSeconds() - before) / files * 1e6;
}

// Waits until a session's watcher has read every event of the work before: a name made
// in a watched directory behind the session's back is told to the session's client, and
// inotify reports events in order, so its notice comes after all of the work's events.
class WatcherSettles {
 public:
  void Notice(const std::string& name) {
    std::lock_guard lock(mutex_);
    told_.insert(name);
    cv_.notify_all();
  }
  void Settle(int dir_fd) {
    std::string name = "settled-" + std::to_string(++markers_);
    int fd = ::openat(dir_fd, name.c_str(), O_CREAT | O_WRONLY | O_CLOEXEC, 0644);
    if (fd < 0) throw SystemError(errno, "create " + name);
    ::close(fd);
    std::unique_lock lock(mutex_);
    if (!cv_.wait_for(lock, std::chrono::seconds(30), [&] { return told_.count(name) > 0; })) {
      throw Error(ErrorKind::kFailed,
                  "the change watcher did not tell of " + name + " within 30 s", 0);
    }
  }

 private:
  std::mutex mutex_;
  std::condition_variable cv_;
  std::set<std::string> told_;
  int markers_ = 0;
};

struct Costs {
  double create, lookup, unlink;
};

Costs Bare(const std::string& dir, int files) {
  Fd d = Fd::Open(dir, O_PATH | O_DIRECTORY);
  auto name = [](int i) { return "f" + std::to_string(i); };
  Costs c{};
  c.create = PerFile(files, [&] {
    for (int i = 0; i < files; ++i) {
      int fd = ::openat(d.get(), name(i).c_str(), O_CREAT | O_WRONLY | O_CLOEXEC, 0644);
      if (fd < 0) throw SystemError(errno, "create");
      ::close(fd);
    }
  });
  c.lookup = PerFile(files, [&] {
    struct stat st;
    for (int i = 0; i < files; ++i) ::fstatat(d.get(), name(i).c_str(), &st, AT_SYMLINK_NOFOLLOW);
  });
  c.unlink = PerFile(files, [&] {
    for (int i = 0; i < files; ++i) ::unlinkat(d.get(), name(i).c_str(), 0);
  });
  return c;
}

// A client's requests as homefs sends them: a create with its release and its forget, a
// lookup, an unlink with its forget. Answers go out in runs, as a connection's do: the
// replay log's deferred records are written once per run of eight.
Costs Served(const std::string& export_dir, const std::string& state_dir, uint32_t uid,
             int files) {
  Fd root = Fd::Open(export_dir, O_PATH | O_DIRECTORY);
  ReplayCache replay(state_dir + "/files-replay");
  FileSession session(root.get(), FileSession::Root::kTrust, &replay);
  WatcherSettles watcher;
  session.Watch([&](uint64_t, uint64_t, const std::string& name) { watcher.Notice(name); });
  uint64_t id = 0;
  struct Answer {
    int error;
    uint64_t node, fh;
  };
  auto call = [&](Op op, uint64_t node, const std::string& name,
                  const std::function<void(schema::FileRequest::Builder)>& fill = {}) {
    capnp::MallocMessageBuilder in, out;
    auto rq = in.initRoot<schema::FileRequest>();
    rq.setVersion(schema::FILES_VERSION);
    rq.setOp(op);
    rq.setId(++id);
    rq.setNode(node);
    rq.setName(name);
    auto cred = rq.initCred();
    cred.setUid(uid);
    cred.setGid(uid);
    if (fill) fill(rq);
    auto rs = out.initRoot<schema::FileResponse>();
    session.Handle(rq.asReader(), rs);
    if (id % 8 == 0) replay.WriteDeferred();
    if (rs.getError() != 0 && op != Op::FORGET && op != Op::RELEASE) {
      throw SystemError(rs.getError(), "request " + std::to_string(static_cast<int>(op)));
    }
    return Answer{rs.getError(), rs.hasEntry() ? rs.getEntry().getNode() : 0, rs.getFh()};
  };
  auto forget = [](schema::FileRequest::Builder rq) { rq.setSize(1); };
  call(Op::HELLO, 0, "", [](auto rq) { rq.setClient(0xbe4c); });
  uint64_t dir = call(Op::LOOKUP, 1, "dir").node;
  Fd dir_fd = Fd::Open(export_dir + "/dir", O_PATH | O_DIRECTORY);
  auto settle = [&] { watcher.Settle(dir_fd.get()); };
  auto name = [](int i) { return "f" + std::to_string(i); };
  std::vector<uint64_t> nodes(static_cast<size_t>(files));
  Costs c{};
  c.create = PerFile(files, [&] {
    for (int i = 0; i < files; ++i) {
      auto made = call(Op::CREATE, dir, name(i), [](auto rq) {
        rq.setFlags(O_WRONLY);
        rq.setMode(S_IFREG | 0644);
      });
      call(Op::RELEASE, 0, "", [&](auto rq) { rq.setFh(made.fh); });
      call(Op::FORGET, made.node, "", forget);
    }
  }, settle);
  c.lookup = PerFile(files, [&] {
    for (int i = 0; i < files; ++i) {
      nodes[static_cast<size_t>(i)] = call(Op::LOOKUP, dir, name(i)).node;
    }
  }, settle);
  c.unlink = PerFile(files, [&] {
    for (int i = 0; i < files; ++i) {
      call(Op::UNLINK, dir, name(i));
      call(Op::FORGET, nodes[static_cast<size_t>(i)], "", forget);
    }
  }, settle);
  return c;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"The home's CPU per metadata request, beside the bare system calls"};
  std::string where = "/tmp";
  int files = 10000;
  app.add_option("--dir", where, "where the trees are made (a tmpfs leaves the disk out)");
  app.add_option("--files", files, "files per row");
  CLI11_PARSE(app, argc, argv);
  if (::geteuid() != 0) {
    std::fprintf(stderr, "file_service_bench: run as root (it serves an ordinary user too)\n");
    return 2;
  }
  namespace fs = std::filesystem;
  std::string base = where + "/homeward-file-service-bench." + std::to_string(::getpid());
  constexpr uint32_t kUser = 65534;  // nobody: served with its own fs ids
  int status = 0;
  try {
    std::printf("| caller | request | bare system calls (us CPU) | file service (us CPU) | "
                "service/bare |\n|---|---|---:|---:|---:|\n");
    for (auto [who, uid] : {std::pair{"root", 0u}, std::pair{"user", kUser}}) {
      std::string run = base + "/" + who;
      fs::create_directories(run + "/bare");
      fs::create_directories(run + "/export/dir");
      fs::create_directories(run + "/state");
      for (const char* d : {"/bare", "/export/dir"}) {
        if (::chown((run + d).c_str(), uid, uid) != 0) throw SystemError(errno, "chown");
      }
      Costs bare = Bare(run + "/bare", files);
      // Served on a thread of its own: a session takes the caller's fs ids on the thread
      // that serves it and keeps them, and this one still has the trees to remove.
      Costs served{};
      std::exception_ptr failed;
      std::thread([&] {
        try {
          served = Served(run + "/export", run + "/state", uid, files);
        } catch (...) {
          failed = std::current_exception();
        }
      }).join();
      if (failed) std::rethrow_exception(failed);
      for (auto [request, b, s] :
           {std::tuple{"create (+ release, forget)", bare.create, served.create},
            std::tuple{"lookup", bare.lookup, served.lookup},
            std::tuple{"unlink (+ forget)", bare.unlink, served.unlink}}) {
        std::printf("| %s | %s | %.1f | %.1f | %.2fx |\n", who, request, b, s, s / b);
      }
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "file_service_bench: %s\n", e.what());
    status = 1;
  }
  std::error_code ec;
  fs::remove_all(base, ec);
  return status;
}
