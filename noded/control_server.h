// The daemon's control socket: a unix stream socket on which the user commands send
// framed ControlRequests. Each request gets exactly one reply, possibly later (a request
// may wait for a migration), through the ReplySender handed to the handler.
#pragma once

#include <uv.h>

#include <functional>
#include <memory>
#include <string>
#include <unordered_set>

#include <capnp/message.h>

#include "error.h"
#include "schema/control.capnp.h"
#include "uv_handle.h"

namespace homeward {

class ControlConnection;
struct PendingReply;

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

 private:
  friend class ControlConnection;
  void Accept();
  void Forget(ControlConnection* connection);

  uv_loop_t* loop_;
  std::string socket_path_;
  ControlHandler handler_;
  UvHandle<uv_pipe_t> listener_;
  std::unordered_set<std::shared_ptr<ControlConnection>> connections_;
  bool listening_ = false;
};

}  // namespace homeward
