#include "fuse_uring.h"

#include <liburing.h>
#include <linux/fuse.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string>
#include <system_error>
#include <thread>
#include <utility>

#include "log.h"

namespace homeward {
namespace {

// The kernel's FUSE-over-io_uring interface (include/uapi/linux/fuse.h, protocol 7.42);
// Debian 12's headers predate it.
constexpr uint64_t kOverIoUring = 1ULL << 41;  // FUSE_OVER_IO_URING, an INIT flag
constexpr uint32_t kCmdRegister = 1;           // FUSE_IO_URING_CMD_REGISTER
constexpr uint32_t kCmdCommitAndFetch = 2;     // FUSE_IO_URING_CMD_COMMIT_AND_FETCH
constexpr size_t kInOutSize = 128;             // FUSE_URING_IN_OUT_HEADER_SZ
constexpr size_t kOpInSize = 128;              // FUSE_URING_OP_IN_OUT_SZ

struct RingEntInOut {  // struct fuse_uring_ent_in_out
  uint64_t flags;
  uint64_t commit_id;
  uint32_t payload_sz;
  uint32_t padding;
  uint64_t reserved;
};
struct RingHeader {         // struct fuse_uring_req_header
  char in_out[kInOutSize];  // fuse_in_header on a request, fuse_out_header on a reply
  char op_in[kOpInSize];    // the request's first argument (its op's own struct)
  RingEntInOut ent;
};
struct RingCmd {  // struct fuse_uring_cmd_req, in the SQE's 80-byte command area
  uint64_t flags;
  uint64_t commit_id;
  uint16_t qid;
  uint8_t padding[6];
};
static_assert(sizeof(RingHeader) == 288 && sizeof(RingCmd) == 24);
// Where an entry's payload starts in its mapping (the ring's header at its start): the
// request's header and op struct are copied right before it, so that libfuse reads the
// request in place, as /dev/fuse would have given it, with no copy of its data.
constexpr size_t kPayloadAt = 4096;
static_assert(sizeof(RingHeader) + sizeof(fuse_in_header) + kOpInSize <= kPayloadAt);

// Lanes per CPU: one to start with, another whenever all of a CPU's are busy (a call
// waiting for a home holds its lane, as it holds a thread of libfuse's loop), up to this.
constexpr size_t kMaxLanes = 64;
constexpr uint64_t kWakeData = ~0ULL;  // the lane's eventfd poll's user_data

// The kernel's queues: as many as possible CPUs ("0-3", "0,2-5" in /sys), numbered by
// CPU.
unsigned PossibleCpus() {
  std::ifstream in("/sys/devices/system/cpu/possible");
  std::string list;
  unsigned count = 0;
  if (in >> list) {
    std::stringstream ranges(list);
    std::string range;
    while (std::getline(ranges, range, ',')) {
      unsigned first = 0, last = 0;
      int fields = std::sscanf(range.c_str(), "%u-%u", &first, &last);
      if (fields == 1) last = first;
      if (fields >= 1 && last >= first) count += last - first + 1;
    }
  }
  return count ? count : static_cast<unsigned>(::sysconf(_SC_NPROCESSORS_CONF));
}

}  // namespace

struct FuseUring::Entry {
  Lane* lane = nullptr;
  RingHeader* header = nullptr;
  char* payload = nullptr;
  uint64_t commit_id = 0;
  struct iovec iov[2]{};
};

// A lane's thread is the only one to submit to its ring: io_uring ties a command to the
// thread that submitted it and cancels it when that thread ends, and the kernel's entry
// is then lost (a libfuse worker ends when idle, a home's connection thread when it is
// unused). A reply made on another thread is handed to it: the lane, which has no other
// request meanwhile (its entry holds this one), waits for it on a futex (`handed`) rather
// than in its ring: no eventfd to read after each hand-over, and no trip through the
// ring's poll. Lanes last as long as the session.
struct FuseUring::Lane {
  static constexpr uint32_t kReplied = 1, kStop = 2;  // `handed`'s bits
  Queue* queue = nullptr;
  struct io_uring ring {};
  int wake_fd = -1;  // written at the end, for a lane waiting in its ring
  Entry entry;
  std::thread thread;
  std::atomic<uint32_t> handed{0};
  bool answered = false;   // (lane's thread) its request was answered on its own thread
  bool committed = false;  // (lane's thread) its last command was a commit, not a register
};

struct FuseUring::Queue {
  unsigned qid = 0;
  std::mutex mutex;
  std::vector<std::unique_ptr<Lane>> lanes;
  std::atomic<size_t> idle{0};  // lanes whose entry waits for a request
};

namespace {
thread_local FuseUring::Lane* own_lane = nullptr;  // set on a lane's thread
}  // namespace

bool FuseUring::Allowed() {
  std::ifstream in("/sys/module/fuse/parameters/enable_uring");
  std::string value;
  return in >> value && value == "Y";
}

FuseUring::FuseUring(fuse_session* session, SessionIo& io, bool no_lanes)
    : session_(session), io_(io), fd_(fuse_session_fd(session)), no_lanes_(no_lanes) {
  if (io.installed()) {
    io.Carry(this);
  } else {
    spdlog::warn("FUSE over io_uring: not used without homefs's session I/O; using /dev/fuse");
  }
}

FuseUring::~FuseUring() {
  EndLanes();
  io_.Carry(nullptr);
}

void FuseUring::EndLanes() {
  stopping_ = true;
  {
    std::lock_guard lock(launch_mutex_);
    launched_.notify_all();
  }
  std::vector<Lane*> lanes;
  for (auto& queue : queues_) {
    std::lock_guard lock(queue->mutex);
    for (auto& lane : queue->lanes) lanes.push_back(lane.get());
  }
  for (Lane* lane : lanes) {
    uint64_t one = 1;
    (void)!::write(lane->wake_fd, &one, sizeof one);
    lane->handed.fetch_or(Lane::kStop);
    lane->handed.notify_one();
  }
  size_t size = kPayloadAt + payload_size_;
  for (Lane* lane : lanes) {
    if (lane->thread.joinable()) lane->thread.join();
    io_uring_queue_exit(&lane->ring);
    ::close(lane->wake_fd);
    ::munmap(lane->entry.header, size);
  }
  queues_.clear();
}

bool FuseUring::TakeReply(const struct iovec* iov, int count) {
  auto* out = static_cast<const fuse_out_header*>(iov[0].iov_base);
  Entry* entry = nullptr;
  {
    std::lock_guard lock(in_flight_mutex_);
    auto it = in_flight_.find(out->unique);
    if (it == in_flight_.end()) return false;
    entry = it->second;
    in_flight_.erase(it);
  }
  Commit(*entry, iov, count);
  return true;
}

bool FuseUring::AmendInit(fuse_init_out& reply, uint64_t offered) {
  if (!(offered & kOverIoUring) || !(reply.flags & FUSE_INIT_EXT)) return false;
  size_t pages = reply.max_pages ? reply.max_pages : 32;
  payload_size_ = std::max<size_t>(
      {FUSE_MIN_READ_BUFFER, reply.max_write, pages * static_cast<size_t>(::getpagesize())});
  // Every CPU's first lane is made before the kernel is told: once told, it holds every
  // request until each CPU has an entry registered, with no way back to /dev/fuse (unless
  // a registration fails).
  if (!Prepare()) return false;
  reply.flags2 |= static_cast<uint32_t>(kOverIoUring >> 32);
  return true;
}

void FuseUring::InitWritten(bool told) {
  if (told) {
    Launch(true);
    spdlog::info("taking FUSE requests through io_uring on {} CPUs", queues_.size());
  } else {
    Launch(false);
    EndLanes();
  }
}

bool FuseUring::Prepare() {
  unsigned cpus = PossibleCpus();
  for (unsigned qid = 0; qid < cpus; qid++) {
    queues_.push_back(std::make_unique<Queue>());
    queues_.back()->qid = qid;
  }
  for (auto& queue : queues_) {
    if (!AddLane(*queue)) {
      spdlog::warn("FUSE over io_uring: not used; requests come through /dev/fuse");
      Launch(false);
      EndLanes();
      return false;
    }
  }
  return true;
}

void FuseUring::Launch(bool told) {
  std::lock_guard lock(launch_mutex_);
  go_ = told ? Go::kRun : Go::kDrop;
  launched_.notify_all();
}

bool FuseUring::AddLane(Queue& queue) {
  if (no_lanes_) {
    spdlog::warn("FUSE over io_uring: fault point no-io-uring-lane: no lane for CPU {}", queue.qid);
    return false;
  }
  auto lane = std::make_unique<Lane>();
  lane->queue = &queue;
  io_uring_params params{};
  params.flags = IORING_SETUP_SQE128;
  int err = io_uring_queue_init_params(4, &lane->ring, &params);
  if (err < 0) {
    spdlog::warn("FUSE over io_uring: cannot make a ring for CPU {}: {}", queue.qid,
                 std::strerror(-err));
    return false;
  }
  lane->wake_fd = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  size_t size = kPayloadAt + payload_size_;
  // Header and payload in one mapping; pages are touched only as requests use them.
  void* mem = lane->wake_fd < 0 ? MAP_FAILED
                                : ::mmap(nullptr, size, PROT_READ | PROT_WRITE,
                                         MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (mem == MAP_FAILED) {
    spdlog::warn("FUSE over io_uring: no lane for CPU {}: {}", queue.qid, std::strerror(errno));
    if (lane->wake_fd >= 0) ::close(lane->wake_fd);
    io_uring_queue_exit(&lane->ring);
    return false;
  }
  Entry& entry = lane->entry;
  entry.lane = lane.get();
  entry.header = static_cast<RingHeader*>(mem);
  entry.payload = static_cast<char*>(mem) + kPayloadAt;
  entry.iov[0] = {entry.header, sizeof(RingHeader)};
  entry.iov[1] = {entry.payload, payload_size_};
  std::lock_guard lock(queue.mutex);
  if (stopping_) {  // checked under the lock the destructor takes to find every lane
    ::munmap(mem, size);
    ::close(lane->wake_fd);
    io_uring_queue_exit(&lane->ring);
    return false;
  }
  Lane& added = *lane;
  try {
    added.thread = std::thread([this, &added] { Run(added); });
  } catch (const std::system_error& e) {
    spdlog::warn("FUSE over io_uring: no thread for a lane of CPU {}: {}", queue.qid, e.what());
    ::munmap(mem, size);
    ::close(lane->wake_fd);
    io_uring_queue_exit(&lane->ring);
    return false;
  }
  queue.lanes.push_back(std::move(lane));
  queue.idle++;
  return true;
}

namespace {

void PrepareCommand(struct io_uring_sqe* sqe, int fd, uint32_t op, void* data, unsigned qid,
                    uint64_t commit_id) {
  // An SQE128 slot: the struct's 64 bytes and the command area after them (its
  // flexible member `cmd`), which the compiler takes for the end of the struct.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Warray-bounds"
#pragma GCC diagnostic ignored "-Wstringop-overflow"
  std::memset(static_cast<void*>(sqe), 0, 2 * sizeof(*sqe));
#pragma GCC diagnostic pop
  sqe->opcode = IORING_OP_URING_CMD;
  sqe->fd = fd;
  sqe->cmd_op = op;
  io_uring_sqe_set_data(sqe, data);
  auto* cmd = reinterpret_cast<RingCmd*>(sqe->cmd);
  cmd->qid = static_cast<uint16_t>(qid);
  cmd->commit_id = commit_id;
}

}  // namespace

void FuseUring::Run(Lane& lane) {
  {
    std::unique_lock lock(launch_mutex_);
    launched_.wait(lock, [&] { return go_ != Go::kWaiting || stopping_; });
    if (go_ != Go::kRun || stopping_) return;
  }
  own_lane = &lane;
  Queue& queue = *lane.queue;
  // On the CPU whose requests this lane gets: the kernel picks the queue by the caller's
  // CPU, so the wake-ups each way stay on one CPU.
  cpu_set_t cpus;
  CPU_ZERO(&cpus);
  CPU_SET(queue.qid, &cpus);
  pthread_setaffinity_np(pthread_self(), sizeof cpus, &cpus);  // a CPU not ours: unpinned
  // Named, as the one kind of homefs thread that is pinned (threads it starts are not:
  // UnpinnedThread).
  std::string name = fmt::format("homefs lane {}", queue.qid).substr(0, 15);
  pthread_setname_np(pthread_self(), name.c_str());
  Register(lane);  // counted idle when it was made
  struct io_uring_sqe* sqe = nullptr;
  bool armed = false, failing = false;
  while (true) {
    if (!armed) {
      sqe = io_uring_get_sqe(&lane.ring);
      io_uring_prep_poll_multishot(sqe, lane.wake_fd, POLLIN);
      sqe->user_data = kWakeData;
      armed = true;
    }
    int err = io_uring_submit_and_wait(&lane.ring, 1);
    if (err < 0 && err != -EINTR) {
      // The kernel waits for this lane's entry (and its commits): try again, the SQEs
      // stay queued.
      if (!failing) {
        spdlog::warn("FUSE over io_uring: CPU {}: {}", queue.qid, std::strerror(-err));
      }
      failing = true;
      if (stopping_) return;
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
      continue;
    }
    failing = false;
    struct io_uring_cqe* cqe = nullptr;
    while (io_uring_peek_cqe(&lane.ring, &cqe) == 0) {
      uint64_t data = cqe->user_data;
      int res = cqe->res;
      bool more = cqe->flags & IORING_CQE_F_MORE;
      io_uring_cqe_seen(&lane.ring, cqe);
      if (data == kWakeData) {
        uint64_t count;
        (void)!::read(lane.wake_fd, &count, sizeof count);
        armed = more;
        if (stopping_) return;
        continue;
      }
      if (res < 0) {
        queue.idle--;  // the entry is the kernel's no more
        // ENOTCONN, ECONNABORTED: the connection ended (an unmount).
        if (res == -ENOTCONN || res == -ECONNABORTED || stopping_) continue;
        spdlog::warn("FUSE over io_uring: CPU {}: {} {}", queue.qid,
                     lane.committed ? "a commit failed:" : "the kernel refused a lane:",
                     std::strerror(-res));
        // A failed commit loses the entry: registered again, so that the lane (counted
        // idle by the growth rule) takes requests again. A refused registration is the
        // kernel's answer for the lane (it then turns back to /dev/fuse if none is
        // registered yet).
        if (lane.committed) {
          Register(lane);
          queue.idle++;
        }
        continue;
      }
      // The last idle lane of this CPU is taken: another, so that this call waiting for
      // its home does not hold up the next.
      if (--queue.idle == 0) {
        size_t lanes;
        {
          std::lock_guard lock(queue.mutex);
          lanes = queue.lanes.size();
        }
        if (lanes < kMaxLanes) AddLane(queue);
      }
      lane.answered = false;
      Process(lane.entry);
      if (lane.answered) continue;
      // The answer comes from another thread (the home's, through FileClient's receiving
      // thread), to be committed here.
      uint32_t handed;
      while ((handed = lane.handed.exchange(0)) == 0) lane.handed.wait(0);
      if (handed & Lane::kStop) return;
      PrepareCommit(lane);
    }
  }
}

void FuseUring::Register(Lane& lane) {
  struct io_uring_sqe* sqe = io_uring_get_sqe(&lane.ring);
  PrepareCommand(sqe, fd_, kCmdRegister, &lane.entry, lane.queue->qid, 0);
  sqe->addr = reinterpret_cast<uint64_t>(lane.entry.iov);
  sqe->len = 2;
  lane.committed = false;
}

void FuseUring::PrepareCommit(Lane& lane) {
  lane.committed = true;
  struct io_uring_sqe* sqe = io_uring_get_sqe(&lane.ring);
  PrepareCommand(sqe, fd_, kCmdCommitAndFetch, &lane.entry, lane.queue->qid, lane.entry.commit_id);
  lane.queue->idle++;  // its entry waits for the next request once this is submitted
}

void FuseUring::Process(Entry& entry) {
  // libfuse wants a request as /dev/fuse gives it: the header, then its arguments in a
  // row; the ring splits off the first argument (op_in) and the rest (the payload).
  const auto* in = reinterpret_cast<const fuse_in_header*>(entry.header->in_out);
  size_t payload = entry.header->ent.payload_sz;
  entry.commit_id = entry.header->ent.commit_id;
  size_t op_in = in->len - sizeof(fuse_in_header) - std::min<size_t>(payload, in->len);
  if (in->len < sizeof(fuse_in_header) + payload || op_in > kOpInSize || payload > payload_size_) {
    spdlog::warn("FUSE over io_uring: request {} has a bad size", in->unique);
    fuse_out_header out{sizeof(fuse_out_header), -EIO, in->unique};
    struct iovec iov {
      &out, sizeof out
    };
    Commit(entry, &iov, 1);
    return;
  }
  // The answer is written into the same payload (by whichever thread makes it, as soon
  // as the home replies), and the kernel may write the next request there once it is
  // committed: a handler is done reading its request once it has sent it to the home or
  // answered (as every one of homefs is; a write's data is copied or sent by then).
  char* request = entry.payload - sizeof(fuse_in_header) - op_in;
  std::memcpy(request, in, sizeof(fuse_in_header));
  std::memcpy(request + sizeof(fuse_in_header), entry.header->op_in, op_in);
  {
    std::lock_guard lock(in_flight_mutex_);
    in_flight_[in->unique] = &entry;
  }
  fuse_buf buf{};
  buf.size = in->len;
  buf.mem = request;
  fuse_session_process_buf(session_, &buf);
}

void FuseUring::Commit(Entry& entry, const struct iovec* iov, int count) {
  auto* out = reinterpret_cast<fuse_out_header*>(entry.header->in_out);
  std::memcpy(out, iov[0].iov_base, sizeof(fuse_out_header));
  size_t len = 0;
  for (int i = 1; i < count; i++) {
    if (len + iov[i].iov_len > payload_size_) {
      out->error = -EIO;
      len = 0;
      break;
    }
    std::memcpy(entry.payload + len, iov[i].iov_base, iov[i].iov_len);
    len += iov[i].iov_len;
  }
  entry.header->ent.payload_sz = static_cast<uint32_t>(len);
  Lane& lane = *entry.lane;
  if (own_lane == &lane) {
    // Submitted now, not when the handler returns: a handler that answers first and then
    // sends (a write behind) lets its caller go on meanwhile, as through /dev/fuse. A
    // refused submission stays queued for the lane's loop.
    lane.answered = true;
    PrepareCommit(lane);
    io_uring_submit(&lane.ring);
    return;
  }
  lane.handed.fetch_or(Lane::kReplied);
  lane.handed.notify_one();
}

}  // namespace homeward
