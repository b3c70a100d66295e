// Relays criu's page-server protocol over a move's connection (see page_relay.h).
#include "page_relay.h"

#include <sys/socket.h>
#include <sys/uio.h>

#include <algorithm>
#include <chrono>
#include <vector>

#include <spdlog/spdlog.h>

#include "error.h"
#include "image_stream.h"
#include "secure_channel.h"

namespace homeward::migrate {

namespace {

enum class Frame : uint32_t {
  kBegin = 1,
  kData = 2,
  kEnd = 3,
  kDone = 4,
  kError = 5,
  kLazy = 6,
};
struct FrameHeader {
  uint32_t kind = 0;
  uint32_t length = 0;
};
// A read from criu's socket, and so a frame's data, is at most this.
constexpr size_t kMaxData = 1 << 20;

void WriteFrame(SecureStream& stream, Frame kind, const void* data = nullptr, size_t size = 0) {
  FrameHeader header{static_cast<uint32_t>(kind), static_cast<uint32_t>(size)};
  iovec iov[2] = {{&header, sizeof header}, {const_cast<void*>(data), size}};
  stream.Write(iov, size ? 2 : 1);
}

// Reads exactly `size` bytes; false at a clean end before the first.
bool ReadExactly(SecureStream& stream, void* data, size_t size, const char* what) {
  auto* at = static_cast<char*>(data);
  size_t got = 0;
  while (got < size) {
    size_t n = stream.Read(at + got, size - got);
    if (n == 0) {
      if (got == 0) return false;
      Fail(ErrorKind::kDisconnected, "the connection ended inside {}", what);
    }
    got += n;
  }
  return true;
}

// The next frame's header, checked; its data (if any) is read by the caller.
FrameHeader ReadFrame(SecureStream& stream, const char* expecting) {
  FrameHeader header;
  if (!ReadExactly(stream, &header, sizeof header, "a page frame")) {
    Fail(ErrorKind::kDisconnected, "the connection ended before {}", expecting);
  }
  if (header.kind < static_cast<uint32_t>(Frame::kBegin) ||
      header.kind > static_cast<uint32_t>(Frame::kLazy)) {
    Fail(ErrorKind::kInvalidInput, "malformed page frame (kind {})", header.kind);
  }
  bool data = header.kind == static_cast<uint32_t>(Frame::kData) ||
              header.kind == static_cast<uint32_t>(Frame::kError);
  if ((data && (header.length == 0 || header.length > kMaxData)) || (!data && header.length)) {
    Fail(ErrorKind::kInvalidInput, "malformed page frame (kind {}, {} bytes)", header.kind,
         header.length);
  }
  return header;
}

std::pair<Fd, Fd> SocketPair() {
  int fds[2];
  HW_SYSCALL(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds),
             "socketpair for the page server");
  // Room for several MiB in flight between criu and the relay, so that neither waits
  // for the other to be scheduled: with the default (about 200 KiB) a 1 GiB dump took
  // 11 to 16 s instead of 1.4 to 2.6 s beside other work on this 2-core machine.
  // (The FORCE options pass the system's limits, for root; others get those limits.)
  constexpr int kBufferBytes = 4 << 20;
  for (int fd : fds) {
    if (::setsockopt(fd, SOL_SOCKET, SO_SNDBUFFORCE, &kBufferBytes, sizeof kBufferBytes) != 0) {
      ::setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &kBufferBytes, sizeof kBufferBytes);
    }
    if (::setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &kBufferBytes, sizeof kBufferBytes) != 0) {
      ::setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &kBufferBytes, sizeof kBufferBytes);
    }
  }
  return {Fd::Adopt(fds[0]), Fd::Adopt(fds[1])};
}

// Copies what `socket` yields into DATA frames until it ends, then sends END. Returns the
// bytes copied; throws Error when the connection breaks (the socket is then shut down, so
// that criu, on its other end, stops too).
uint64_t CopySocketToFrames(int socket, SecureStream& stream, const char* what) {
  std::vector<char> buffer(kMaxData);
  uint64_t total = 0;
  try {
    while (size_t n = ReadSome(socket, buffer.data(), buffer.size(), what)) {
      WriteFrame(stream, Frame::kData, buffer.data(), n);
      total += n;
    }
    WriteFrame(stream, Frame::kEnd);
  } catch (...) {
    ::shutdown(socket, SHUT_RDWR);
    throw;
  }
  return total;
}

}  // namespace

