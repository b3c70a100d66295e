// Pages while the dump runs. A move's criu dump sends the job's memory to a criu page
// server on the target through the move's own connection, so each page is written once,
// on the target, while criu is still dumping, where a dump into a local directory would
// write it here, then read it again to stream it after the dump. The rest of the images
// (a few hundred KiB) follows in the migration stream (image_stream.h).
//
// On the connection, before the migration stream, both ways: frames of an 8-byte header
// (kind, length; host order, as criu's own images are) and `length` bytes.
//   source -> target: BEGIN (a criu run starts: a fresh page server, an empty directory),
//                     DATA (criu's bytes), END (criu has exited), ... DONE (the dump is
//                     over: the migration stream follows).
//   target -> source: DATA (the page server's answers), END (it has exited), and
//                     ERROR (why it cannot go on, in words) when it fails.
// criu's dump may run more than once (Dump tries again after some failures), each run
// one session between BEGIN and END.
#pragma once

#include <cstdint>
#include <mutex>
#include <string>
#include <thread>

#include "checkpoint.h"
#include "fd.h"

namespace homeward {
class SecureStream;
}

namespace homeward::migrate {

// The source's side: what Dump's criu runs talk to (DumpOptions::pages).
class PageRelayOut final : public PageSessions {
 public:
  explicit PageRelayOut(SecureStream& stream) : stream_(stream) {}
  PageRelayOut(const PageRelayOut&) = delete;
  PageRelayOut& operator=(const PageRelayOut&) = delete;
  // Ends a session still under way (the connection is then of no further use).
  ~PageRelayOut() override;

  int Begin() override;
  void End() override;
  // No more sessions: the migration stream follows on the connection.
  void Finish();
  // Bytes criu sent the page server, over every session.
  uint64_t bytes() const { return bytes_; }

 private:
  void Upstream();
  void Downstream();
  void Failed(const std::string& why, bool said_by_target = false);

  SecureStream& stream_;
  Fd criu_end_;  // criu's end of the socket pair (our copy, closed once criu is gone)
  Fd relay_end_;
  std::thread up_, down_;
  std::mutex mutex_;
  std::string error_;
  uint64_t bytes_ = 0;
};

struct PageReceiveOptions {
  std::string criu_path = HOMEWARD_CRIU_PATH;
  uint64_t max_bytes = uint64_t{64} << 30;                // refuse more than this ...
  std::string max_what = "the most this node accepts";   // ... and say what it is
};

// The target's side: serves the sessions of one move's dump with criu page-server into
// `dir` (which exists) until the source's DONE; blocks. Returns the bytes of the pages
// written. Throws Error(kDisconnected) when the connection is cut, kInvalidInput for a
// malformed frame, kOverloaded past max_bytes, kFailed when the last session's page server
// failed. The caller removes `dir` on failure.
uint64_t ReceivePages(SecureStream& stream, const std::string& dir,
                      const PageReceiveOptions& options = {});

}  // namespace homeward::migrate
