// Blocking control-socket client for the user commands.
#include "control_client.h"

#include <sys/socket.h>
#include <sys/un.h>

#include <cstdlib>
#include <cstring>

#include <capnp/message.h>

#include "error.h"
#include "fd.h"

namespace homeward {

std::string ControlSocketPath() {
  const char* env = std::getenv("HOMEWARD_CONTROL");
  return env && *env ? env : kDefaultControlSocket;
}

ControlClient ControlClient::Connect(const std::string& socket_path) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (socket_path.size() >= sizeof addr.sun_path) {
    Fail(ErrorKind::kInvalidInput, "control socket path is too long: {}", socket_path);
  }
  std::strcpy(addr.sun_path, socket_path.c_str());
  Fd fd = Fd::Adopt(HW_SYSCALL(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0), "socket"));
  if (::connect(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    int err = errno;
    if (err == ENOENT || err == ECONNREFUSED) {
      throw Error(ErrorKind::kDisconnected,
                  fmt::format("no node daemon is running at {} ({}); start mosnoded, or set "
                              "HOMEWARD_CONTROL to its control socket",
                              socket_path, std::strerror(err)),
                  err);
    }
    throw SystemError(err, fmt::format("connect to the node daemon at {}", socket_path));
  }
  return ControlClient(std::move(fd), socket_path);
}

IncomingMessage ControlClient::Call(
    const std::function<void(schema::ControlRequest::Builder)>& fill) {
  capnp::MallocMessageBuilder message;
  auto request = message.initRoot<schema::ControlRequest>();
  request.setVersion(schema::CONTROL_VERSION);
  fill(request);
  WriteFrame(fd_.get(), message);
  auto reply = ReadFrame(fd_.get(), decoder_);
  if (!reply) {
    Fail(ErrorKind::kDisconnected, "the node daemon at {} closed the connection without "
         "replying", path_);
  }
  auto root = reply->template Root<schema::ControlReply>();
  if (root.isError()) {
    auto error = root.getError();
    throw Error(ErrorKindFromName(error.getKind().cStr()), error.getMessage());
  }
  return std::move(*reply);
}

}  // namespace homeward
