// A job's output on this node: its stdout, stderr and status pipes pumped to its relay,
// paused while the relay is behind, held across a move, and what is still owed written
// down when the job is frozen.
#include <fcntl.h>
#include <unistd.h>

#include <cstring>

#include <capnp/message.h>
#include <spdlog/spdlog.h>

#include "c_boundary.h"
#include "error.h"
#include "job.h"
#include "job_stream.h"
#include "terminal_stream.h"
#include "uv_error.h"

namespace homeward {

FrozenOutput Job::PendingOutput(uint64_t limit) {
  FrozenOutput output;
  uint64_t total = 0;
  for (Stream* stream : {stdout_.get(), stderr_.get()}) {
    if (!stream) continue;
    Pump(*stream, true);
    output.start[stream->fd] = stream->trimmed;
    total += stream->taken - stream->trimmed;
  }
  if (total > limit) {
    Fail(ErrorKind::kFailed, "its output its home has not had ({} bytes) is over {} bytes", total,
         limit);
  }
  for (Stream* stream : {stdout_.get(), stderr_.get()}) {
    if (!stream) continue;
    std::string& data = output.data[stream->fd];
    data.resize(stream->taken - stream->trimmed);
    size_t done = 0;
    while (done < data.size()) {
      ssize_t n = ::pread(stream->spool.get(), data.data() + done, data.size() - done,
                          static_cast<off_t>(stream->trimmed + done));
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) Fail(ErrorKind::kFailed, "cannot read its spooled output");
      done += static_cast<size_t>(n);
    }
  }
  return output;
}

void Job::KeepOutputFrom(const FrozenOutput& output) {
  for (Stream* stream : {stdout_.get(), stderr_.get()}) {
    if (stream) stream->trimmed = std::min(output.start[stream->fd], stream->taken);
  }
}

bool Job::Stopped(const Stream& stream) const {
  // The status is never held back; output is while mosrun is slower than the job, while
  // its home waits for output relayed from the job's old node, and while no mosrun is
  // there to take it (after a restart).
  if (detached_) return true;
  return stream.fd != 3 && (output_paused_ || output_held_);
}

void Job::Pump(Stream& stream, bool force) {
  for (int round = 0; !stream.eof && (force || !Stopped(stream)); ++round) {
    ssize_t n = ::splice(stream.pipe.get(), nullptr, stream.spool.get(), nullptr, 1 << 20,
                         SPLICE_F_NONBLOCK | SPLICE_F_MOVE);
    if (n > 0) {
      stream.taken += static_cast<uint64_t>(n);
      if (!force && round < 4) continue;  // a few rounds, then other handles get their turn
      break;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && errno == EAGAIN) break;
    if (n < 0) spdlog::warn("job {}: cannot read its output: {}", home_pid(), strerror(errno));
    stream.eof = true;
  }
  Deliver(stream, force);
  UpdatePoll(stream);
  if (stream.eof && stream.sent == stream.taken) MaybeFinish();
}

void Job::Deliver(Stream& stream, bool force) {
  if (detached_ && stream.fd != 3) return;
  // What was sent before is in mosrun's socket once the relay's queue is empty: mosrun
  // gets it even if this daemon dies now, so the spool need not keep it.
  // A guest's relay is a connection to its home, whose kernel buffers die with the node:
  // there, the home's word trims the spools (OutputHad).
  if (stream.fd != 3 && !launch_.guest && relay_.queued_bytes() == 0) {
    uint64_t upto = stream.sent & ~uint64_t{4095};
    if (upto > stream.trimmed) {
      ::fallocate(stream.spool.get(), FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
                  static_cast<off_t>(stream.trimmed), static_cast<off_t>(upto - stream.trimmed));
      stream.trimmed = upto;
    }
  }
  while (stream.sent < stream.taken && (force || !Stopped(stream))) {
    size_t want =
        static_cast<size_t>(std::min<uint64_t>(sizeof stream.buffer, stream.taken - stream.sent));
    ssize_t n = ::pread(stream.spool.get(), stream.buffer, want, static_cast<off_t>(stream.sent));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      spdlog::warn("job {}: cannot read its spooled output: {}", home_pid(),
                   n < 0 ? strerror(errno) : "short");
      stream.sent = stream.taken;
      break;
    }
    stream.sent += static_cast<uint64_t>(n);
    if (stream.fd == 3) {
      status_text_.append(stream.buffer, static_cast<size_t>(n));
      // "checkpoint" lines before the last: the job asks for one (mosrun -S).
      static constexpr std::string_view kAsk = "checkpoint\n";
      while (status_text_.compare(0, kAsk.size(), kAsk) == 0) {
        status_text_.erase(0, kAsk.size());
        status_consumed_ += kAsk.size();
        if (on_checkpoint_request_ && status_consumed_ > status_replayed_) {
          on_checkpoint_request_();
        }
      }
      if (status_text_.size() > 4096) status_text_.resize(4096);
      continue;
    }
    SendOutput(stream.fd, stream.buffer, static_cast<size_t>(n));
    // Hold the job's output back while mosrun is slower than the job.
    if (!force && relay_.queued_bytes() > ControlStream::kHighWater) PauseOutput(true);
  }
}

void Job::UpdatePoll(Stream& stream) {
  bool want = !stream.eof && !Stopped(stream) && !finished_;
  if (want == stream.polling) return;
  stream.polling = want;
  if (!want) {
    uv_poll_stop(stream.poll.get());
    return;
  }
  CheckUv(uv_poll_start(stream.poll.get(), UV_READABLE | UV_DISCONNECT,
                        [](uv_poll_t* handle, int, int) {
                          GuardedCall("job output", [handle] {
                            auto* s = static_cast<Stream*>(handle->data);
                            s->job->Pump(*s);
                          });
                        }),
          "job output");
}

void Job::SendOutput(int fd, const char* data, size_t size) {
  capnp::MallocMessageBuilder message;
  auto output = message.initRoot<schema::ControlReply>().initJobOutput();
  output.setFd(static_cast<uint8_t>(fd));
  output.setData(kj::arrayPtr(reinterpret_cast<const kj::byte*>(data), size));
  relay_.Send(message);
}

std::vector<migrate::PipeRole> Job::pipe_roles() const {
  static const char* const kRoles[] = {"stdin", "stdout", "stderr", "status"};
  std::vector<migrate::PipeRole> roles;
  for (size_t i = 0; i < pipe_inodes_.size(); ++i) roles.push_back({pipe_inodes_[i], kRoles[i]});
  return roles;
}

void Job::PauseOutput(bool pause) {
  if (pause == output_paused_) return;
  output_paused_ = pause;
  if (pause) spdlog::debug("job {}: its output waits: mosrun is behind", home_pid());
  UpdateOutputReading();
}

void Job::WatchRelayDrain() {
  relay_.OnDrain([weak = weak_from_this()] {
    auto job = weak.lock();
    if (!job) return;
    // A copy: reading on may end the old relay, which clears the callback.
    if (auto also = job->relay_drained_) also();
    job->PauseOutput(false);
  });
}

void Job::HoldOutput(bool hold) {
  if (hold == output_held_) return;
  output_held_ = hold;
  UpdateOutputReading();
}

void Job::UpdateOutputReading() {
  for (Stream* stream : {stdout_.get(), stderr_.get()}) {
    if (!stream) continue;
    if (Stopped(*stream)) {
      UpdatePoll(*stream);
    } else {
      Pump(*stream);
    }
  }
}

}  // namespace homeward
