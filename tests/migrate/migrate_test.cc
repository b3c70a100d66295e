// Whole-job checkpoint, stream and restore with real CRIU, in the zdtm shape: the workload
// builds state and says ready, is moved (dump, stream over a socketpair, restore with
// fresh pipes), checks itself, and its output must equal that of a run never moved.
// Failure cases leave the source job running. Needs root: skips (77) otherwise.
#include <fcntl.h>
#include <net/if.h>
#include <sched.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <dirent.h>

#include <cstring>
#include <fstream>
#include <map>
#include <regex>
#include <thread>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "checkpoint.h"
#include "error.h"
#include "fd.h"
#include "image_stream.h"
#include "page_relay.h"
#include "secure_channel.h"
#include "scratch_dir.h"
#include "workload_memory.h"

namespace homeward::migrate {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

bool Exists(const std::string& path) {
  struct stat st;
  return ::lstat(path.c_str(), &st) == 0;
}

std::vector<std::string> ListDir(const std::string& dir) {
  std::vector<std::string> names;
  std::unique_ptr<DIR, int (*)(DIR*)> handle(::opendir(dir.c_str()), ::closedir);
  if (!handle) return names;
  while (dirent* e = ::readdir(handle.get())) {
    if (e->d_name[0] != '.') names.push_back(e->d_name);
  }
  std::sort(names.begin(), names.end());
  return names;
}

// A process's descriptors and memory map, with what legitimately changes on a move
// (pipe inodes, inode numbers of files) left out: the shape zdtm compares.
std::string Shape(pid_t pid) {
  std::string shape;
  std::string fd_dir = fmt::format("/proc/{}/fd", pid);
  for (const auto& fd : ListDir(fd_dir)) {
    char target[4096];
    ssize_t n = ::readlink((fd_dir + "/" + fd).c_str(), target, sizeof target);
    std::string link(target, n > 0 ? static_cast<size_t>(n) : 0);
    shape += fd + " -> " + std::regex_replace(link, std::regex("\\[[0-9]+\\]"), "[]") + "\n";
  }
  // Adjacent mappings of the same file, permissions and contiguous offsets are one
  // region: whether the kernel keeps them as one VMA or two differs after a restore.
  struct Region {
    uint64_t start, end, offset;
    std::string perms, path;
  };
  std::vector<Region> regions;
  std::istringstream maps(ReadFile(fmt::format("/proc/{}/maps", pid)));
  std::string line;
  while (std::getline(maps, line)) {
    std::istringstream fields(line);
    std::string range, perms, offset, dev, inode, path;
    fields >> range >> perms >> offset >> dev >> inode >> path;
    Region r{std::stoull(range.substr(0, range.find('-')), nullptr, 16),
             std::stoull(range.substr(range.find('-') + 1), nullptr, 16),
             std::stoull(offset, nullptr, 16), perms, path};
    if (!regions.empty()) {
      Region& last = regions.back();
      if (last.end == r.start && last.perms == r.perms && last.path == r.path &&
          (r.path.empty() || last.offset + (last.end - last.start) == r.offset)) {
        last.end = r.end;
        continue;
      }
    }
    regions.push_back(r);
  }
  for (const auto& r : regions) {
    shape += fmt::format("{:x}-{:x} {} {:x} {}\n", r.start, r.end, r.perms, r.offset, r.path);
  }
  return shape;
}

// A job as the daemon will hold it: pid 1 (job_init) in new PID, mount and UTS
// namespaces, our child; stdio and the status pipe are pipes whose other ends we hold.
struct Job {
  pid_t init = -1;
  Fd in, out, err, status;
  std::string output;  // stdout so far
  int steps = 0;

  Job() = default;
  Job(Job&& other) noexcept { *this = std::move(other); }
  Job& operator=(Job&& other) noexcept {
    KillJob(std::exchange(init, std::exchange(other.init, -1)));
    in = std::move(other.in);
    out = std::move(other.out);
    err = std::move(other.err);
    status = std::move(other.status);
    output = std::move(other.output);
    steps = other.steps;
    return *this;
  }
  ~Job() { KillJob(init); }

