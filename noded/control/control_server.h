// The daemon's control socket: a unix stream socket on which the user commands send
// framed ControlRequests. Each request gets exactly one reply, possibly later (a request
// may wait for a migration), through the ReplySender handed to the handler.
#pragma once

#include <uv.h>

#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_set>
#include <vector>

#include <capnp/message.h>

#include "error.h"
#include "fd.h"
#include "framing.h"
#include "schema/control.capnp.h"
#include "uv_handle.h"

namespace homeward {

class ControlConnection;
struct PendingReply;

// Who sent a request, as the kernel vouches for it (SO_PEERCRED), never as claimed.
struct Caller {
  pid_t pid = -1;
  uid_t uid = static_cast<uid_t>(-1);
  gid_t gid = static_cast<gid_t>(-1);
  // Another node's daemon, authenticated by the cluster key (pid, uid and gid are then
  // meaningless). Only peers may start guests.
  bool peer = false;
  std::string peer_address;
  std::string peer_cluster;  // a partner cluster's node; empty: one of this cluster
};

struct StreamHandlers;

// A connection turned into a two-way stream (mosrun's relay of a job's stdio, signals
// and exit). Holds the connection weakly: once the client is gone, Send does nothing.
class ControlStream {
 public:
  ControlStream() = default;
  explicit ControlStream(std::weak_ptr<ControlConnection> connection)
      : connection_(std::move(connection)) {}

  void Send(capnp::MessageBuilder& message);
  // Closes the connection after everything sent so far has been written.
  void Close();
  bool open() const;
  // Bytes accepted by Send but not yet written to the client.
  size_t queued_bytes() const;
  // Called once the queue has drained after exceeding `kHighWater`: the producer paused
  // (its job's output) may resume.
  void OnDrain(std::function<void()> callback);
  // Replaces the stream's handlers (a relay whose job moved to another node).
  void SetHandlers(StreamHandlers handlers);
  // Stops (or resumes) reading from the other end: back-pressure across a relay.
  void PauseReading(bool pause);
  static constexpr size_t kHighWater = 1 << 20;

 private:
  std::weak_ptr<ControlConnection> connection_;
};

// Receives every later message of a streaming connection, and its end.
struct StreamHandlers {
  // The raw message: a stream that home opened to a peer receives ControlReply messages,
  // the other streams ControlRequest ones.
  std::function<void(IncomingMessage&)> on_message;
  std::function<void()> on_close;
};

// Replies to one request, once. Safe to keep after the client went away: sending then
// does nothing. A request whose every sender is dropped unsent is answered with an
// error, so no client waits forever.
class ReplySender {
 public:
  explicit ReplySender(std::shared_ptr<PendingReply> pending) : pending_(std::move(pending)) {}
  ReplySender(ReplySender&&) = default;
  ReplySender& operator=(ReplySender&&) = default;
  ReplySender(const ReplySender&) = delete;
  ReplySender& operator=(const ReplySender&) = delete;

  void Send(capnp::MessageBuilder& reply);
  void SendError(const Error& error);
  // Turns the connection into a stream: later messages go to `handlers`, and the
  // returned stream sends any number of messages. Counts as this request's reply.
  ControlStream OpenStream(StreamHandlers handlers);
  // Stops (or resumes) reading the client's next messages: for a request answered later,
  // off the loop, whose stream must exist before what the client sends after it arrives.
  void HoldLaterMessages(bool hold);
  const Caller& caller() const;

 private:
  friend struct PendingReply;
  static void SendTo(PendingReply& pending, capnp::MessageBuilder& reply);
  static void SendErrorTo(PendingReply& pending, const Error& error);
  std::shared_ptr<PendingReply> pending_;
};

using ControlHandler = std::function<void(schema::ControlRequest::Reader, ReplySender)>;

class ControlServer {
 public:
  ControlServer(uv_loop_t* loop, std::string socket_path, ControlHandler handler);
  ControlServer(const ControlServer&) = delete;
  ControlServer& operator=(const ControlServer&) = delete;
  ~ControlServer();

  // Binds and listens. Refuses to start when another daemon answers on the socket; a
  // stale socket file from a daemon that died is replaced.
  void Start();
  // Stops listening, closes every connection and removes the socket file.
  void Stop();

  // Connections served at once: by one local user other than root, and in all (jobs'
  // relays included: each running job of a user holds one).
  static constexpr size_t kMaxConnectionsPerUser = 1024;
  static constexpr size_t kMaxConnections = 8192;

  // Serves an authenticated connection from another node's daemon like a local client
  // (requests to the handler). Safe to call from any thread: peer connections are
  // authenticated on the peer server's threads, then served on the loop.
  void AdoptPeer(Fd fd, std::string peer_address, std::string peer_cluster);
  // Makes a connection this daemon opened to a peer a stream at once (on the loop). Never
  // throws: a connection that cannot be served is closed (handlers.on_close runs) and the
  // stream returned is not open().
  ControlStream AdoptStream(Fd fd, Caller caller, StreamHandlers handlers);

 private:
  friend class ControlConnection;
  void Accept();
  void Forget(ControlConnection* connection);
  std::shared_ptr<ControlConnection> Adopt(Fd fd, Caller caller);
  void TakeAdopted();

  uv_loop_t* loop_;
  std::string socket_path_;
  ControlHandler handler_;
  UvHandle<uv_pipe_t> listener_;
  std::unordered_set<std::shared_ptr<ControlConnection>> connections_;
  bool listening_ = false;
  UvHandle<uv_async_t> adopt_wakeup_;
  std::mutex adopt_mutex_;
  std::vector<std::pair<Fd, Caller>> adopt_queue_;
};

}  // namespace homeward
