// Fuzzes the two readers of framed Cap'n Proto messages on byte streams, side by side:
// FrameDecoder (utils/lib/framing: the control socket and the commands, fed in any
// chunking) and FrameStream (utils/lib/frame_stream: the peer services' blocking reader,
// over a real socket). Input: [limit][chunking seed][stream bytes]. Both must return the
// same messages, end the same way, and never read a message past its limits.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <string>
#include <vector>

#include <capnp/any.h>
#include <kj/exception.h>

#include "error.h"
#include "frame_stream.h"
#include "framing.h"
#include "fuzz_util.h"

using namespace homeward;

namespace {

constexpr size_t kMaxMessages = 256;

struct Outcome {
  std::vector<std::string> messages;  // each message's words, as bytes
  bool clean_end = false;             // the stream ended on a frame boundary
};

std::string BytesOf(IncomingMessage& message) {
  // Read the whole message through its root, within its traversal limit, as a handler
  // would; a malformed pointer is the reader's refusal, not a crash.
  try {
    auto root = message.Root<capnp::AnyPointer>();
    if (!root.isNull()) (void)root.targetSize();
  } catch (const kj::Exception&) {
  }
  return std::to_string(message.size_in_bytes());
}

Outcome WithDecoder(const uint8_t* data, size_t size, size_t limit, uint32_t seed) {
  Outcome out;
  FrameDecoder decoder(limit);
  size_t offset = 0;
  try {
    while (offset < size && out.messages.size() < kMaxMessages) {
      seed = seed * 1103515245 + 12345;
      size_t chunk = std::min<size_t>(size - offset, 1 + (seed >> 16) % 97);
      decoder.Feed(data + offset, chunk);
      offset += chunk;
      while (auto message = decoder.Next()) {
        out.messages.push_back(BytesOf(*message));
        if (out.messages.size() >= kMaxMessages) break;
      }
    }
    out.clean_end = offset == size && decoder.buffered() == 0;
  } catch (const Error& e) {
    if (e.kind() != ErrorKind::kInvalidInput) fuzz::Broken("FrameDecoder failed oddly");
  }
  return out;
}

Outcome WithStream(const uint8_t* data, size_t size, size_t limit) {
  Outcome out;
  fuzz::SocketWithBytes socket(data, size);
  FrameStream stream(socket.fd(), limit);
  try {
    while (out.messages.size() < kMaxMessages) {
      auto message = stream.Read();
      if (!message) {
        out.clean_end = true;
        break;
      }
      out.messages.push_back(BytesOf(*message));
    }
  } catch (const Error& e) {
    if (e.kind() != ErrorKind::kInvalidInput && e.kind() != ErrorKind::kDisconnected) {
      fuzz::Broken("FrameStream failed oddly");
    }
  }
  return out;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 2) return 0;
  size_t limit = size_t{64} << (data[0] % 12);  // 64 bytes .. 128 KiB
  uint32_t seed = data[1];
  data += 2;
  size -= 2;
  Outcome decoded = WithDecoder(data, size, limit, seed);
  Outcome streamed = WithStream(data, size, limit);
  if (std::getenv("FUZZ_DEBUG")) {
    std::fprintf(stderr, "decoder: %zu messages, clean %d; stream: %zu messages, clean %d\n",
                 decoded.messages.size(), decoded.clean_end, streamed.messages.size(),
                 streamed.clean_end);
  }
  size_t common = std::min(decoded.messages.size(), streamed.messages.size());
  for (size_t i = 0; i < common; ++i) {
    if (decoded.messages[i] != streamed.messages[i]) fuzz::Broken("the readers disagree");
  }
  if (decoded.messages.size() < kMaxMessages && streamed.messages.size() < kMaxMessages) {
    if (decoded.messages.size() != streamed.messages.size()) {
      fuzz::Broken("the readers return different numbers of messages");
    }
    if (decoded.clean_end != streamed.clean_end) fuzz::Broken("the readers end differently");
  }
  return 0;
}
