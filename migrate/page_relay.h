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
//
// A lazy move's pages go on a connection of their own, in the same frames, between the
// source's lazy dump and criu lazy-pages on the target (which asks, page by page, for as
// long as the restored job runs without all its memory); the move's connection then
// carries LAZY in place of the sessions and DONE.
#pragma once

#include <cstdint>
#include <memory>
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
  void Abort() override;
  // No more sessions: the migration stream follows on the connection.
  void Finish();
  // On a lazy move's own connection (not this relay's): the pages go elsewhere.
  static void PagesElsewhere(SecureStream& stream);
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
  std::string criu_path = DefaultCriuPath();
  uint64_t max_bytes = uint64_t{64} << 30;                // refuse more than this ...
  std::string max_what = "the most this node accepts";   // ... and say what it is
};

// The target's side: serves the sessions of one move's dump with criu page-server into
// `dir` (which exists) until the source's DONE, or LAZY; blocks. Returns the bytes of the
// pages written. Throws Error(kDisconnected) when the connection is cut, kInvalidInput for a
// malformed frame, kOverloaded past max_bytes, kFailed when the last session's page server
// failed. The caller removes `dir` on failure.
uint64_t ReceivePages(SecureStream& stream, const std::string& dir,
                      const PageReceiveOptions& options = {});

// The first bytes of a lazy move's page connection: the token the move's metadata names
// too (JobMetadata::lazy_token), by which the target pairs the two. Receive throws
// Error(kDisconnected) when the connection ends first.
void SendLazyToken(SecureStream& stream, uint64_t token);
uint64_t ReceiveLazyToken(SecureStream& stream);

// The target's side of a lazy move's pages: relays the frames of the source's lazy dump
// to criu lazy-pages here (RestoreOptions::lazy_pages_socket) and its requests back, on
// threads of its own, from construction on. A cut connection ends lazy-pages' socket, so
// that it fails (and kills the job it could not complete).
class LazyPageRelayIn {
 public:
  // `hold`: the fault point lazy-hold (the source's first answer once the job is restored
  // (Restored) is held, so that the job waits for its memory, until the relay ends or a
  // minute has passed).
  LazyPageRelayIn(std::unique_ptr<SecureStream> stream, bool hold = false);
  LazyPageRelayIn(const LazyPageRelayIn&) = delete;
  LazyPageRelayIn& operator=(const LazyPageRelayIn&) = delete;
  ~LazyPageRelayIn();
  // criu lazy-pages' end of the relay.
  int socket() const { return criu_end_.get(); }
  // After criu lazy-pages has exited: waits for the source's DONE. Throws Error when the
  // relay failed on the way.
  void Finish();
  // Ends the relay now, as a cut connection would: lazy-pages fails.
  void Cut();
  // criu has restored the job, which runs and pulls the rest of its memory.
  void Restored();
  // Whether the lazy-hold fault point holds an answer now.
  bool holding();

 private:
  void FromSource();
  // lazy-hold: holds the answer in hand (at most a minute) once the job is restored;
  // false when it is not yet.
  bool HoldOnce();
  void Failed(const std::string& why);

  std::unique_ptr<SecureStream> stream_;
  bool hold_;
  Fd criu_end_, relay_end_;
  std::thread up_, down_;
  std::mutex mutex_;
  std::string error_;
  bool stopping_ = false;
  bool holding_ = false;
  bool restored_ = false;
};

}  // namespace homeward::migrate
