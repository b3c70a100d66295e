// The homefs connection: pipelined requests, reconnection, bounded waits.
#include "client.h"

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <unistd.h>

#include <future>
#include <map>

#include <capnp/serialize.h>
#include <kj/exception.h>

#include <spdlog/spdlog.h>

#include "error.h"
#include "peer_auth.h"
#include "secure_channel.h"
#include "unpinned_thread.h"

namespace homeward {

namespace {
constexpr size_t kMaxFrameBytes = 4 << 20;
using Clock = std::chrono::steady_clock;
// A home silent this long while a call waits is not about to answer: an interrupted
// call ends then.
constexpr std::chrono::milliseconds kInterruptSilence{2000};
// How often a call waiting for the connection looks whether its caller was interrupted.
constexpr std::chrono::milliseconds kWaitPoll{100};

std::chrono::milliseconds Since(Clock::time_point then) {
  return std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - then);
}
}  // namespace

std::chrono::milliseconds SilenceLimit(const ClientOptions& options) {
  return options.hard ? std::max(options.timeout, options.grace) : options.timeout;
}

bool EndsInterrupted(bool interrupted, std::chrono::milliseconds silent) {
  return interrupted && silent >= kInterruptSilence;
}

bool GoesStale(bool may_go_stale, std::chrono::milliseconds silent) {
  return may_go_stale && silent >= kInterruptSilence;
}

int LostCallError(bool hard, bool resend) {
  return hard && resend ? FileClient::kLost : EIO;
}

FileClient::FileClient(ClientOptions options) : options_(std::move(options)) {
  // Random, so that a mount made again (or another node's) never shares the ids the home
  // remembers; never 0 (a client without an id).
  while (id_ == 0) {
    if (::getrandom(&id_, sizeof id_, 0) != sizeof id_) id_ = 0;
  }
}

FileClient::~FileClient() {
  Stop();
}

std::shared_ptr<SecureStream> FileClient::Connect() {
  auto connect_timeout = std::min(options_.timeout, std::chrono::milliseconds(5000));
  // A cut link shows as data left unacknowledged (or keepalive probes unanswered): the
  // kernel breaks the connection after the silence limit (soft: the timeout, and every
  // call in flight fails; hard: the grace, and calls in flight wait that long for the
  // link to come back, as they would for TCP's own retransmissions). These are options
  // of the TCP socket, under the encrypted channel.
  auto ms = static_cast<unsigned>(SilenceLimit(options_).count());
  auto probe_every = static_cast<int>(options_.timeout.count() / 3000);
  auto tune = [ms, probe_every](int tcp) {
    int one = 1;
    int idle = std::max(1, probe_every);
    int count = 3;
    ::setsockopt(tcp, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof one);
    ::setsockopt(tcp, IPPROTO_TCP, TCP_KEEPIDLE, &idle, sizeof idle);
    ::setsockopt(tcp, IPPROTO_TCP, TCP_KEEPINTVL, &idle, sizeof idle);
    ::setsockopt(tcp, IPPROTO_TCP, TCP_KEEPCNT, &count, sizeof count);
    ::setsockopt(tcp, IPPROTO_TCP, TCP_USER_TIMEOUT, &ms, sizeof ms);
  };
  // Read and written in place on the calling threads (secure_channel.h): no pump thread.
  std::string host;
  uint16_t port;
  {
    std::lock_guard lock(mutex_);
    host = options_.host;
    port = options_.port;
  }
  std::shared_ptr<SecureStream> fd =
      PeerConnectStream(host, port, options_.key, "files", connect_timeout, tune);
  // The version check, before anything else is sent on this connection.
  capnp::MallocMessageBuilder hello;
  auto rq = hello.initRoot<schema::FileRequest>();
  rq.setVersion(schema::FILES_VERSION);
  rq.setOp(schema::FileOp::HELLO);
  rq.setClient(id_);
  FrameStream stream(fd, kMaxFrameBytes);
  stream.Write(hello);
  auto reply = stream.Read();
  if (!reply) Fail(ErrorKind::kDisconnected, "{}: closed the connection", host);
  auto rs = reply->Root<schema::ServerMessage>().getResponse();
  if (rs.getError() != 0) {
    Fail(ErrorKind::kFailed, "{}: file service refused: {} ({})", host,
         rs.getMessage().cStr(), strerror(rs.getError()));
  }
  probe_reply_ = std::move(reply);
  return fd;
}

schema::Attr::Reader FileClient::Probe() {
  first_ = Connect();
  probe_pid_ = ::getpid();
  return probe_reply_->Root<schema::ServerMessage>().getResponse().getEntry().getAttr();
}