  // The workload (pid 2 inside). Throws rather than return a pid kill() would misread.
  pid_t Program() const {
    auto pids = JobPids(init);
    if (pids.size() < 2) throw Error(ErrorKind::kNotFound, "job has no program process");
    return pids[1];
  }
  std::vector<uint64_t> PipeInodes() const {
    return {PipeInode(in.get()), PipeInode(out.get()), PipeInode(err.get()),
            PipeInode(status.get())};
  }
  // Reads stdout until `marker` has arrived.
  void ReadUntil(const std::string& marker) {
    char buffer[4096];
    while (output.find(marker) == std::string::npos) {
      size_t n = ReadSome(out.get(), buffer, sizeof buffer, "job stdout");
      if (n == 0) throw Error(ErrorKind::kDisconnected, "job stdout closed: " + output);
      output.append(buffer, n);
    }
  }
  // Runs `n` steps and waits until they are done, so no input is left in the stdin pipe.
  void Step(int n) {
    for (int i = 0; i < n; ++i) WriteAll(in.get(), "step\n", 5, "job stdin");
    steps += n;
    ReadUntil(fmt::format("step {} ", steps));
  }
  // Ends the input and returns the job's whole stdout and exit status.
  int Finish() {
    in.Reset();
    ReadUntil("final ");
    char buffer[4096];
    while (size_t n = ReadSome(out.get(), buffer, sizeof buffer, "job stdout")) {
      output.append(buffer, n);
    }
    int status = 0;
    ::waitpid(init, &status, 0);
    init = -1;
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  }
};

// A new network namespace's loopback is down; criu probes TCP repair on it at start-up.
bool BringUpLoopback() {
  int sock = ::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (sock < 0) return false;
  ifreq request{};
  std::strncpy(request.ifr_name, "lo", IFNAMSIZ - 1);
  bool up = ::ioctl(sock, SIOCGIFFLAGS, &request) == 0;
  request.ifr_flags = static_cast<short>(request.ifr_flags | IFF_UP);
  up = up && ::ioctl(sock, SIOCSIFFLAGS, &request) == 0;
  ::close(sock);
  return up;
}

// `extra_flags`: more namespaces for the job (CLONE_NEWNET: a guest's network of its own).
// `workload`: what the init runs (it takes the input and append paths as its arguments).
Job StartJob(const std::string& input, const std::string& append, long extra_flags = 0,
             std::string workload = WORKLOAD_PATH) {
  Pipe in = Pipe::Create(), out = Pipe::Create(), err = Pipe::Create(), status = Pipe::Create();
  std::string init_path = JOB_INIT_PATH;
  char* argv[] = {init_path.data(), workload.data(), const_cast<char*>(input.c_str()),
                  const_cast<char*>(append.c_str()), nullptr};
  long pid = ::syscall(SYS_clone, CLONE_NEWPID | CLONE_NEWNS | CLONE_NEWUTS | extra_flags | SIGCHLD,
                       nullptr, nullptr, nullptr, nullptr);
  if (pid < 0) throw SystemError(errno, "clone job");
  if (pid == 0) {
    if (dup2(in.read.get(), 0) < 0 || dup2(out.write.get(), 1) < 0 ||
        dup2(err.write.get(), 2) < 0 || dup2(status.write.get(), 3) < 0) {
      _exit(126);
    }
    syscall(SYS_close_range, 4, ~0U, 0);  // the job holds no other inherited descriptor
    if ((extra_flags & CLONE_NEWNET) && !BringUpLoopback()) _exit(125);
    mount(nullptr, "/", nullptr, MS_REC | MS_PRIVATE, nullptr);
    execv(argv[0], argv);
    _exit(127);
  }
  Job job;
  job.init = static_cast<pid_t>(pid);
  job.in = std::move(in.write);
  job.out = std::move(out.read);
  job.err = std::move(err.read);
  job.status = std::move(status.read);
  char ready[6];
  size_t got = ReadSome(job.status.get(), ready, sizeof ready, "job status");
  if (got != 6 || std::string(ready, 6) != "ready\n") {
    throw Error(ErrorKind::kFailed, "job did not say ready");
  }
  return job;
}

// The migration stream over a socket pair, after the dump: into `received`.
ReceivedImages CarryAfterDump(const std::string& images, const std::string& received,
                              const JobMetadata& meta, const SendOptions& options) {
  int fds[2];
  HW_SYSCALL(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds), "socketpair");
  Fd send = Fd::Adopt(fds[0]), receive = Fd::Adopt(fds[1]);
  std::thread sender([&] {
    try {
      SendImages(send.get(), images, meta, options);
    } catch (const Error&) {
      // The receiver sees the cut stream and says so.
    }
    send.Reset();
  });
  try {
    auto got = ReceiveImages(receive.get(), received);
    sender.join();
    return got;
  } catch (...) {
    receive.Reset();
    sender.join();
    throw;
  }
}

