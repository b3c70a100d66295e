// FileClient: homefs's connection to the home's file service. Requests are pipelined:
// Send registers a callback under the request's id and returns; the receiving thread
// runs the callback when the answer comes. The connection is re-established by itself
// when it breaks (each connection is a new *generation*: ids of the home's objects from
// an older one are void).
//
// A hard client (the default, as an NFS hard mount) waits for a home that is unreachable
// instead of failing: a call waits for the connection as long as it takes, and a silent
// connection (a cut link) is kept for the grace time, so that calls in flight are
// answered when the link comes back. A soft client fails a call with EIO after the
// timeout. Either way a call the caller's process was interrupted in (a signal: FUSE
// interrupts) while the home is silent ends with EINTR, so Ctrl-C works.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <set>
#include <thread>
#include <unordered_map>
#include <vector>

#include <capnp/message.h>

#include "fd.h"
#include "frame_stream.h"
#include "framing.h"
#include "hold_flusher.h"
#include "peer_auth.h"
#include "schema/files.capnp.h"

namespace homeward {

struct ClientOptions {
  std::string host;
  uint16_t port = 4701;
  PeerCredentials key;  // the cluster key, or a partnership's for a partner's node
  std::chrono::milliseconds timeout{10000};
  bool hard = true;
  // Hard: how long a connection whose home answers nothing (data and keepalive probes
  // unacknowledged) is kept before it is broken and made again.
  std::chrono::milliseconds grace{300000};
  // Connects when a call first needs it rather than at Start, and DisconnectIdle may end
  // the connection and the client's threads (a HomeTree's homes: cost follows use).
  bool on_demand = false;
};

// Whether the caller of a waiting request was interrupted (FUSE interrupt). Called with
// the client's lock held, only while the request is unanswered.
using InterruptProbe = std::function<bool()>;

// How long a connection may stay silent before it is broken: the kernel's
// TCP_USER_TIMEOUT and the client's own check of a home that answers nothing.
std::chrono::milliseconds SilenceLimit(const ClientOptions& options);
// Whether a call interrupted by its caller is ended with EINTR now: only when the home
// has been silent a while (a fast answer is about to come otherwise, and a file call that
// fails with EINTR is a surprise for a program that merely handles signals).
bool EndsInterrupted(bool interrupted, std::chrono::milliseconds silent);
// Whether a call that may be answered from the client's cache is answered so now: the
// home has been silent this long (a cut link, a hung home).
bool GoesStale(bool may_go_stale, std::chrono::milliseconds silent);

// What a hard client does with the calls in flight on a connection that breaks: a
// request sent with `resend` is handed back (kLost) to be sent again, with the same id,
// on the next connection; the rest fail with EIO.
int LostCallError(bool hard, bool resend);

// How long a request sent behind may wait for others to go out with it. Two writers
// appending on two nodes append a third more a second with 2 ms than with none (500 us
// gains less, 5 ms no more). No call on this node waits it out: a wait for an answer sends
// what is held (WritesBehind::BeforeWaiting), as does any other request.
constexpr auto kHoldBehind = std::chrono::milliseconds(2);
// Requests sent behind up to this size are held; bigger ones go out at once.
constexpr size_t kMaxHeldRequestBytes = 16 * 1024;

class FileClient {
 public:
  // err is 0 with the server's message, or a positive errno (EIO) without one.
  using Callback = std::function<void(int err, IncomingMessage* message)>;
  // The error a request sent with `resend` gets when its connection broke before it was
  // answered: send it again (the same message: its id says it is the same request).
  static constexpr int kLost = ENOTCONN;

  explicit FileClient(ClientOptions options);
  FileClient(const FileClient&) = delete;
  FileClient& operator=(const FileClient&) = delete;
  ~FileClient();

  // Connects once, synchronously, so a mount by hand fails at once with a clear error
  // when the home is unreachable or refuses the key. Returns the root's attributes.
  schema::Attr::Reader Probe();
  // Receives the home's change notices (on the receiving thread: must not block). Set
  // before Start.
  using NoticeHandler = std::function<void(uint64_t node, uint64_t parent, const std::string& name,
                                           uint64_t generation)>;
  void OnNotice(NoticeHandler handler) { on_notice_ = std::move(handler); }
  // Starts the connection and timer threads (after fork, when daemonizing); on demand,
  // only once a call waits for the connection (or the probe's connection is there).
  void Start();
  void Stop();
  // On demand: when nothing is in flight or owed and nothing was sent or heard for
  // `idle`, closes the connection and ends the threads; the next call connects again
  // (a new generation). Returns whether it did. Never concurrently with itself or Stop.
  bool DisconnectIdle(std::chrono::milliseconds idle);
  // Whether the connection (or an attempt at it) and its threads exist.
  bool running();
  // The home is at another address now: the connection (if any) is made again there.
  void MoveTo(const std::string& host, uint16_t port);

