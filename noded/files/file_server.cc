// The file service's connections: one session per connection, requests on a pool of
// worker threads that each act with the caller's fs credentials.
#include "file_server.h"

#include <fcntl.h>
#include <sched.h>
#include <sys/socket.h>
#include <sys/stat.h>

#include <capnp/message.h>
#include <kj/exception.h>
#include <spdlog/spdlog.h>

#include "error.h"
#include "frame_stream.h"
#include "gate.h"

namespace homeward {

namespace {

// A peer's address without its port: connections come from the node's address and a port
// of the moment, gossip knows the node by the address alone.
std::string HostOf(const std::string& address) {
  auto colon = address.rfind(':');
  return colon == std::string::npos ? address : address.substr(0, colon);
}

}  // namespace

WorkerPool::WorkerPool(int threads) {
  for (int i = 0; i < threads; ++i) threads_.emplace_back([this] { Run(); });
}

WorkerPool::~WorkerPool() {
  {
    std::lock_guard lock(mutex_);
    stopping_ = true;
  }
  ready_.notify_all();
  for (auto& t : threads_) t.join();
}

void WorkerPool::Post(std::function<void()> job) {
  {
    std::lock_guard lock(mutex_);
    jobs_.push_back(std::move(job));
  }
  ready_.notify_one();
}

void WorkerPool::Run() {
  // Its own fs context, so umask 0 here leaves the daemon's umask alone: the client's
  // kernel has already applied the caller's umask to every mode it sends.
  if (::unshare(CLONE_FS) == 0) ::umask(0);
  for (;;) {
    std::function<void()> job;
    {
      std::unique_lock lock(mutex_);
      ready_.wait(lock, [&] { return stopping_ || !jobs_.empty(); });
      if (jobs_.empty()) return;
      job = std::move(jobs_.front());
      jobs_.pop_front();
    }
    job();
  }
}

void Strand::Post(std::function<void()> job) {
  std::lock_guard lock(mutex_);
  jobs_.push_back(std::move(job));
  if (running_) return;
  running_ = true;
  pool_.Post([self = shared_from_this()] { self->Drain(); });
}

void Strand::RunOrPost(std::function<void()> job) {
  {
    std::lock_guard lock(mutex_);
    if (running_) {
      jobs_.push_back(std::move(job));
      return;
    }
    running_ = true;
  }
  job();
  Drain();  // what came meanwhile (nothing, when only the caller posts), then idle
}

void Strand::Drain() {
  for (;;) {
    std::function<void()> job;
    {
      std::lock_guard lock(mutex_);
      if (jobs_.empty()) {
        running_ = false;
        return;
      }
      job = std::move(jobs_.front());
      jobs_.pop_front();
    }
    job();
  }
}

// ---------------------------------------------------------------------------------------

FileServer::FileServer(const std::string& export_root, int threads, FileSession::Root peer_root,
                       const std::string& replay_log,
                       ReplayCache::Durability replay_durability, const FaultPoints& faults)
    : root_(Fd::Open(export_root, O_PATH | O_DIRECTORY)),
      peer_root_(peer_root),
      notices_(!faults.Hit(Fault::kNoFileNotices)),
      replay_(replay_log, replay_durability),
      pool_(threads) {
  replay_.kill_after_append = faults.Hit(Fault::kKillAfterAppend);
  // Beside the replay log, in the state directory: the record of the lock keeper, which a
  // restarted daemon finds its clients' locks in.
  if (!replay_log.empty()) {
    auto slash = replay_log.rfind('/');
    std::string dir = slash == std::string::npos ? "." : replay_log.substr(0, slash);
    locks_->keeper = LockKeeper::Start(dir + "/files-locks");
  }
}

FileServer::~FileServer() {
  Stop();
}

void FileServer::Stop() {
  // Before the sessions end and let go of their locks: the keeper holds them on for the
  // next daemon.
  if (locks_->keeper) locks_->keeper->Detach();
  holders_.reset();
  std::unique_lock lock(mutex_);
  stopping_ = true;
  for (int fd : connections_) ::shutdown(fd, SHUT_RDWR);
  idle_.wait(lock, [&] { return connections_.empty(); });
}

void FileServer::Serve(Fd connection, const PeerIdentity& peer) {
  Serve(SecureStream::Plain(std::move(connection), peer.address), peer);
}

namespace {

// The work of one request: handled, answered (unless it waits for a lock: then `later`
// answers it), and out of the gate.
std::function<void()> RequestJob(std::shared_ptr<FileSession> session,
                                 std::shared_ptr<FrameStream> stream,
                                 std::shared_ptr<IncomingMessage> shared,
                                 std::shared_ptr<Gate> in_flight,
                                 std::shared_ptr<FileServiceStats> stats) {
  return [session, stream, shared, in_flight, stats]() mutable {
    capnp::MallocMessageBuilder reply(2048);
    bool answered = true;
    try {
      auto request = shared->Root<schema::FileRequest>();
      auto response = reply.initRoot<schema::ServerMessage>().initResponse();
      // A request that waits for a lock is answered by `later`, which leaves the gate.
      FileSession::Later later = [stream, in_flight, id = request.getId()](int err) mutable {
        capnp::MallocMessageBuilder late(256);
        auto answer = late.initRoot<schema::ServerMessage>().initResponse();
        answer.setId(id);
        answer.setError(err);
        try {
          stream->Write(late);
        } catch (const std::exception& e) {
          spdlog::debug("file service: lock answer not sent: {}", e.what());
        }
        stream.reset();
        std::exchange(in_flight, nullptr)->Leave();
      };
      auto began = std::chrono::steady_clock::now();
      answered = session->Handle(request, response, std::move(later));
      stats->requests.fetch_add(1, std::memory_order_relaxed);
      if (answered && response.getError() != 0) stats->errors.fetch_add(1, std::memory_order_relaxed);
      stats->micros.fetch_add(static_cast<uint64_t>(
                                  std::chrono::duration_cast<std::chrono::microseconds>(
                                      std::chrono::steady_clock::now() - began)
                                      .count()),
                              std::memory_order_relaxed);
      auto op = request.getOp();
      // Answers to a run of requests read at once go out together (FrameStream::WriteSoon).
      if (answered && op != schema::FileOp::FORGET) stream->WriteSoon(reply);
    } catch (const std::exception& e) {
      spdlog::debug("file service: reply not sent: {}", e.what());
    }
    // Let go of the session and stream before leaving: once the last request has left,
    // Serve holds the only references, and its session (with the change watcher that
    // writes notices) ends before the connection's descriptor is closed.
    session.reset();
    stream.reset();
    shared.reset();
    if (answered) in_flight->Leave();
  };
}

// Reads and writes up to this size may run on the connection's thread (below).
constexpr size_t kInlineBytes = 64 << 10;

// A request that arrives alone (nothing else of this client's in flight) and is not bulk
// I/O runs on the connection's thread: handing it to a worker would only add a thread
// wake-up to its latency. Forgets and releases (a map operation and a close) always do.
// Concurrent requests go to the pool, so they run in parallel.
bool RunsInline(schema::FileRequest::Reader request, size_t in_flight) {
  auto op = request.getOp();
  bool big_read = op == schema::FileOp::READ && request.getSize() > kInlineBytes;
  bool bulk = op == schema::FileOp::WRITE || op == schema::FileOp::FSYNC ||
              op == schema::FileOp::READDIR || op == schema::FileOp::FALLOCATE || big_read;
  bool tiny = op == schema::FileOp::FORGET || op == schema::FileOp::RELEASE ||
              op == schema::FileOp::RELEASEDIR || op == schema::FileOp::LOCK_CANCEL;
  return tiny || (!bulk && in_flight == 1);
}

}  // namespace

void FileServer::Serve(std::unique_ptr<SecureStream> secure, const PeerIdentity& peer) {
  // Shared with the replies in flight, so the connection stays open until the last one.
  std::shared_ptr<SecureStream> connection = std::move(secure);
  int fd = connection->fd();
  if (!Register(fd)) return;
  spdlog::info("file service: {} connected", peer.address);
  // Requests also run on this thread (ServeRequests): like the workers, it needs an fs
  // context of its own with umask 0, so that it never changes the daemon's.
  if (::unshare(CLONE_FS) == 0) ::umask(0);
  auto stream = std::make_shared<FrameStream>(connection, kMaxFileFrameBytes);
  // No answer leaves before the replay log has the outcome it tells.
  stream->BeforeEachSend([this] { replay_.WriteDeferred(); });
  auto session = OpenSession(peer, stream);
  // Jobs hold the connection open until their reply is written: the gate counts them, and
  // the connection closes (below) only once they are all done.
  auto in_flight = std::make_shared<Gate>();
  std::string why = ServeRequests(session, stream, in_flight);
  ::shutdown(fd, SHUT_RDWR);
  // Waits for locks would hold the gate for ever: they end now (their answers go nowhere).
  session->EndLockWaits(EINTR);
  in_flight->Wait();
  spdlog::info("file service: {} disconnected: {}", peer.address, why);
  Unregister(fd, session);
}

bool FileServer::Register(int fd) {
  std::lock_guard lock(mutex_);
  if (stopping_) return false;
  connections_.insert(fd);
  return true;
}

std::shared_ptr<FileSession> FileServer::OpenSession(const PeerIdentity& peer,
                                                     const std::shared_ptr<FrameStream>& stream) {
  auto session = std::make_shared<FileSession>(root_.get(), peer_root_, &replay_, locks_);
  session->SetHost(HostOf(peer.address));
  {
    std::lock_guard lock(mutex_);
    sessions_.emplace(HostOf(peer.address), session);
  }
  if (notices_) session->Watch([stream](uint64_t node, uint64_t parent, const std::string& name) {
    capnp::MallocMessageBuilder message(256);
    auto notice = message.initRoot<schema::ServerMessage>().initNotice();
    notice.setNode(node);
    notice.setParent(parent);
    notice.setName(name);
    stream->Write(message);
  });
  return session;
}

std::string FileServer::ServeRequests(const std::shared_ptr<FileSession>& session,
                                      const std::shared_ptr<FrameStream>& stream,
                                      const std::shared_ptr<Gate>& in_flight) {
  auto writes = std::make_shared<Strand>(pool_);
  try {
    while (auto message = stream->Read()) {
      auto shared = std::make_shared<IncomingMessage>(std::move(*message));
      // Read before anything is counted in flight: a message that does not read ends the
      // connection here (below).
      auto request = shared->Root<schema::FileRequest>();
      in_flight->Enter();
      bool inline_job = RunsInline(request, in_flight->count());
      // Writes, and removals the client answered before sending, land in the order sent.
      bool ordered = request.getOp() == schema::FileOp::WRITE || request.getBehind();
      bool small = request.getData().size() <= kInlineBytes;
      auto job = RequestJob(session, stream, std::move(shared), in_flight, stats_);
      if (ordered && small) {
        writes->RunOrPost(std::move(job));
      } else if (ordered) {
        writes->Post(std::move(job));
      } else if (inline_job) {
        job();
      } else {
        pool_.Post(std::move(job));
      }
    }
  } catch (const Error& e) {
    return e.what();
  } catch (const kj::Exception& e) {
    // A frame whose message does not read (no root, a bad pointer): end this connection
    // like a broken one, after its requests in flight, so that their replies never go to
    // a descriptor number reused by then.
    return fmt::format("malformed message: {}", e.getDescription().cStr());
  }
  return "closed by peer";
}

void FileServer::Unregister(int fd, const std::shared_ptr<FileSession>& session) {
  std::lock_guard lock(mutex_);
  connections_.erase(fd);
  for (auto it = sessions_.begin(); it != sessions_.end();) {
    it = it->second.expired() || it->second.lock() == session ? sessions_.erase(it)
                                                               : std::next(it);
  }
  idle_.notify_all();
}

void FileServer::DropLocks(const std::string& address) {
  std::vector<std::shared_ptr<FileSession>> found;
  {
    std::lock_guard lock(mutex_);
    auto [begin, end] = sessions_.equal_range(HostOf(address));
    for (auto it = begin; it != end; ++it) {
      if (auto session = it->second.lock()) found.push_back(std::move(session));
    }
  }
  for (auto& session : found) session->DropLocks();
  if (locks_->keeper) locks_->keeper->DropOrphans(HostOf(address));
}

}  // namespace homeward