// The job's memory to a page server while criu dumps (`dump` left stopped), the rest of
// the images in the migration stream after it, all on one connection (in clear).
ReceivedImages CarryWhileDumping(const Job& job, const std::string& images,
                                 const std::string& received, DumpOptions dump,
                                 const JobMetadata& meta, const SendOptions& options,
                                 const PageReceiveOptions& page_options) {
  int fds[2];
  HW_SYSCALL(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds), "socketpair");
  auto source = SecureStream::Plain(Fd::Adopt(fds[0]), "source");
  auto target = SecureStream::Plain(Fd::Adopt(fds[1]), "target");
  std::exception_ptr send_error;
  std::thread sender([&] {
    try {
      PageRelayOut pages(*source);
      dump.pages = &pages;
      Dump(job.init, images, dump);
      pages.Finish();
      SendImages(*source, images, meta, options);
    } catch (...) {
      send_error = std::current_exception();
    }
    source.reset();
  });
  HW_SYSCALL(::mkdir(received.c_str(), 0700), "create {}", received);
  try {
    ReceivePages(*target, received, page_options);
    ReceiveOptions receive;
    receive.into_existing = true;
    auto got = ReceiveImages(*target, received, receive);
    sender.join();
    if (send_error) std::rethrow_exception(send_error);
    return got;
  } catch (...) {
    target.reset();
    sender.join();
    RemoveImageDir(received);
    // The dump's own failure is the cause; the receiver only saw the connection end.
    if (send_error) std::rethrow_exception(send_error);
    throw;
  }
}

class MigrateTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_EQ(::prctl(PR_SET_CHILD_SUBREAPER, 1), 0);
    input_ = dir_ + "/input";
    std::ofstream in(input_);
    for (int i = 0; i < 1000; ++i) in << fmt::format("A{:014d}\n", i);
  }
  // The output of a run that is never moved, for the same steps.
  std::string UnmovedRun(const std::vector<int>& step_groups, bool usr1) {
    Job job = StartJob(input_, dir_ + "/append-unmoved");
    for (size_t i = 0; i < step_groups.size(); ++i) {
      if (usr1 && i == 1) ::kill(job.Program(), SIGUSR1);
      job.Step(step_groups[i]);
    }
    EXPECT_EQ(job.Finish(), 0);
    return job.output;
  }

  // The restored job (`init`, its pipes' other ends) takes over from `job`: the stopped
  // source is killed and what it had already written is kept.
  static void ReleaseSource(Job& job, pid_t init, Pipe& in, Pipe& out, Pipe& err, Pipe& status) {
    Job moved;
    moved.init = init;
    moved.in = std::move(in.write);
    moved.out = std::move(out.read);
    moved.err = std::move(err.read);
    moved.status = std::move(status.read);
    moved.steps = job.steps;
    KillJob(job.init);
    job.init = -1;
    char buffer[4096];
    while (size_t n = ReadSome(job.out.get(), buffer, sizeof buffer, "old stdout")) {
      job.output.append(buffer, n);
    }
    moved.output = std::move(job.output);
    job = std::move(moved);
  }

  // How a move carries the job's images: dumped into a directory, then streamed (as a
  // checkpoint is kept), or the memory to a page server while criu dumps (as the daemons
  // move jobs).
  enum class Carry { kAfterDump, kPagesWhileDumping };

  // Moves `job` as the daemons do: dump (left stopped), carry the images over a
  // socketpair into a fresh directory, restore with fresh pipes, then kill the stopped
  // source. Any failure continues the source job and rethrows.
  void Move(Job& job, const FaultPoints& faults = {}, int mount_ns = -1, int net_ns = -1,
            Carry carry = Carry::kPagesWhileDumping, const PageReceiveOptions& page_options = {}) {
    std::string images = dir_ + "/dump", received = dir_ + "/received";
    ASSERT_EQ(::mkdir(images.c_str(), 0700), 0);
    auto inodes = job.PipeInodes();
    DumpOptions dump;
    dump.external_pipes = inodes;
    dump.faults = faults;
    SendOptions send_options;
    send_options.faults = faults;
    send_options.remove_sent_files = true;
    JobMetadata meta;
    meta.external_pipes = {{inodes[0], "stdin"},
                           {inodes[1], "stdout"},
                           {inodes[2], "stderr"},
                           {inodes[3], "status"}};
    try {
      std::optional<ReceivedImages> got;
      if (carry == Carry::kAfterDump) {
        Dump(job.init, images, dump);
        got = CarryAfterDump(images, received, meta, send_options);
      } else {
        got = CarryWhileDumping(job, images, received, dump, meta, send_options, page_options);
      }
      RemoveImageDir(images);
      // The target's side: fresh pipes, found by role.
      Pipe in = Pipe::Create(), out = Pipe::Create(), err = Pipe::Create(), status = Pipe::Create();
      RestoreOptions restore;
      std::map<std::string, int> by_role{{"stdin", in.read.get()},
                                         {"stdout", out.write.get()},
                                         {"stderr", err.write.get()},
                                         {"status", status.write.get()}};
      for (const auto& pipe : got->job.external_pipes) {
        restore.pipes.push_back({pipe.inode, by_role.at(pipe.role)});
      }
      restore.faults = faults;
      restore.huge_pages = huge_pages_;
      restore.mount_namespace_fd = mount_ns;
      restore.net_namespace_fd = net_ns;
      RestoreResult restored;
      try {
        restored = Restore(received, restore);
      } catch (...) {
        RemoveImageDir(received);
        throw;
      }
      RemoveImageDir(received);
      // Only now is the source released.
      ReleaseSource(job, restored.init_pid, in, out, err, status);
    } catch (...) {
      RemoveImageDir(images);
      ContinueJob(job.init);
      throw;
    }
  }

  // Moves `job` lazily, as the daemons do with [migration] lazy_pages: a lazy dump (left
  // stopped) whose memory criu serves on a connection of its own, a restore that runs the
  // job at once and pulls the memory over that connection, then the stopped source
  // killed. `cut`: the target holds the source's first answer, and the page connection is
  // cut while the restored job waits for it. Any failure continues the source job (criu
  // does) and rethrows.
  void MoveLazily(Job& job, bool cut = false) {
    std::string images = dir_ + "/dump";
    ASSERT_EQ(::mkdir(images.c_str(), 0700), 0);
    int fds[2];
    HW_SYSCALL(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds), "socketpair");
    auto source = SecureStream::Plain(Fd::Adopt(fds[0]), "source");
    auto relay = std::make_unique<LazyPageRelayIn>(
        SecureStream::Plain(Fd::Adopt(fds[1]), "target"), cut);
    PageRelayOut pages(*source);
    DumpOptions dump;
    dump.external_pipes = job.PipeInodes();
    dump.pages = &pages;
    dump.lazy = true;
    DumpResult dumped = Dump(job.init, images, dump);
    ASSERT_TRUE(dumped.lazy);
    // The images but the memory: a few hundred KiB whatever the job's size.
    EXPECT_LT(dumped.image_bytes, 4u << 20);
    std::exception_ptr source_error;
    std::thread serving([&] {
      try {
        dumped.lazy->Finish();
        pages.Finish();
      } catch (...) {
        source_error = std::current_exception();
      }
    });
    Pipe in = Pipe::Create(), out = Pipe::Create(), err = Pipe::Create(), status = Pipe::Create();
    RestoreOptions restore;
    auto inodes = job.PipeInodes();
    int ends[4] = {in.read.get(), out.write.get(), err.write.get(), status.write.get()};
    for (int i = 0; i < 4; ++i) restore.pipes.push_back({inodes[i], ends[i]});
    restore.lazy_pages_socket = relay->socket();
    // The dump's criu still works in the images' own scratch directory.
    ScratchDir restore_work{"homeward-migrate-restore"};
    restore.work_dir = restore_work.path();
    std::exception_ptr target_error;
    RestoreResult restored;
    // The connection ends while the restored job waits for its memory.
    std::thread cutter([&] {
      if (!cut) return;
      for (int i = 0; i < 600 && !relay->holding(); ++i) {
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
      }
      relay->Cut();
    });
    try {
      // This job's memory is small: it all comes while criu restores it (whose last
      // steps touch it), so the hold is armed from the start and the cut comes then.
      relay->Restored();
      restored = Restore(images, restore);
      restored.lazy->Finish();
      relay->Finish();
    } catch (...) {
      target_error = std::current_exception();
      if (restored.init_pid > 0) KillJob(restored.init_pid);
    }
    cutter.join();
    relay.reset();
    serving.join();
    RemoveImageDir(images);
    if (target_error || source_error) {
      ContinueJob(job.init);
      std::rethrow_exception(target_error ? target_error : source_error);
    }
    ReleaseSource(job, restored.init_pid, in, out, err, status);
  }

  ScratchDir scratch_{"homeward-migrate"};
  std::string dir_ = scratch_.path(), input_;
  bool huge_pages_ = true;  // Move's restore: RestoreOptions::huge_pages
};

