// A job's standard input: the byte stream from mosrun, written into the job's stdin pipe
// at the offsets mosrun numbers it by, held while the job is being dumped, and carried
// with a move (what the job has not read yet). See ARCHITECTURE.md, "Standard input
// across moves".
#include <fcntl.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include <capnp/message.h>
#include <fmt/format.h>

#include "c_boundary.h"
#include "error.h"
#include "job.h"

namespace homeward {

void Job::Input(uint64_t offset, const void* data, size_t size) {
  uint64_t received = input_received();
  if (offset == kNextInput) offset = received;
  if (size == 0 || offset > received || offset + size <= received) return;
  if (input_end_ || input_closed_) return;  // nothing after the end of input
  size_t skip = static_cast<size_t>(received - offset);
  input_queue_.append(static_cast<const char*>(data) + skip, size - skip);
  FlushInput();
  // A client that ignores the input window (mosrun never does) is not read any further
  // until its input has drained: the daemon's memory stays bounded whatever it sends.
  if (input_queue_.size() > 2 * uint64_t{schema::INPUT_WINDOW} && !input_paused_) {
    input_paused_ = true;
    relay_.PauseReading(true);
  }
}

void Job::InputEnd(uint64_t offset) {
  if (input_end_ || input_closed_) return;
  // An end that overtook bytes lost with a move comes again after them.
  if (offset != kNextInput && offset != input_received()) return;
  input_end_ = true;
  FlushInput();
}

void Job::set_migrating(bool migrating) {
  input_held_ = migrating;
  if (!migrating) FlushInput();
}

Job::InputPlace Job::input_place() const {
  return InputPlace{stdin_read_.get(), input_written_, input_closed_};
}

InputCarry Job::ReclaimInput(const InputPlace& place) {
  InputCarry carry;
  carry.ended = place.ended;
  if (place.reader >= 0) {
    int pending = 0;
    HW_SYSCALL(::ioctl(place.reader, FIONREAD, &pending), "measure the job's unread input");
    // Copied out with tee, not read: the bytes stay in the job's pipe, so a daemon killed
    // during the move leaves the job's input whole for the next one (see "Daemon
    // restarts"), and a move that fails has nothing to put back.
    int size = HW_SYSCALL(::fcntl(place.reader, F_GETPIPE_SZ), "the job's stdin size");
    Pipe scratch = Pipe::Create();
    HW_SYSCALL(::fcntl(scratch.write.get(), F_SETPIPE_SZ, size), "a pipe for the job's input");
    size_t copied = 0;
    while (copied < static_cast<size_t>(pending)) {
      ssize_t n = ::tee(place.reader, scratch.write.get(), static_cast<size_t>(pending),
                        SPLICE_F_NONBLOCK);
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) throw SystemError(errno, "copy the job's unread input");
      copied = static_cast<size_t>(n);
      break;
    }
    carry.data.resize(copied);
    size_t have = 0;
    while (have < copied) {
      ssize_t n = ::read(scratch.read.get(), carry.data.data() + have, copied - have);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) break;
      have += static_cast<size_t>(n);
    }
    carry.data.resize(have);
  }
  if (carry.data.size() > place.written) {
    Fail(ErrorKind::kFailed, "the job's stdin holds {} bytes but only {} were written to it",
         carry.data.size(), place.written);
  }
  carry.offset = place.written - carry.data.size();
  return carry;
}

void Job::ReturnInput(const InputPlace&, const InputCarry&) {
  // ReclaimInput leaves the bytes in the pipe: there is nothing to put back.
}

void Job::FlushInput() {
  if (input_held_ || input_closed_ || stdin_write_.get() < 0) return;
  // The bytes go through the input spool (its file position is input_written_): splice
  // moves them into the pipe and the position on in one call, so a daemon killed at any
  // moment leaves in the spool the exact offset where the job's input goes on.
  size_t done = 0;
  if (!input_queue_.empty()) {
    size_t put = 0;
    while (put < input_queue_.size()) {
      ssize_t n = ::pwrite(stdin_spool_.get(), input_queue_.data() + put, input_queue_.size() - put,
                           static_cast<off_t>(input_written_ + put));
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) throw SystemError(errno, "spool the job's input");
      put += static_cast<size_t>(n);
    }
  }
  while (done < input_queue_.size()) {
    ssize_t n = ::splice(stdin_spool_.get(), nullptr, stdin_write_.get(), nullptr,
                         input_queue_.size() - done, SPLICE_F_NONBLOCK);
    if (n > 0) {
      done += static_cast<size_t>(n);
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && errno == EAGAIN) break;
    // The pipe has no reader left (the job's and ours are gone): like a pipe whose
    // reader is gone, the input is dropped.
    done = input_queue_.size();
    input_end_ = true;
    break;
  }
  if (done > 0 && input_queue_.size() == done) {
    // Input spooled and in the pipe need not stay: the spool keeps only its position.
    uint64_t upto = (input_written_ + done) & ~uint64_t{4095};
    if (upto > 0) ::fallocate(stdin_spool_.get(), FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 0,
                              static_cast<off_t>(upto));
  }
  if (done > 0) {
    input_queue_.erase(0, done);
    input_written_ += done;
    capnp::MallocMessageBuilder message;
    message.initRoot<schema::ControlReply>().setJobInputWritten(input_written_);
    relay_.Send(message);
  }
  if (input_paused_ && input_queue_.size() <= schema::INPUT_WINDOW) {
    input_paused_ = false;
    relay_.PauseReading(false);
  }
  bool wait = !input_queue_.empty();
  if (wait != input_polling_) {
    input_polling_ = wait;
    if (wait) {
      uv_poll_start(stdin_poll_.get(), UV_WRITABLE, [](uv_poll_t* handle, int, int) {
        GuardedCall("job input", [handle] { static_cast<Job*>(handle->data)->FlushInput(); });
      });
    } else {
      uv_poll_stop(stdin_poll_.get());
    }
  }
  // A pipe has no half-close: the job sees its end of input when our end closes, once
  // everything before it has been written.
  if (input_end_ && input_queue_.empty()) CloseInput();
}

void Job::CloseInput() {
  bool was_open = stdin_write_.valid();
  input_closed_ = true;
  input_polling_ = false;
  stdin_poll_.Close();  // before its fd closes
  stdin_write_.Reset();
  // The job sees its end of input only once the keeper's copy is closed too.
  if (was_open && keeper_.running()) keeper_.Drop(kKeptStdinWrite);
}

}  // namespace homeward