PageRelayOut::~PageRelayOut() {
  if (!up_.joinable() && !down_.joinable()) return;
  // A session cut short (Dump threw past End): both threads must stop, whatever the peer.
  stream_.Shutdown();
  if (relay_end_.valid()) ::shutdown(relay_end_.get(), SHUT_RDWR);
  if (up_.joinable()) up_.join();
  if (down_.joinable()) down_.join();
}

void PageRelayOut::Failed(const std::string& why, bool said_by_target) {
  std::lock_guard lock(mutex_);
  // What the target says is the cause; a connection it then closed is only the effect.
  if (error_.empty() || said_by_target) error_ = why;
}

void PageRelayOut::Upstream() {
  try {
    uint64_t n = CopySocketToFrames(relay_end_.get(), stream_, "criu's page requests");
    std::lock_guard lock(mutex_);
    bytes_ += n;
  } catch (const std::exception& e) {
    Failed(fmt::format("sending pages: {}", e.what()));
  }
}

void PageRelayOut::Downstream() {
  try {
    std::vector<char> buffer;
    for (;;) {
      FrameHeader frame = ReadFrame(stream_, "the page server's end");
      if (frame.kind == static_cast<uint32_t>(Frame::kEnd)) return;
      bool data = frame.kind == static_cast<uint32_t>(Frame::kData);
      if (!data && frame.kind != static_cast<uint32_t>(Frame::kError)) {
        Fail(ErrorKind::kInvalidInput, "unexpected page frame (kind {}) from the target",
             frame.kind);
      }
      buffer.resize(frame.length);
      ReadExactly(stream_, buffer.data(), buffer.size(), "a page frame");
      if (!data) {
        Failed(std::string(buffer.data(), buffer.size()), true);
        break;
      }
      SendAll(relay_end_.get(), buffer.data(), buffer.size(), "answer criu for the page server");
    }
  } catch (const std::exception& e) {
    Failed(e.what());
  }
  // criu may be waiting for an answer that will not come.
  ::shutdown(relay_end_.get(), SHUT_RDWR);
}

int PageRelayOut::Begin() {
  if (up_.joinable() || down_.joinable()) Fail(ErrorKind::kFailed, "a page session is under way");
  error_.clear();
  WriteFrame(stream_, Frame::kBegin);
  std::tie(criu_end_, relay_end_) = SocketPair();
  up_ = std::thread([this] { Upstream(); });
  down_ = std::thread([this] { Downstream(); });
  return criu_end_.get();
}

void PageRelayOut::End() {
  // criu has exited: with our copy closed, its end is closed, and Upstream reads the end.
  criu_end_.Reset();
  if (up_.joinable()) up_.join();
  if (down_.joinable()) down_.join();
  relay_end_.Reset();
  std::lock_guard lock(mutex_);
  if (!error_.empty()) Fail(ErrorKind::kFailed, "{}", error_);
}

void PageRelayOut::Abort() {
  stream_.Shutdown();
  if (relay_end_.valid()) ::shutdown(relay_end_.get(), SHUT_RDWR);
}

void PageRelayOut::Finish() { WriteFrame(stream_, Frame::kDone); }

void PageRelayOut::PagesElsewhere(SecureStream& stream) { WriteFrame(stream, Frame::kLazy); }