// What /proc/PID/smaps says of the mapping that starts at `start` (kB; -1: no such).
struct MappingMemory {
  long rss_kb = -1, huge_kb = -1;
  std::string flags;
};
MappingMemory MemoryAt(pid_t pid, uintptr_t start) {
  MappingMemory found;
  std::istringstream smaps(ReadFile(fmt::format("/proc/{}/smaps", pid)));
  std::string line, header = fmt::format("{:x}-", start);
  bool in_it = false;
  while (std::getline(smaps, line)) {
    // A mapping's first line starts with its range; each of its fields with "Name:".
    std::string first = line.substr(0, line.find(' '));
    if (!first.empty() && first.back() != ':') {
      in_it = line.starts_with(header);
    } else if (in_it && line.starts_with("Rss:")) {
      found.rss_kb = std::stol(line.substr(4));
    } else if (in_it && line.starts_with("AnonHugePages:")) {
      found.huge_kb = std::stol(line.substr(14));
    } else if (in_it && line.starts_with("VmFlags:")) {
      found.flags = line.substr(8) + " ";
    }
  }
  return found;
}

using workload::kDenseMemory, workload::kNoHugeMemory, workload::kSharedMemory,
    workload::kSparseMemory;

TEST_F(MigrateTest, LazilyMovedJobMatchesUnmovedRun) {
  std::string expected = UnmovedRun({5, 5, 5}, true);
  Job job = StartJob(input_, dir_ + "/append");
  job.Step(5);
  std::string before = Shape(job.Program());
  MoveLazily(job);
  EXPECT_EQ(Shape(job.Program()), before);
  ::kill(job.Program(), SIGUSR1);
  job.Step(5);
  MoveLazily(job);
  job.Step(5);
  EXPECT_EQ(job.Finish(), 0) << job.output;
  EXPECT_EQ(job.output, expected);
  EXPECT_EQ(ReadFile(dir_ + "/append"), ReadFile(dir_ + "/append-unmoved"));
}