void FileClient::Start() {
  // When mosmount has daemonized since the probe, the probe's connection (shared with
  // the parent until it exited) is closed and a new one made from this process.
  if (first_ && probe_pid_ != ::getpid()) first_.reset();
  std::lock_guard lock(mutex_);
  owed_since_.reset();
  started_ = true;
  if (!options_.on_demand || first_) RunLocked();
}

void FileClient::RunLocked() {
  if (running_ || parking_ || stopping_ || !started_) return;
  running_ = true;
  last_used_ = Clock::now();
  connection_thread_ = UnpinnedThread("homefs receive", [this] { ConnectionLoop(); });
  timer_thread_ = UnpinnedThread("homefs timer", [this] { TimerLoop(); });
}

void FileClient::Stop() {
  {
    std::lock_guard lock(mutex_);
    if (stopping_) return;
    stopping_ = true;
    if (fd_ >= 0) ::shutdown(fd_, SHUT_RDWR);
  }
  changed_.notify_all();
  if (connection_thread_.joinable()) connection_thread_.join();
  if (timer_thread_.joinable()) timer_thread_.join();
}

bool FileClient::DisconnectIdle(std::chrono::milliseconds idle) {
  {
    std::lock_guard lock(mutex_);
    if (!options_.on_demand || !running_ || parking_ || stopping_ || waiters_ > 0 ||
        !pending_.empty() || !unacked_.empty() || Since(last_used_) < idle) {
      return false;
    }
    parking_ = true;
    if (fd_ >= 0) ::shutdown(fd_, SHUT_RDWR);
  }
  changed_.notify_all();
  // A request sent meanwhile is handed back (kLost) and sent again on the next
  // connection, which its WaitConnected makes once the threads are gone.
  connection_thread_.join();
  timer_thread_.join();
  {
    std::lock_guard lock(mutex_);
    running_ = false;
    parking_ = false;
  }
  changed_.notify_all();
  spdlog::info("homefs: closed the idle connection to {}", Host());
  return true;
}

std::string FileClient::Host() {
  std::lock_guard lock(mutex_);
  return options_.host;
}

bool FileClient::running() {
  std::lock_guard lock(mutex_);
  return running_;
}

void FileClient::MoveTo(const std::string& host, uint16_t port) {
  std::lock_guard lock(mutex_);
  if (options_.host == host && options_.port == port) return;
  options_.host = host;
  options_.port = port;
  // Calls in flight are sent again on the connection to the new address (hard).
  if (fd_ >= 0) ::shutdown(fd_, SHUT_RDWR);
}

void FileClient::FailAll(std::unordered_map<uint64_t, Pending> pending) {
  // In id order: requests sent again go out in the order they first went.
  std::map<uint64_t, Pending> ordered;
  for (auto& [id, p] : pending) ordered.emplace(id, std::move(p));
  for (auto& [id, p] : ordered) {
    int err = LostCallError(options_.hard, p.resend);
    if (err != kLost) {
      std::lock_guard lock(mutex_);
      Answered(id);
    }
    try {
      p.done(err, nullptr);
    } catch (const std::exception& e) {
      spdlog::error("homefs: failing request {}: {}", id, e.what());
    }
  }
}

