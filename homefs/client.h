// FileClient: homefs's connection to the home's file service. Requests are pipelined:
// Send registers a callback under the request's id and returns; the receiving thread
// runs the callback when the answer comes. The connection is re-established by itself
// when it breaks (each connection is a new *generation*: ids of the home's objects from
// an older one are void), and nothing waits longer than the configured timeout: a call
// while the home is unreachable, or one in flight when the link breaks, fails with EIO.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include <capnp/message.h>

#include "fd.h"
#include "frame_stream.h"
#include "framing.h"
#include "schema/files.capnp.h"

namespace homeward {

struct ClientOptions {
  std::string host;
  uint16_t port = 4701;
  std::vector<uint8_t> key;
  std::chrono::milliseconds timeout{10000};
};

class FileClient {
 public:
  // err is 0 with the server's message, or a positive errno (EIO) without one.
  using Callback = std::function<void(int err, IncomingMessage* message)>;

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
  // Starts the connection and timer threads (after fork, when daemonizing).
  void Start();
  void Stop();

  // Waits (up to the timeout) until connected; returns the generation, 0 on timeout.
  uint64_t WaitConnected();
  // Sends the request in `message` (its id is set here) if `generation` is still the
  // connection's; `done` runs exactly once, with EIO when it cannot be answered.
  void Send(capnp::MessageBuilder& message, uint64_t generation, Callback done);
  // Sends a request the home does not answer (forget), if still on `generation`.
  void Post(capnp::MessageBuilder& message, uint64_t generation);
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
  };
  void ConnectionLoop();
  void TimerLoop();
  std::shared_ptr<SecureStream> Connect();
  void FailAll(std::unordered_map<uint64_t, Pending> pending);

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
  std::chrono::steady_clock::time_point last_receive_;
  bool stopping_ = false;
  std::thread connection_thread_;
  std::thread timer_thread_;
};

}  // namespace homeward