TEST_F(MigrateTest, PageConnectionCutMidLazyMoveLeavesSourceRunning) {
  std::string expected = UnmovedRun({2, 2}, false);
  Job job = StartJob(input_, dir_ + "/append");
  job.Step(2);
  try {
    MoveLazily(job, true);
    ADD_FAILURE() << "a lazy move succeeded without its memory";
  } catch (const Error& e) {
    // The restored copy, which could not have all its memory, was killed by lazy-pages.
    EXPECT_THAT(e.what(), HasSubstr("lazy-pages"));
  }
  EXPECT_FALSE(Exists(dir_ + "/dump"));
  job.Step(2);
  EXPECT_EQ(job.Finish(), 0);
  EXPECT_EQ(job.output, expected);
}

TEST_F(MigrateTest, MovedJobMatchesUnmovedRun) {
  std::string expected = UnmovedRun({5, 5, 5}, true);
  Job job = StartJob(input_, dir_ + "/append");
  job.Step(5);
  std::string before = Shape(job.Program());
  Move(job);
  EXPECT_EQ(Shape(job.Program()), before);
  ::kill(job.Program(), SIGUSR1);
  job.Step(5);
  Move(job, {}, -1, -1, Carry::kAfterDump);
  job.Step(5);
  EXPECT_EQ(job.Finish(), 0) << job.output;
  EXPECT_EQ(job.output, expected);
  EXPECT_THAT(job.output,
              HasSubstr("final steps=15 usr1=1 offset=240 timer=ok child=ok memory=ok"));
  EXPECT_EQ(ReadFile(dir_ + "/append"), ReadFile(dir_ + "/append-unmoved"));
}

TEST_F(MigrateTest, TargetRefusingPagesMidDumpLeavesSourceRunning) {
  std::string expected = UnmovedRun({2, 2}, false);
  Job job = StartJob(input_, dir_ + "/append");
  job.Step(2);
  PageReceiveOptions small;
  small.max_bytes = 64 << 10;
  small.max_what = "this test's limit";
  try {
    Move(job, {}, -1, -1, Carry::kPagesWhileDumping, small);
    ADD_FAILURE() << "move succeeded past the target's limit";
  } catch (const Error& e) {
    // criu's dump stops, and its error says why the target would take no more.
    EXPECT_THAT(e.what(), HasSubstr("criu dump"));
    EXPECT_THAT(e.what(), HasSubstr("are more than this test's limit"));
  }
  EXPECT_FALSE(Exists(dir_ + "/received"));
  EXPECT_FALSE(Exists(dir_ + "/dump"));
  job.Step(2);
  EXPECT_EQ(job.Finish(), 0);
  EXPECT_EQ(job.output, expected);
}

TEST_F(MigrateTest, StreamCutLeavesJobRunning) {
  std::string expected = UnmovedRun({3, 3}, false);
  Job job = StartJob(input_, dir_ + "/append");
  job.Step(3);
  try {
    Move(job, FaultPoints::Parse("stream-mid"));
    ADD_FAILURE() << "move succeeded";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kDisconnected) << e.what();
  }
  EXPECT_FALSE(Exists(dir_ + "/received"));
  EXPECT_FALSE(Exists(dir_ + "/dump"));
  job.Step(3);
  EXPECT_EQ(job.Finish(), 0);
  EXPECT_EQ(job.output, expected);
}

TEST_F(MigrateTest, FailedRestoreLeavesSourceRunningAndNothingHalfAlive) {
  std::string expected = UnmovedRun({2, 2, 2, 2}, false);
  Job job = StartJob(input_, dir_ + "/append");
  job.Step(2);
  for (const char* fault : {"restore-criu", "restore-after-criu"}) {
    try {
      Move(job, FaultPoints::Parse(fault));
      ADD_FAILURE() << "move succeeded with " << fault;
    } catch (const Error& e) {
      // restore-criu fails criu at its post-restore step, after the job was restored
      // (criu's log names the failing script), not at its first step.
      if (fault == std::string("restore-criu")) {
        EXPECT_THAT(e.what(), HasSubstr("criu restore"));
        EXPECT_THAT(e.what(), HasSubstr("fault-post-restore exited"));
      } else {
        EXPECT_THAT(e.what(), HasSubstr(fault));
      }
    }
    // Our only child is still the source job: nothing restored was left behind.
    EXPECT_EQ(ListDir("/proc/self/task").size() >= 1, true);
    std::string children = ReadFile(fmt::format("/proc/self/task/{}/children", ::getpid()));
    EXPECT_EQ(children, fmt::format("{} ", job.init)) << fault;
    EXPECT_FALSE(Exists(dir_ + "/received"));
    job.Step(2);
  }
  // A restore from an image directory that cannot be read fails cleanly too.
  try {
    Restore(dir_ + "/no-such-images");
    ADD_FAILURE() << "restore succeeded";
  } catch (const Error& e) {
    EXPECT_THAT(e.what(), HasSubstr("no-such-images"));
  }
  job.Step(2);
  EXPECT_EQ(job.Finish(), 0);
  EXPECT_EQ(job.output, expected);
}

