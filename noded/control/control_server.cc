// Control socket server on libuv.
#include "control_server.h"

#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <deque>
#include <fstream>

#include <spdlog/spdlog.h>

#include "c_boundary.h"
#include "control_client.h"
#include "framing.h"
#include "uv_error.h"

namespace homeward {

// One request's reply state, shared by every ReplySender of that request.
struct PendingReply {
  PendingReply(std::weak_ptr<ControlConnection> c, Caller who)
      : connection(std::move(c)), caller(who) {}
  PendingReply(const PendingReply&) = delete;
  PendingReply& operator=(const PendingReply&) = delete;
  ~PendingReply();
  std::weak_ptr<ControlConnection> connection;
  Caller caller;
  bool sent = false;
};

class ControlConnection : public std::enable_shared_from_this<ControlConnection> {
 public:
  ControlConnection(ControlServer* server) : server_(server) {}

  uv_pipe_t* pipe() { return pipe_.get(); }

  void StartReading() {
    pipe_.get()->data = this;
    CheckUv(uv_read_start(
                pipe_.stream(),
                [](uv_handle_t* handle, size_t, uv_buf_t* buf) {
                  auto* self = static_cast<ControlConnection*>(handle->data);
                  buf->base = self->read_buffer_;
                  buf->len = sizeof self->read_buffer_;
                },
                [](uv_stream_t* stream, ssize_t nread, const uv_buf_t* buf) {
                  GuardedCall("control socket read", [&] {
                    static_cast<ControlConnection*>(stream->data)->OnRead(nread, buf);
                  });
                }),
            "control socket read");
  }

  void Write(kj::Array<capnp::word> frame) {
    if (closed_ || closing_) return;
    auto* request = new WriteRequest{{}, kj::mv(frame), weak_from_this()};
    auto bytes = request->frame.asBytes();
    uv_buf_t buf =
        uv_buf_init(reinterpret_cast<char*>(bytes.begin()), static_cast<unsigned>(bytes.size()));
    request->req.data = request;
    int status = uv_write(&request->req, pipe_.stream(), &buf, 1, [](uv_write_t* req, int) {
      GuardedCall("control socket write", [req] {
        auto* request = static_cast<WriteRequest*>(req->data);
        auto connection = request->connection.lock();
        delete request;
        if (connection) connection->AfterWrite();
      });
    });
    if (status < 0) {
      delete request;
      Close();
    }
  }

  // Closes once every queued write is done.
  void CloseAfterWrites() {
    closing_ = true;
    AfterWrite();
  }

  void Close() {
    if (closed_) return;
    closed_ = true;
    pipe_.Close();
    auto on_close = std::move(stream_.on_close);
    stream_ = {};
    on_drain_ = nullptr;
    if (on_close) on_close();
    server_->Forget(this);  // may destroy *this: nothing after this line
  }

  bool closed() const { return closed_ || closing_; }
  const Caller& caller() const { return caller_; }

  // Learns who connected; the kernel's word, checked once at accept.
  void ReadCaller() {
    uv_os_fd_t fd;
    ucred cred{};
    socklen_t length = sizeof cred;
    if (uv_fileno(pipe_.base(), &fd) == 0 &&
        getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &length) == 0) {
      caller_.pid = cred.pid;
      caller_.uid = cred.uid;
      caller_.gid = cred.gid;
    }
  }
  size_t queued_bytes() const { return closed_ ? 0 : pipe_.stream()->write_queue_size; }
  void SetStream(StreamHandlers handlers) { stream_ = std::move(handlers); }
  void SetOnDrain(std::function<void()> callback) { on_drain_ = std::move(callback); }
  void SetCaller(Caller caller) { caller_ = std::move(caller); }
  void PauseReading(bool pause) {
    if (closed_ || pause == reading_paused_) return;
    reading_paused_ = pause;
    if (pause) {
      uv_read_stop(pipe_.stream());
    } else {
      try {
        StartReading();
      } catch (const Error& e) {
        Close();
        return;
      }
      DispatchBuffered();
    }
  }

 private:
  struct WriteRequest {
    uv_write_t req;
    kj::Array<capnp::word> frame;
    std::weak_ptr<ControlConnection> connection;
  };