namespace {

// One session on the target: criu page-server on a thread, its answers sent back on
// another, while the caller feeds it the dump's frames.
class ServerSession {
 public:
  ServerSession(SecureStream& stream, const std::string& dir, const std::string& criu_path)
      : stream_(stream) {
    Fd server_end;
    std::tie(server_end, relay_end_) = SocketPair();
    server_ = std::thread([this, dir, criu_path, end = std::move(server_end)]() mutable {
      try {
        ServePages(end.get(), dir, criu_path);
      } catch (const std::exception& e) {
        std::lock_guard lock(mutex_);
        error_ = e.what();
      }
      end.Reset();  // with criu gone, Answers reads the end of the socket
    });
    answers_ = std::thread([this] {
      try {
        CopySocketToFrames(relay_end_.get(), stream_, "the page server's answers");
      } catch (const std::exception& e) {
        std::lock_guard lock(mutex_);
        if (answers_error_.empty()) answers_error_ = e.what();
      }
    });
  }
  ServerSession(const ServerSession&) = delete;
  ServerSession& operator=(const ServerSession&) = delete;
  ~ServerSession() {
    if (server_.joinable()) Stop();
  }

  void Feed(const char* data, size_t size) {
    SendAll(relay_end_.get(), data, size, "give criu page-server the dump's pages");
  }
  // The dump's criu has exited: the page server sees the end too, if it has not ended
  // the session itself. Returns the session's error, or an empty string.
  std::string Stop() {
    ::shutdown(relay_end_.get(), SHUT_WR);
    server_.join();
    answers_.join();
    std::lock_guard lock(mutex_);
    return !error_.empty() ? error_ : answers_error_;
  }

 private:
  SecureStream& stream_;
  Fd relay_end_;
  std::thread server_, answers_;
  std::mutex mutex_;
  std::string error_, answers_error_;
};

}  // namespace

namespace {

// Takes the next frame from the dump's side and does what it says. Returns true at DONE.
bool ServeFrame(SecureStream& stream, const std::string& dir, const PageReceiveOptions& options,
                std::unique_ptr<ServerSession>& session, std::string& last_error,
                uint64_t& total, std::vector<char>& buffer) {
  FrameHeader frame = ReadFrame(stream, "the dump's pages");
  switch (static_cast<Frame>(frame.kind)) {
    case Frame::kBegin:
      if (session) Fail(ErrorKind::kInvalidInput, "a page session began inside another");
      // A run of criu after a failed one starts over.
      EmptyDirectory(dir);
      total = 0;
      session = std::make_unique<ServerSession>(stream, dir, options.criu_path);
      return false;
    case Frame::kData:
      if (!session) Fail(ErrorKind::kInvalidInput, "pages outside a page session");
      total += frame.length;
      if (total > options.max_bytes) {
        Fail(ErrorKind::kOverloaded, "the job's images (over {} MiB) are more than {} ({} MiB)",
             total >> 20, options.max_what, options.max_bytes >> 20);
      }
      buffer.resize(frame.length);
      ReadExactly(stream, buffer.data(), buffer.size(), "a page frame");
      try {
        session->Feed(buffer.data(), buffer.size());
      } catch (const Error& e) {
        // A page server that stopped taking pages has said why in its log.
        std::string why = session->Stop();
        session.reset();
        Fail(ErrorKind::kFailed, "{}", why.empty() ? e.what() : why);
      }
      return false;
    case Frame::kEnd:
      if (!session) Fail(ErrorKind::kInvalidInput, "a page session ended that never began");
      last_error = session->Stop();
      session.reset();
      return false;
    case Frame::kDone:
      if (session) Fail(ErrorKind::kInvalidInput, "the dump ended inside a page session");
      if (!last_error.empty()) Fail(ErrorKind::kFailed, "{}", last_error);
      return true;
    case Frame::kLazy:
      if (session) Fail(ErrorKind::kInvalidInput, "a lazy move inside a page session");
      return true;
    case Frame::kError:
      break;
  }
  Fail(ErrorKind::kInvalidInput, "an error frame from the dump's side");
}

}  // namespace

uint64_t ReceivePages(SecureStream& stream, const std::string& dir,
                      const PageReceiveOptions& options) {
  std::unique_ptr<ServerSession> session;
  std::string last_error = "the dump sent no page session";
  uint64_t total = 0;
  std::vector<char> buffer;
  try {
    while (!ServeFrame(stream, dir, options, session, last_error, total, buffer)) {
    }
    return total;
  } catch (const std::exception& e) {
    // The dump's side hears why before its session ends (the session's END follows), so
    // that its criu stops and its error names the cause.
    try {
      std::string why = e.what();
      WriteFrame(stream, Frame::kError, why.data(), std::min(why.size(), kMaxData));
    } catch (const std::exception&) {
      // The connection is gone: the dump's side sees that instead.
    }
    throw;
  }
}