// dump-criu fails criu at its post-dump step, once the images are written: criu thaws the
// job, which runs on with all of its output.
TEST_F(MigrateTest, DumpFailingAtItsLastStepLeavesSourceRunning) {
  std::string expected = UnmovedRun({2, 2}, false);
  Job job = StartJob(input_, dir_ + "/append");
  job.Step(2);
  try {
    Move(job, FaultPoints::Parse("dump-criu"));
    ADD_FAILURE() << "move succeeded with dump-criu";
  } catch (const Error& e) {
    EXPECT_THAT(e.what(), HasSubstr("criu dump"));
    EXPECT_THAT(e.what(), HasSubstr("fault-post-dump exited"));
  }
  EXPECT_FALSE(Exists(dir_ + "/dump"));
  job.Step(2);
  EXPECT_EQ(job.Finish(), 0);
  EXPECT_EQ(job.output, expected);
}

TEST_F(MigrateTest, RepeatedMovesLeakNothing) {
  Job job = StartJob(input_, dir_ + "/append");
  job.Step(1);
  Move(job);  // the first move loads what stays loaded (libraries, caches)
  auto fds = ListDir("/proc/self/fd");
  auto files = ListDir(dir_);
  for (int i = 0; i < 20; ++i) {
    Move(job);
    job.Step(1);
  }
  // The job's pipes are new after each move, so their numbers may differ; not their count.
  EXPECT_EQ(ListDir("/proc/self/fd").size(), fds.size());
  EXPECT_EQ(ListDir(dir_), files);
  std::string children = ReadFile(fmt::format("/proc/self/task/{}/children", ::getpid()));
  EXPECT_EQ(children, fmt::format("{} ", job.init));
  EXPECT_EQ(JobPids(job.init).size(), 3u);  // init, workload, its child
  EXPECT_EQ(job.Finish(), 0);
  EXPECT_THAT(job.output,
              HasSubstr("final steps=21 usr1=0 offset=336 timer=ok child=ok memory=ok"));
}

// A dump that stops the job between a seccomp trap and its SIGSYS handler (the job shim
// traps pid and fork calls so) must not lose the trap: criu's parasite used to meet the
// pending SIGSYS in place of its own SIGTRAP, fail, and drop it, and the trapped call
// came back as its own number (getpid 39; a shell's fork would get 56, a child that
// never was).
TEST_F(MigrateTest, MovesLoseNoTrappedSystemCall) {
  Job job = StartJob(input_, dir_ + "/append", 0, TRAPPED_CALLS_PATH);
  for (int i = 0; i < 25; ++i) Move(job);
  EXPECT_EQ(job.Finish(), 0);
  EXPECT_THAT(job.output, HasSubstr(" lost=0\n"));
  EXPECT_THAT(job.output, Not(HasSubstr("calls=0 ")));
}

// A holder of a mount namespace in which the job's input path is another file, the way
// a target node's /mosix/home/<home> is homefs rather than the home's own tree.
TEST_F(MigrateTest, RestoreInAnotherMountNamespaceReopensFilesByPath) {
  std::string other = dir_ + "/other-input";
  {
    std::ofstream out(other);
    for (int i = 0; i < 1000; ++i) out << fmt::format("B{:014d}\n", i);
  }
  Pipe ready = Pipe::Create();
  pid_t holder = ::fork();
  ASSERT_GE(holder, 0);
  if (holder == 0) {
    if (::unshare(CLONE_NEWNS) < 0 ||
        ::mount(nullptr, "/", nullptr, MS_REC | MS_PRIVATE, nullptr) < 0 ||
        ::mount(other.c_str(), input_.c_str(), nullptr, MS_BIND, nullptr) < 0) {
      _exit(1);
    }
    (void)!::write(ready.write.get(), "x", 1);
    ::pause();
    _exit(0);
  }
  ready.write.Reset();
  char c;
  ASSERT_EQ(ReadSome(ready.read.get(), &c, 1, "holder"), 1u);
  Fd ns = Fd::Open(fmt::format("/proc/{}/ns/mnt", holder), O_RDONLY);

  Job job = StartJob(input_, dir_ + "/append");
  job.Step(2);
  try {
    Move(job, {}, ns.get());
  } catch (...) {
    ::kill(holder, SIGKILL);
    ::waitpid(holder, nullptr, 0);
    throw;
  }
  ::kill(holder, SIGKILL);
  ::waitpid(holder, nullptr, 0);
  job.Step(2);
  EXPECT_EQ(job.Finish(), 0);
  // Steps 1-2 read the home's file; 3-4 read the other namespace's file at the offset.
  EXPECT_THAT(job.output, HasSubstr("step 2 input=A00000000000001 "));
  EXPECT_THAT(job.output, HasSubstr("step 3 input=B00000000000002 "));
  EXPECT_THAT(job.output, HasSubstr("step 4 input=B00000000000003 "));
}

