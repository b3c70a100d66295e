// Job::Stream, shared by the files of Job (job.cc, job_recovery.cc).
#pragma once

#include <uv.h>

#include <cstdint>

#include "fd.h"
#include "job.h"
#include "uv_handle.h"

namespace homeward {

// One of the job's output pipes (stdout, stderr, status). What the daemon takes from the
// pipe goes first into the stream's spool, by splice (moved in the kernel, so a daemon
// killed at any moment has each byte either still in the pipe or in the spool), and is
// sent to mosrun from there; the spool keeps it until the relay has written it to
// mosrun's socket. Offsets count from the job's start on this node.
struct Job::Stream {
  Job* job;
  int fd;  // 1 stdout, 2 stderr, 3 status
  Fd pipe;
  Fd spool;
  UvHandle<uv_poll_t> poll;  // declared after the fds: closed before them
  bool polling = false;
  bool eof = false;
  uint64_t taken = 0;    // bytes taken from the pipe: the spool's size
  uint64_t sent = 0;     // bytes sent to the relay
  uint64_t trimmed = 0;  // bytes punched out of the spool, written to mosrun's socket
  char buffer[64 * 1024];
};

}  // namespace homeward
