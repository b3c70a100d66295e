// Fuzzes what the daemon does with the bytes of a control connection (noded/
// control_server: any local user can connect, and peers' job relays arrive the same
// way) up to its handler: framing with the daemon's own size and traversal limits, the
// root as a ControlRequest and its version check; then every field is read, as the
// handlers (noded/daemon.cc, job_registry.cc) read the ones they need, and as a
// ControlReply, which relays that home opened to a peer receive.
#include <cstdint>
#include <optional>

#include <kj/exception.h>

#include "control_client.h"
#include "error.h"
#include "framing.h"
#include "fuzz_util.h"
#include "schema/control.capnp.h"

using namespace homeward;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  FrameDecoder decoder(kMaxControlFrameBytes);
  decoder.Feed(data, size);
  for (int i = 0; i < 64; ++i) {
    std::optional<IncomingMessage> message;
    try {
      message = decoder.Next();
    } catch (const Error& e) {
      if (e.kind() != ErrorKind::kInvalidInput) fuzz::Broken("a bad frame is invalid input");
      return 0;  // the daemon answers an error and drops the connection
    }
    if (!message) return 0;
    // The same catches as ControlConnection::Dispatch: Error and kj's exceptions.
    try {
      auto request = message->Root<schema::ControlRequest>();
      if (request.getVersion() == schema::CONTROL_VERSION) {
        (void)fuzz::Walk(capnp::toDynamic(request));
      }
    } catch (const Error&) {
    } catch (const kj::Exception&) {
    }
    try {
      (void)fuzz::Walk(capnp::toDynamic(message->Root<schema::ControlReply>()));
    } catch (const kj::Exception&) {
    }
  }
  return 0;
}