  void AfterWrite() {
    if (closed_) return;
    size_t queued = pipe_.stream()->write_queue_size;
    if (closing_ && queued == 0) {
      Close();
      return;
    }
    if (queued < ControlStream::kHighWater / 2 && on_drain_) {
      auto callback = on_drain_;
      callback();
    }
  }

  void OnRead(ssize_t nread, const uv_buf_t* buf) {
    if (nread < 0) {
      Close();
      return;
    }
    decoder_.Feed(buf->base, static_cast<size_t>(nread));
    DispatchBuffered();
  }

  // Dispatches the complete messages received so far, until the connection is paused
  // (what stays buffered is dispatched on resume) or closed.
  void DispatchBuffered() {
    auto keep_alive = shared_from_this();
    try {
      while (!reading_paused_ && !closed_) {
        auto message = decoder_.Next();
        if (!message) break;
        Dispatch(*message);
      }
    } catch (const Error& e) {
      spdlog::warn("control: dropping a client that sent a bad message: {}", e.what());
      ReplySender(std::make_shared<PendingReply>(weak_from_this(), caller_)).SendError(e);
      Close();
    }
  }

  void Dispatch(IncomingMessage& message) {
    if (stream_.on_message) {
      try {
        auto handler = stream_.on_message;  // may be replaced or cleared while it runs
        handler(message);
      } catch (const std::exception& e) {
        spdlog::warn("control: dropping a stream whose client sent a bad message: {}", e.what());
        Close();
      }
      return;
    }
    // Kept here too, so that an error thrown by the handler is the request's one reply.
    auto pending = std::make_shared<PendingReply>(weak_from_this(), caller_);
    schema::ControlRequest::Reader request;
    try {
      request = message.Root<schema::ControlRequest>();
      if (request.getVersion() != schema::CONTROL_VERSION) RefuseVersion(request.getVersion());
      server_->handler_(request, ReplySender(pending));
    } catch (const Error& e) {
      ReplySender(pending).SendError(e);
    } catch (const kj::Exception& e) {
      ReplySender(pending).SendError(
          Error(ErrorKind::kInvalidInput,
                fmt::format("malformed request: {}", e.getDescription().cStr())));
    }
  }

  // Refuses a request of another protocol version, naming who sent it and both versions.
  [[noreturn]] void RefuseVersion(uint16_t version) const {
    if (version < schema::CONTROL_VERSION) {
      Fail(ErrorKind::kInvalidInput, "{} is older than this daemon: protocol version {}, need {}",
           ClientName(), version, schema::CONTROL_VERSION);
    }
    Fail(ErrorKind::kInvalidInput,
         "{} is newer than this daemon: protocol version {}, this daemon speaks {}; use the "
         "commands of the same release",
         ClientName(), version, schema::CONTROL_VERSION);
  }

  // The command that connected (its program's name, as the kernel lists its arguments),
  // or the peer node's daemon.
  std::string ClientName() const {
    if (caller_.peer) return fmt::format("the node daemon at {}", caller_.peer_address);
    std::ifstream cmdline(fmt::format("/proc/{}/cmdline", caller_.pid));
    std::string program;
    std::getline(cmdline, program, '\0');
    if (size_t slash = program.rfind('/'); slash != std::string::npos) program.erase(0, slash + 1);
    // The name is the caller's to choose: only printable characters, and not too many of
    // them, reach the reply and the log.
    std::string shown;
    for (char c : program) {
      if (shown.size() == 64) break;
      if (c >= 0x20 && c < 0x7f) shown.push_back(c);
    }
    return shown.empty() ? fmt::format("the client (pid {})", caller_.pid) : shown;
  }

  ControlServer* server_;
  UvHandle<uv_pipe_t> pipe_;
  FrameDecoder decoder_{kMaxControlFrameBytes};
  char read_buffer_[64 * 1024];
  bool closed_ = false;
  bool closing_ = false;
  bool reading_paused_ = false;
  Caller caller_;
  StreamHandlers stream_;
  std::function<void()> on_drain_;
};

PendingReply::~PendingReply() {
  if (!sent) {
    ReplySender::SendErrorTo(
        *this, Error(ErrorKind::kFailed, "the daemon dropped this request without answering"));
  }
}

void ReplySender::Send(capnp::MessageBuilder& reply) {
  SendTo(*pending_, reply);
}