void SendLazyToken(SecureStream& stream, uint64_t token) { stream.Write(&token, sizeof token); }

uint64_t ReceiveLazyToken(SecureStream& stream) {
  uint64_t token = 0;
  if (!ReadExactly(stream, &token, sizeof token, "a lazy move's token")) {
    Fail(ErrorKind::kDisconnected, "a lazy page connection ended before its token");
  }
  return token;
}

LazyPageRelayIn::LazyPageRelayIn(std::unique_ptr<SecureStream> stream, bool hold)
    : stream_(std::move(stream)), hold_(hold) {
  std::tie(criu_end_, relay_end_) = SocketPair();
  up_ = std::thread([this] {
    try {
      CopySocketToFrames(relay_end_.get(), *stream_, "criu lazy-pages' requests");
    } catch (const std::exception& e) {
      Failed(fmt::format("asking for pages: {}", e.what()));
    }
  });
  down_ = std::thread([this] { FromSource(); });
}

LazyPageRelayIn::~LazyPageRelayIn() {
  Cut();
  if (up_.joinable()) up_.join();
  if (down_.joinable()) down_.join();
}

void LazyPageRelayIn::Cut() {
  {
    std::lock_guard lock(mutex_);
    stopping_ = true;
  }
  stream_->Shutdown();
  ::shutdown(relay_end_.get(), SHUT_RDWR);
}

void LazyPageRelayIn::Restored() {
  std::lock_guard lock(mutex_);
  restored_ = true;
}

bool LazyPageRelayIn::holding() {
  std::lock_guard lock(mutex_);
  return holding_;
}

void LazyPageRelayIn::Failed(const std::string& why) {
  std::lock_guard lock(mutex_);
  if (error_.empty()) error_ = why;
}

bool LazyPageRelayIn::HoldOnce() {
  {
    std::lock_guard lock(mutex_);
    if (!restored_) return false;  // the job is not restored yet: this answer goes on
    holding_ = true;
  }
  spdlog::warn("fault point lazy-hold: the job's pages are held until the relay ends");
  for (int i = 0; i < 600; ++i) {
    {
      std::lock_guard lock(mutex_);
      if (stopping_) break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  std::lock_guard lock(mutex_);
  holding_ = false;
  return true;
}

void LazyPageRelayIn::FromSource() {
  try {
    std::vector<char> buffer;
    bool held = false;
    for (;;) {
      FrameHeader frame = ReadFrame(*stream_, "the lazy dump's end");
      switch (static_cast<Frame>(frame.kind)) {
        case Frame::kBegin:  // a run of the dump's criu; only the last one serves pages
          break;
        case Frame::kEnd:  // the dump's criu has exited: lazy-pages must not wait for it
          ::shutdown(relay_end_.get(), SHUT_WR);
          break;
        case Frame::kDone:
          return;
        case Frame::kData:
          buffer.resize(frame.length);
          ReadExactly(*stream_, buffer.data(), buffer.size(), "a page frame");
          if (hold_ && !held) held = HoldOnce();
          SendAll(relay_end_.get(), buffer.data(), buffer.size(), "give criu lazy-pages its pages");
          break;
        default:
          Fail(ErrorKind::kInvalidInput, "unexpected page frame (kind {}) from the lazy dump",
               frame.kind);
      }
    }
  } catch (const std::exception& e) {
    Failed(e.what());
  }
  // lazy-pages may wait for pages that will not come: it must fail, not wait.
  ::shutdown(relay_end_.get(), SHUT_RDWR);
}

void LazyPageRelayIn::Finish() {
  criu_end_.Reset();  // lazy-pages has exited: the relay reads the end of its requests
  if (up_.joinable()) up_.join();
  if (down_.joinable()) down_.join();
  std::lock_guard lock(mutex_);
  if (!error_.empty()) Fail(ErrorKind::kFailed, "the lazy page relay failed: {}", error_);
}

}  // namespace homeward::migrate