uint64_t NetNamespace(pid_t pid) {
  struct stat st {};
  if (::stat(fmt::format("/proc/{}/ns/net", pid).c_str(), &st) != 0) return 0;
  return st.st_ino;
}

// A guest: a job in a network namespace of its own is dumped with criu in that namespace
// (so the images hold none) and lands in the one its target prepared, not in a copy of
// its old one nor in the node's.
TEST_F(MigrateTest, JobInItsOwnNetworkNamespaceLandsInThePreparedOne) {
  Pipe ready = Pipe::Create();
  pid_t holder = ::fork();
  ASSERT_GE(holder, 0);
  if (holder == 0) {
    if (::unshare(CLONE_NEWNET) < 0 || !BringUpLoopback()) _exit(1);
    (void)!::write(ready.write.get(), "x", 1);
    ::pause();
    _exit(0);
  }
  ready.write.Reset();
  char c;
  ASSERT_EQ(ReadSome(ready.read.get(), &c, 1, "holder"), 1u);
  Fd ns = Fd::Open(fmt::format("/proc/{}/ns/net", holder), O_RDONLY);
  uint64_t prepared = NetNamespace(holder);

  Job job = StartJob(input_, dir_ + "/append", CLONE_NEWNET);
  uint64_t own = NetNamespace(job.init);
  EXPECT_NE(own, NetNamespace(::getpid()));
  job.Step(2);
  try {
    Move(job, {}, -1, ns.get());
  } catch (...) {
    ::kill(holder, SIGKILL);
    ::waitpid(holder, nullptr, 0);
    throw;
  }
  ::kill(holder, SIGKILL);
  ::waitpid(holder, nullptr, 0);
  EXPECT_EQ(NetNamespace(job.init), prepared);
  EXPECT_EQ(NetNamespace(job.Program()), prepared);
  job.Step(2);
  EXPECT_EQ(job.Finish(), 0);
  EXPECT_THAT(job.output, HasSubstr("final steps=4 "));
}

// A restore reads each 2 MiB range of anonymous memory the images fill whole into a huge
// page (CRIU patch 0012), and only those: a sparse range stays as small as it was, and
// memory the job marked MADV_NOHUGEPAGE stays in small pages. Memory a process shares
// with its child copy-on-write (criu reads it before it forks the child, away from its
// final address) comes back in huge pages the two still share.
TEST_F(MigrateTest, RestoreReadsWholeRangesIntoHugePages) {
  std::string modes = ReadFile("/sys/kernel/mm/transparent_hugepage/enabled");
  if (modes.empty() || modes.find("[never]") != std::string::npos) {
    GTEST_SKIP() << "this kernel gives no huge pages (transparent_hugepage: " << modes << ")";
  }
  Job job = StartJob(input_, dir_ + "/append");
  job.Step(1);
  std::string shape = Shape(job.Program());
  Move(job);
  pid_t program = job.Program();
  MappingMemory dense = MemoryAt(program, kDenseMemory);
  MappingMemory sparse = MemoryAt(program, kSparseMemory);
  MappingMemory no_huge = MemoryAt(program, kNoHugeMemory);
  EXPECT_EQ(dense.huge_kb, 8192);
  EXPECT_EQ(sparse.huge_kb, 0);
  EXPECT_EQ(sparse.rss_kb, 2048);
  EXPECT_EQ(no_huge.huge_kb, 0);
  EXPECT_EQ(no_huge.rss_kb, 4096);
  EXPECT_THAT(no_huge.flags, HasSubstr(" nh "));
  EXPECT_EQ(MemoryAt(program, kSharedMemory).huge_kb, 4096);
  std::vector<pid_t> pids = JobPids(job.init);
  ASSERT_EQ(pids.size(), 3u);  // init, the workload, its child
  EXPECT_EQ(MemoryAt(pids[2], kSharedMemory).huge_kb, 4096);
  // Nothing of criu's premapping is left in the job: its map is the one it had.
  EXPECT_EQ(Shape(program), shape);
  // No mapping took a flag it did not have.
  EXPECT_THAT(dense.flags, Not(HasSubstr(" hg ")));
  job.Step(1);
  EXPECT_EQ(job.Finish(), 0);
  EXPECT_THAT(job.output, HasSubstr("final steps=2 usr1=0 offset=32 timer=ok child=ok memory=ok"));

  // criu's own restore reads into small pages (where huge pages are only for who asks).
  huge_pages_ = false;
  Job plain = StartJob(input_, dir_ + "/append");
  plain.Step(1);
  Move(plain);
  if (modes.find("[madvise]") != std::string::npos) {
    EXPECT_EQ(MemoryAt(plain.Program(), kDenseMemory).huge_kb, 0);
  }
  EXPECT_EQ(plain.Finish(), 0);
  EXPECT_THAT(plain.output, HasSubstr("memory=ok"));
}