const Caller& ReplySender::caller() const {
  return pending_->caller;
}

ControlStream ReplySender::OpenStream(StreamHandlers handlers) {
  pending_->sent = true;
  auto connection = pending_->connection.lock();
  if (!connection || connection->closed()) {
    Fail(ErrorKind::kDisconnected, "the client went away before its stream opened");
  }
  connection->SetStream(std::move(handlers));
  return ControlStream(connection);
}

void ReplySender::HoldLaterMessages(bool hold) {
  if (auto connection = pending_->connection.lock()) connection->PauseReading(hold);
}

void ControlStream::Send(capnp::MessageBuilder& message) {
  if (auto connection = connection_.lock()) connection->Write(EncodeFrame(message));
}

void ControlStream::Close() {
  if (auto connection = connection_.lock()) connection->CloseAfterWrites();
}

bool ControlStream::open() const {
  auto connection = connection_.lock();
  return connection && !connection->closed();
}

size_t ControlStream::queued_bytes() const {
  auto connection = connection_.lock();
  return connection ? connection->queued_bytes() : 0;
}

void ControlStream::SetHandlers(StreamHandlers handlers) {
  if (auto connection = connection_.lock()) connection->SetStream(std::move(handlers));
}

void ControlStream::PauseReading(bool pause) {
  if (auto connection = connection_.lock()) connection->PauseReading(pause);
}

void ControlStream::OnDrain(std::function<void()> callback) {
  if (auto connection = connection_.lock()) connection->SetOnDrain(std::move(callback));
}

void ReplySender::SendError(const Error& error) {
  SendErrorTo(*pending_, error);
}

void ReplySender::SendTo(PendingReply& pending, capnp::MessageBuilder& reply) {
  if (pending.sent) return;
  pending.sent = true;
  if (auto connection = pending.connection.lock()) connection->Write(EncodeFrame(reply));
}

void ReplySender::SendErrorTo(PendingReply& pending, const Error& error) {
  capnp::MallocMessageBuilder message;
  auto reply = message.initRoot<schema::ControlReply>().initError();
  reply.setKind(std::string(ErrorKindName(error.kind())));
  reply.setMessage(error.what());
  SendTo(pending, message);
}

ControlServer::ControlServer(uv_loop_t* loop, std::string socket_path, ControlHandler handler)
    : loop_(loop), socket_path_(std::move(socket_path)), handler_(std::move(handler)) {}

ControlServer::~ControlServer() {
  Stop();
}

namespace {

// True when a live daemon accepts connections at `path`.
bool SomeoneListens(const std::string& path) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::snprintf(addr.sun_path, sizeof addr.sun_path, "%s", path.c_str());
  int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return false;
  bool listening = ::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0;
  ::close(fd);
  return listening;
}

}  // namespace

void ControlServer::Start() {
  if (SomeoneListens(socket_path_)) {
    Fail(ErrorKind::kFailed, "another node daemon is already serving {}", socket_path_);
  }
  ::unlink(socket_path_.c_str());
  CheckUv(uv_async_init(loop_, adopt_wakeup_.get(),
                        [](uv_async_t* async) {
                          GuardedCall("control: adopting peer connections", [async] {
                            static_cast<ControlServer*>(async->data)->TakeAdopted();
                          });
                        }),
          "control wake-up");
  adopt_wakeup_.get()->data = this;
  CheckUv(uv_pipe_init(loop_, listener_.get(), 0), "control socket");
  listener_.get()->data = this;
  CheckUv(uv_pipe_bind(listener_.get(), socket_path_.c_str()),
          fmt::format("bind control socket {}", socket_path_));
  // Any local user may ask; each request is checked against the caller's credentials.
  ::chmod(socket_path_.c_str(), 0666);
  CheckUv(uv_listen(listener_.stream(), 64,
                    [](uv_stream_t* server, int status) {
                      if (status != 0) return;
                      GuardedCall("control socket accept", [server] {
                        static_cast<ControlServer*>(server->data)->Accept();
                      });
                    }),
          fmt::format("listen on control socket {}", socket_path_));
  listening_ = true;
}

