// The user commands' side of the control protocol: one blocking request and reply over
// the node daemon's unix socket.
#pragma once

#include <functional>
#include <string>

#include "fd.h"
#include "framing.h"
#include "schema/control.capnp.h"

namespace homeward {

// Where the commands find their daemon: $HOMEWARD_CONTROL, else the default socket.
std::string ControlSocketPath();
inline constexpr const char* kDefaultControlSocket = "/var/lib/homeward/control.sock";
// The largest control message: a job spec carries argv and the environment (the kernel
// allows 2 MiB of them by default), and every list is copied whole by the daemon.
inline constexpr size_t kMaxControlFrameBytes = 4 << 20;

class ControlClient {
 public:
  // Connects to the daemon at `socket_path`. Throws Error(kDisconnected) that says no
  // daemon is running there when nothing listens.
  static ControlClient Connect(const std::string& socket_path);

  // Sends the request that `fill` builds and returns the reply. A reply carrying an
  // error is thrown as Error with the daemon's kind and message.
  IncomingMessage Call(const std::function<void(schema::ControlRequest::Builder)>& fill);
  // The connection itself, for clients that keep it as a stream (mosrun).
  int fd() const { return fd_.get(); }

 private:
  ControlClient(Fd fd, std::string path) : fd_(std::move(fd)), path_(std::move(path)) {}
  Fd fd_;
  std::string path_;
  FrameDecoder decoder_{kMaxControlFrameBytes};
};

}  // namespace homeward