// `checkpoint FILE`: the job goes on running; restoring the checkpoint later gives a
// job that continues from the moment of the checkpoint.
TEST_F(MigrateTest, CheckpointLeavesJobRunningAndRestoresLater) {
  Job job = StartJob(input_, dir_ + "/append");
  job.Step(3);
  std::string images = dir_ + "/checkpoint";
  ASSERT_EQ(::mkdir(images.c_str(), 0700), 0);
  DumpOptions options;
  options.after = AfterDump::kRun;
  options.external_pipes = job.PipeInodes();
  DumpResult dumped = Dump(job.init, images, options);
  EXPECT_GT(dumped.image_bytes, 0u);
  // criu's own figures (its stats, where it works): the job frozen for part of the run.
  EXPECT_GT(dumped.frozen_time.count(), 0);
  EXPECT_LE(dumped.frozen_time, dumped.criu_time);
  EXPECT_GT(dumped.pages_written, 0u);
  job.Step(2);
  ASSERT_EQ(job.Finish(), 0);

  Pipe in = Pipe::Create(), out = Pipe::Create(), err = Pipe::Create(), status = Pipe::Create();
  RestoreOptions restore;
  restore.pipes = {{options.external_pipes[0], in.read.get()},
                   {options.external_pipes[1], out.write.get()},
                   {options.external_pipes[2], err.write.get()},
                   {options.external_pipes[3], status.write.get()}};
  // A script for one step runs at that step only (criu would run it at each of about
  // seven, a fork and an exec each, the job frozen).
  std::string script = dir_ + "/note-step", steps = dir_ + "/steps";
  {
    std::ofstream out(script);
    out << "#!/bin/sh\necho \"$CRTOOLS_SCRIPT_ACTION\" >> " << steps << "\n";
  }
  ASSERT_EQ(::chmod(script.c_str(), 0700), 0);
  restore.action_scripts = {{script, "setup-namespaces"}};
  Job again;
  again.init = Restore(images, restore).init_pid;
  EXPECT_EQ(ReadFile(steps), "setup-namespaces\n");
  again.in = std::move(in.write);
  again.out = std::move(out.read);
  again.err = std::move(err.read);
  again.status = std::move(status.read);
  again.steps = 3;
  in.read.Reset();  // the job holds these now; keeping them would hide its end
  out.write.Reset();
  err.write.Reset();
  status.write.Reset();
  RemoveImageDir(images);
  again.Step(2);
  EXPECT_EQ(again.Finish(), 0);
  // Steps 4 and 5 happen again, exactly as the first time.
  std::string first = job.output.substr(job.output.find("step 4 "));
  first = first.substr(0, first.find("final "));
  EXPECT_EQ(again.output.substr(0, again.output.find("final ")), first);
}

TEST(CriuCheck, ReportsVersionAndFeatures) {
  auto check = CriuCheck();
  EXPECT_TRUE(check.usable) << check.message;
  EXPECT_EQ(check.version, "4.1.1");
  EXPECT_FALSE(check.features.empty());
}

TEST(CriuCheck, KernelProbesAreKeptForTheNextRuns) {
  // Every run of criu (a move makes three) starts by probing the kernel unless a cache
  // says what an earlier run found; /run here is no tmpfs, where criu keeps its own.
  auto check = CriuCheck(DefaultCriuPath(), {"uffd-noncoop"});
  ASSERT_TRUE(check.usable) << check.message;
  EXPECT_TRUE(CriuProbesKept());
  // Runs with the cache sealed against writes work as before.
  auto again = CriuCheck(DefaultCriuPath(), {"uffd-noncoop"});
  EXPECT_TRUE(again.usable) << again.message;
  ASSERT_EQ(again.features.size(), 1u);
  EXPECT_EQ(again.features[0].supported, check.features[0].supported);
}

}  // namespace
}  // namespace homeward::migrate

int main(int argc, char** argv) {
  if (::geteuid() != 0) {
    std::fprintf(stderr, "skipped: checkpoint and restore need root\n");
    return 77;
  }
  ::testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
}