void ControlServer::Accept() {
  auto connection = std::make_shared<ControlConnection>(this);
  if (uv_pipe_init(loop_, connection->pipe(), 0) < 0) return;
  if (uv_accept(listener_.stream(), reinterpret_cast<uv_stream_t*>(connection->pipe())) < 0) {
    return;
  }
  connection->ReadCaller();
  // Each connection may buffer a frame of up to kMaxControlFrameBytes: a cap per local
  // user (root's own commands excepted) and in all keeps one user from taking the
  // daemon's memory or descriptors from everyone else.
  size_t same_user = 0;
  for (const auto& other : connections_) {
    if (!other->caller().peer && other->caller().uid == connection->caller().uid) ++same_user;
  }
  bool too_many = connections_.size() >= kMaxConnections ||
                  (connection->caller().uid != 0 && same_user >= kMaxConnectionsPerUser);
  connections_.insert(connection);
  if (too_many) {
    ReplySender(std::make_shared<PendingReply>(connection, connection->caller()))
        .SendError(Error(ErrorKind::kOverloaded,
                         fmt::format("too many connections to the node daemon from uid {} "
                                     "(at most {} per user, {} in all)",
                                     connection->caller().uid, kMaxConnectionsPerUser,
                                     kMaxConnections)));
    connection->CloseAfterWrites();
    return;
  }
  try {
    connection->StartReading();
  } catch (const Error& e) {
    spdlog::warn("control: {}", e.what());
    connection->Close();
  }
}

std::shared_ptr<ControlConnection> ControlServer::Adopt(Fd fd, Caller caller) {
  auto connection = std::make_shared<ControlConnection>(this);
  CheckUv(uv_pipe_init(loop_, connection->pipe(), 0), "adopt connection");
  // libuv's stream code serves any connected stream socket, TCP included, as a pipe.
  CheckUv(uv_pipe_open(connection->pipe(), fd.get()), "adopt connection");
  fd.Release();
  connection->SetCaller(std::move(caller));
  connections_.insert(connection);
  return connection;
}

void ControlServer::AdoptPeer(Fd fd, std::string peer_address, std::string peer_cluster) {
  Caller caller;
  caller.peer = true;
  caller.peer_address = std::move(peer_address);
  caller.peer_cluster = std::move(peer_cluster);
  {
    std::lock_guard lock(adopt_mutex_);
    adopt_queue_.emplace_back(std::move(fd), std::move(caller));
  }
  // Dropped when the server has stopped: the queued connections then close with it.
  if (listening_) uv_async_send(adopt_wakeup_.get());
}

void ControlServer::TakeAdopted() {
  std::vector<std::pair<Fd, Caller>> adopted;
  {
    std::lock_guard lock(adopt_mutex_);
    adopted.swap(adopt_queue_);
  }
  for (auto& [fd, caller] : adopted) {
    std::string address = caller.peer_address;
    try {
      auto connection = Adopt(std::move(fd), std::move(caller));
      connection->StartReading();
    } catch (const Error& e) {
      spdlog::warn("peer {}: {}", address, e.what());
    }
  }
}

ControlStream ControlServer::AdoptStream(Fd fd, Caller caller, StreamHandlers handlers) {
  std::shared_ptr<ControlConnection> connection;
  try {
    connection = Adopt(std::move(fd), caller);
    connection->SetStream(std::move(handlers));
    connection->StartReading();
  } catch (const Error& e) {
    // Its callers run on the loop, in callbacks: a connection that cannot be served ends
    // as a lost one does, through its on_close, and never as an exception.
    spdlog::warn("cannot serve the connection to {}: {}",
                 caller.peer ? caller.peer_address : "a local client", e.what());
    if (connection) {
      connection->Close();
    } else if (handlers.on_close) {
      handlers.on_close();
    }
    return ControlStream();
  }
  return ControlStream(connection);
}

void ControlServer::Forget(ControlConnection* connection) {
  for (auto it = connections_.begin(); it != connections_.end(); ++it) {
    if (it->get() == connection) {
      connections_.erase(it);
      return;
    }
  }
}

void ControlServer::Stop() {
  if (!listening_) return;
  listening_ = false;
  listener_.Close();
  adopt_wakeup_.Close();
  auto connections = connections_;
  for (auto& connection : connections) connection->Close();
  ::unlink(socket_path_.c_str());
}

}  // namespace homeward