void FileClient::ConnectionLoop() {
  auto backoff = std::chrono::milliseconds(100);
  bool was_connected = true;
  while (true) {
    std::shared_ptr<SecureStream> fd = std::move(first_);
    if (!fd) {
      {
        std::lock_guard lock(mutex_);
        if (stopping_ || parking_) return;
      }
      try {
        fd = Connect();
        backoff = std::chrono::milliseconds(100);
      } catch (const Error& e) {
        if (was_connected) spdlog::warn("homefs: cannot reach {}: {}", Host(), e.what());
        was_connected = false;
        std::unique_lock lock(mutex_);
        changed_.wait_for(lock, backoff, [&] { return stopping_ || parking_; });
        backoff = std::min(backoff * 2, std::chrono::milliseconds(1000));
        continue;
      }
    }
    auto stream = std::make_shared<FrameStream>(fd, kMaxFrameBytes);
    {
      std::lock_guard lock(mutex_);
      if (stopping_ || parking_) return;
      stream_ = stream;
      last_used_ = Clock::now();
      fd_ = fd->fd();
      ++generation_;
      owed_since_.reset();
    }
    changed_.notify_all();
    if (!was_connected) spdlog::info("homefs: connected to {} again", Host());
    was_connected = true;
    std::string why = "closed by the home";
    try {
      while (auto message = stream->Read()) {
        auto server = message->Root<schema::ServerMessage>();
        if (server.isNotice()) {
          auto notice = server.getNotice();
          uint64_t generation;
          {
            std::lock_guard lock(mutex_);
            if (owed_since_) owed_since_ = Clock::now();  // the home is alive
            generation = generation_;
          }
          if (on_notice_) {
            on_notice_(notice.getNode(), notice.getParent(), notice.getName(), generation);
          }
          continue;
        }
        if (!server.isResponse()) continue;
        Callback done;
        {
          std::lock_guard lock(mutex_);
          auto it = pending_.find(server.getResponse().getId());
          if (it != pending_.end()) {
            done = std::move(it->second.done);
            if (it->second.waits) --waiting_;
            pending_.erase(it);
          }
          Answered(server.getResponse().getId());
          last_used_ = Clock::now();
          // Any answer (one the cache gave already too) shows the home alive; what is
          // still pending is owed from now (a wait for a lock is owed nothing).
          owed_since_.reset();
          if (pending_.size() > waiting_) owed_since_ = Clock::now();
          if (!done) continue;
        }
        try {
          done(0, &*message);
        } catch (const std::exception& e) {
          spdlog::error("homefs: handling a reply: {}", e.what());
        }
      }
    } catch (const Error& e) {
      why = e.what();
    } catch (const kj::Exception& e) {
      // A message that frames but does not read (no root, a bad pointer): the home is
      // broken or not a home. Reconnect, as for a broken stream; never end the thread.
      why = fmt::format("malformed message: {}", e.getDescription().cStr());
    }
    std::unordered_map<uint64_t, Pending> lost;
    bool stopping, parking;
    {
      std::lock_guard lock(mutex_);
      stream_.reset();
      fd_ = -1;
      owed_since_.reset();
      lost.swap(pending_);
      waiting_ = 0;
      stopping = stopping_;
      parking = parking_;
    }
    // Stop and DisconnectIdle break the connection on purpose: nothing to warn of.
    if (!stopping && !parking) spdlog::warn("homefs: connection to {} lost: {}", Host(), why);
    FailAll(std::move(lost));
    if (parking) return;
  }
}

void FileClient::TimerLoop() {
  auto tick = std::clamp(options_.timeout / 4, std::chrono::milliseconds(20),
                         std::chrono::milliseconds(100));
  // A home that answers nothing at all while calls wait is hung (its kernel may still
  // acknowledge bytes, so TCP does not break the connection): soft, after three
  // timeouts; hard, after the grace, as for a cut link.
  auto hung = std::max(3 * options_.timeout, SilenceLimit(options_));
  std::unique_lock lock(mutex_);
  while (!stopping_ && !parking_) {
    changed_.wait_for(lock, tick, [&] { return stopping_ || parking_; });
    if (stopping_ || parking_ || fd_ < 0 || !owed_since_) continue;
    // Calls whose callers were interrupted (Ctrl-C) while the home is silent end now,
    // and those the cache may answer are answered from it.
    std::vector<std::pair<Callback, int>> interrupted;
    auto silent = Since(*owed_since_);
    for (auto it = pending_.begin(); it != pending_.end();) {
      auto& p = it->second;
      // The home's silence, not the request's own wait: during a cut every new question
      // the cache can answer is answered at the next tick, not 2 s later.
      auto waited = silent;
      if (p.interrupted && EndsInterrupted(p.interrupted(), waited)) {
        interrupted.emplace_back(std::move(p.done), EINTR);
        if (p.waits) --waiting_;
        Answered(it->first);
        it = pending_.erase(it);
      } else if (GoesStale(p.may_go_stale, waited)) {
        interrupted.emplace_back(std::move(p.done), ETIMEDOUT);
        if (p.waits) --waiting_;
        Answered(it->first);
        it = pending_.erase(it);
      } else {
        ++it;
      }
    }
    if (!interrupted.empty()) {
      lock.unlock();
      for (auto& [done, err] : interrupted) {
        try {
          done(err, nullptr);
        } catch (const std::exception& e) {
          spdlog::error("homefs: ending an interrupted request: {}", e.what());
        }
      }
      lock.lock();
      continue;
    }
    if (Since(*owed_since_) > hung) {
      spdlog::warn("homefs: {} has answered nothing for {} ms; reconnecting", options_.host,
                   Since(*owed_since_).count());
      ::shutdown(fd_, SHUT_RDWR);
    }
  }
}