  // Waits until connected (hard: for as long as it takes; soft: up to the timeout).
  // Returns 0 and sets `generation`, or EINTR when `interrupted` says so, or EIO (soft:
  // timed out; stopping).
  int WaitConnected(uint64_t* generation, const InterruptProbe& interrupted = {});
  // Sends the request in `message` (its id is set here) if `generation` is still the
  // connection's; `done` runs exactly once, with EIO when it cannot be answered, EINTR
  // when `interrupted` says its caller gave up while the home was silent.
  // `may_go_stale`: when the home has been silent a while (kStaleAfter), `done` runs with
  // ETIMEDOUT and no message, for the caller to answer from what it last heard (see
  // Fs: attributes, lookups and statfs of a silent home).
  // `resend` (hard clients): a connection that breaks hands the request back with kLost
  // rather than failing it; a message whose id is set already is such a request sent
  // again, and goes with its first id, marked as a retry, so that the home answers a
  // non-idempotent one it performed already from its replay cache.
  // `waits`: the home answers when it can (a lock is free), however long that takes: the
  // request does not count as owed, so the home is not taken for silent meanwhile.
  // Returns the request's id (0 when it was not sent).
  uint64_t Send(capnp::MessageBuilder& message, uint64_t generation, Callback done,
                InterruptProbe interrupted = {}, bool may_go_stale = false, bool resend = false,
                bool waits = false);
  // The caller gave up a request handed back with kLost (it will not be sent again).
  void Abandon(uint64_t id);
  bool hard() const { return options_.hard; }
  // This client's id, in every hello: the home's replay cache is keyed by it.
  uint64_t id() const { return id_; }
  // Sends a request the home does not answer (forget), if still on `generation`: held
  // to go out with others, as a request behind is.
  void Post(capnp::MessageBuilder& message, uint64_t generation);
  // Sends the requests behind held to go out together (Send) now: their answers are
  // waited for.
  void SendHeld();
  // Whether the home has been silent a while (kStaleAfter) with calls waiting: questions
  // the cache can answer are answered from it rather than sent.
  bool Silent();
  uint64_t generation() {
    std::lock_guard lock(mutex_);
    return stream_ ? generation_ : 0;
  }
  // Sends and waits for the answer.
  int Call(capnp::MessageBuilder& message, uint64_t generation,
           std::optional<IncomingMessage>& reply);

 private:
  struct Pending {
    Callback done;
    std::chrono::steady_clock::time_point sent;
    InterruptProbe interrupted;
    bool may_go_stale = false;
    bool resend = false;
    bool waits = false;
  };
  void ConnectionLoop();
  void TimerLoop();
  std::shared_ptr<SecureStream> Connect();
  void FailAll(std::unordered_map<uint64_t, Pending> pending);
  // Starts the threads unless they run (called with the lock held).
  void RunLocked();
  // The home's address (MoveTo may change it).
  std::string Host();
  // Called with the lock held for a request that is answered (or given up) for good.
  void Answered(uint64_t id) { unacked_.erase(id); }

  ClientOptions options_;
  NoticeHandler on_notice_;
  std::optional<IncomingMessage> probe_reply_;
  std::shared_ptr<SecureStream> first_;
  pid_t probe_pid_ = 0;  // the process that made first_
  std::mutex mutex_;
  std::condition_variable changed_;
  std::shared_ptr<FrameStream> stream_;  // set while connected
  int fd_ = -1;  // the connection's TCP socket, to break it from another thread
  uint64_t generation_ = 0;
  uint64_t next_id_ = 1;
  std::unordered_map<uint64_t, Pending> pending_;
  size_t waiting_ = 0;  // entries of pending_ that wait (for a lock)
  uint64_t id_ = 0;
  // Resendable requests not yet answered for good, in flight or waiting to be sent
  // again: the oldest goes with every request, so the home forgets older ones.
  std::set<uint64_t> unacked_;
  // Since when the home has owed an answer and given none: set by a request sent while
  // nothing was owed, moved on by every message from the home, cleared when nothing is
  // pending after one. A request the client answered itself (EINTR, from the cache) stays
  // owed, so a silent home stays silent however many requests are answered locally.
  std::optional<std::chrono::steady_clock::time_point> owed_since_;
  bool stopping_ = false;
  bool started_ = false;   // Start was called
  bool running_ = false;   // the threads exist
  bool parking_ = false;   // DisconnectIdle is ending them
  int waiters_ = 0;        // calls in WaitConnected
  std::chrono::steady_clock::time_point last_used_{};  // the last request sent or answer heard
  std::thread connection_thread_;
  std::thread timer_thread_;
  // Small requests sent behind (FileRequest.behind: their callers were answered already)
  // go out together, kHoldBehind after the first of a run (FrameStream::Hold).
  HoldFlusher flusher_{kHoldBehind};
};

}  // namespace homeward
