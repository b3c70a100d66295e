// Fuzzes the target's side of the page relay (migrate/page_relay: ReceivePages), which a
// node runs on what a peer sends while a job's dump runs there: frames that start and end
// page-server sessions and carry the dump's bytes. The input is what the peer sends. The
// page server is `true` (it ends each session at once, as a criu page-server that fails
// would), so the frames' handling is what runs: it must return within its byte limit or
// fail with an Error of a known kind, with no thread or process left behind. The same
// input then goes to a lazy move's relay (LazyPageRelayIn), whose criu lazy-pages is
// gone at once: it must end, or fail with an Error of a known kind.
#include <sys/stat.h>
#include <unistd.h>

#include <cstdint>
#include <string>

#include "error.h"
#include "fuzz_util.h"
#include "image_stream.h"
#include "page_relay.h"
#include "secure_channel.h"

using namespace homeward;

namespace {

constexpr uint64_t kMaxBytes = 1 << 20;

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const std::string base = fuzz::ScratchDir("homeward-fuzz-pages");
  const std::string dir = base + "/pages";
  if (::mkdir(dir.c_str(), 0700) != 0) fuzz::Broken("cannot make the scratch directory");
  migrate::PageReceiveOptions options;
  options.criu_path = "/bin/true";
  options.max_bytes = kMaxBytes;
  options.max_what = "the fuzzer's limit";
  {
    fuzz::SocketWithBytes peer(data, size);
    auto stream = SecureStream::Plain(Fd::Adopt(::dup(peer.fd())), "fuzz peer");
    try {
      uint64_t bytes = migrate::ReceivePages(*stream, dir, options);
      if (bytes > kMaxBytes) fuzz::Broken("pages past the limit were taken");
    } catch (const Error& e) {
      if (e.kind() != ErrorKind::kInvalidInput && e.kind() != ErrorKind::kDisconnected &&
          e.kind() != ErrorKind::kOverloaded && e.kind() != ErrorKind::kFailed) {
        fuzz::Broken("the relay failed with an unexpected kind");
      }
    }
  }
  migrate::RemoveImageDir(dir);
  {
    fuzz::SocketWithBytes peer(data, size);
    migrate::LazyPageRelayIn relay(
        SecureStream::Plain(Fd::Adopt(::dup(peer.fd())), "fuzz lazy peer"));
    try {
      relay.Finish();
    } catch (const Error& e) {
      if (e.kind() != ErrorKind::kFailed) fuzz::Broken("the lazy relay failed with another kind");
    }
  }
  return 0;
}