bool FileClient::Silent() {
  std::lock_guard lock(mutex_);
  return stream_ && owed_since_ && GoesStale(true, Since(*owed_since_));
}

int FileClient::WaitConnected(uint64_t* generation, const InterruptProbe& interrupted) {
  auto deadline = Clock::now() + options_.timeout;
  std::unique_lock lock(mutex_);
  for (;;) {
    if (stopping_) return EIO;
    if (stream_ && !parking_) {
      *generation = generation_;
      return 0;
    }
    RunLocked();  // on demand: the first call since the connection went makes it again
    if (!options_.hard && Clock::now() >= deadline) return EIO;
    // Woken by a new connection (or the end of a disconnection), or every poll interval
    // to look for an interrupt. A waiter keeps DisconnectIdle away.
    bool was_parking = parking_;
    ++waiters_;
    changed_.wait_for(lock, kWaitPoll, [&] {
      return stopping_ || (stream_ && !parking_) || (was_parking && !parking_);
    });
    --waiters_;
    if (!stream_ && !stopping_ && interrupted && interrupted()) return EINTR;
  }
}

void FileClient::Abandon(uint64_t id) {
  std::lock_guard lock(mutex_);
  Answered(id);
}

uint64_t FileClient::Send(capnp::MessageBuilder& message, uint64_t generation, Callback done,
                          InterruptProbe interrupted, bool may_go_stale, bool resend,
                          bool waits) {
  std::shared_ptr<FrameStream> stream;
  auto rq = message.getRoot<schema::FileRequest>();
  uint64_t id = rq.getId();
  bool again = id != 0;
  int fail = 0;
  {
    std::lock_guard lock(mutex_);
    if (!again) id = next_id_++;
    if (resend) unacked_.insert(id);
    last_used_ = Clock::now();
    if (!stream_ || generation != generation_ || parking_) {
      // Ids from an older connection mean nothing to the home now.
      fail = LostCallError(options_.hard, resend);
      if (fail != kLost) Answered(id);
    } else {
      stream = stream_;
      if (!owed_since_ && !waits) owed_since_ = Clock::now();
      pending_[id] = Pending{std::move(done),       Clock::now(), std::move(interrupted),
                             may_go_stale,          resend,       waits};
      if (waits) ++waiting_;
      rq.setOldest(unacked_.empty() ? id : std::min(id, *unacked_.begin()));
    }
  }
  rq.setId(id);  // kept: a request handed back is sent again under it
  if (fail) {
    done(fail, nullptr);
    return 0;
  }
  rq.setRetry(again);
  rq.setVersion(schema::FILES_VERSION);
  try {
    if (rq.getBehind() &&
        capnp::computeSerializedSizeInWords(message) * sizeof(capnp::word) <= kMaxHeldRequestBytes) {
      if (stream->Hold(message)) flusher_.Due(stream);
    } else {
      stream->Write(message);
    }
  } catch (const Error& e) {
    // The receiving thread sees the broken connection too and fails what is pending,
    // this request included, unless it already answered it.
    std::lock_guard lock(mutex_);
    if (fd_ >= 0 && stream_ == stream) ::shutdown(fd_, SHUT_RDWR);
  }
  return id;
}

void FileClient::Post(capnp::MessageBuilder& message, uint64_t generation) {
  std::shared_ptr<FrameStream> stream;
  {
    std::lock_guard lock(mutex_);
    if (!stream_ || generation != generation_) return;
    stream = stream_;
  }
  message.getRoot<schema::FileRequest>().setVersion(schema::FILES_VERSION);
  try {
    // Nobody waits for it: it goes with the next request, or with the requests behind
    // held with it (a file's forget follows its unlink), at most kHoldBehind later.
    if (stream->Hold(message)) flusher_.Due(stream);
  } catch (const Error&) {
    // The receiving thread notices the broken connection.
  }
}

void FileClient::SendHeld() {
  std::shared_ptr<FrameStream> stream;
  {
    std::lock_guard lock(mutex_);
    stream = stream_;
  }
  if (!stream) return;
  try {
    stream->Flush();
  } catch (const Error&) {
    // The receiving thread notices the broken connection.
  }
}

int FileClient::Call(capnp::MessageBuilder& message, uint64_t generation,
                     std::optional<IncomingMessage>& reply) {
  std::promise<int> result;
  auto future = result.get_future();
  Send(message, generation, [&](int err, IncomingMessage* m) {
    if (m) reply.emplace(std::move(*m));
    result.set_value(err);
  });
  return future.get();
}

}  // namespace homeward
