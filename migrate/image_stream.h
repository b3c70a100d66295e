// The migration stream: sends a CRIU image directory over a connected descriptor as
// framed Cap'n Proto messages (utils/schema/migration.capnp) and receives it into a fresh
// directory, verifying every file's size, and its checksum on a stream in clear (a stream
// in a peer connection's authenticated records leaves the checksums to the records' tags).
// Both sides block; the daemon runs them on a thread of their own. A receiver that fails
// leaves no directory behind.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <string>
#include <vector>

#include "fault.h"

namespace homeward {
class SecureStream;
}

namespace homeward::migrate {

struct PipeRole {
  uint64_t inode = 0;  // pipe:[inode] as the images name it
  std::string role;    // "stdin", "stdout", "stderr", "status"
};

// What the target needs to know about the job besides its images.
struct JobMetadata {
  uint64_t job_id = 0;
  std::string home_node;
  int32_t home_pid = 0;
  std::vector<PipeRole> external_pipes;
  std::string criu_version;
  // The job's stdin the source reclaimed after the dump (see CarriedInput).
  uint64_t input_offset = 0;
  std::string input_data;
  bool input_ended = false;
  // Not 0: the job's homefs locks wait at its home under this token (see migration.capnp).
  uint64_t lock_token = 0;
  // Not 0: a lazy move, whose pages come on the connection opened with this token.
  uint64_t lazy_token = 0;
  uint64_t memory_bytes = 0;  // a lazy move: the job's resident memory at the freeze
};

struct StreamStats {
  uint64_t bytes = 0;  // image bytes (not counting framing)
  size_t files = 0;
};

struct SendOptions {
  size_t chunk_bytes = 1 << 20;
  // Unlink each file once it is sent, so that on one machine (tmpfs) the dump and the
  // received copy never both hold a whole image. A move does not need the images again:
  // if it fails later, the source job is continued, not restored.
  bool remove_sent_files = false;
  // "stream-mid": stop after about half the bytes, as if the connection were cut.
  // "stream-corrupt": flip a byte of the first chunk after checksumming it (in clear), or
  // of the record that carries it once sealed (encrypted).
  // "stream-hold": after about half the bytes, log that the stream is held and wait until
  // the receiver hangs up (at most a minute), then go on.
  FaultPoints faults;
};

// Sends every regular file of `dir` (no subdirectories) on `fd`. Throws Error naming the
// file or the write that failed; the receiver then sees a cut stream.
StreamStats SendImages(int fd, const std::string& dir, const JobMetadata& job,
                       const SendOptions& options = {});
// The same over an encrypted peer connection, sealed in place (no pump thread), without
// the checksums (the header says the stream is sealed).
StreamStats SendImages(SecureStream& stream, const std::string& dir, const JobMetadata& job,
                       const SendOptions& options = {});

struct ReceiveOptions {
  uint64_t max_total_bytes = uint64_t{64} << 30;              // refuse larger streams up front ...
  std::string max_total_what = "the most this node accepts";  // ... and say what it is
  size_t max_files = 100000;
  size_t max_chunk_bytes = 8 << 20;
  FaultPoints faults;  // "receive-mid": fail after about half the bytes
  // `dir` exists already, holding the pages a page server wrote (page_relay.h): the
  // stream's files join them (none may have the name of one there).
  bool into_existing = false;
};

struct ReceivedImages {
  JobMetadata job;
  StreamStats stats;
};

// Receives one stream from `fd` into `dir`, which must not exist yet (it is created with
// mode 0700) unless options.into_existing. Reads exactly the stream's bytes, so the connection may carry more after
// it. On any failure removes `dir` and everything written into it, and throws
// Error(kDisconnected) for a stream cut short or Error(kInvalidInput) for a malformed
// or damaged one, naming what was missing or wrong. A stream that says it is sealed is
// taken only from an encrypted SecureStream; on a descriptor or a SecureStream in clear
// it is refused (it lacks its checksums).
ReceivedImages ReceiveImages(int fd, const std::string& dir, const ReceiveOptions& options = {});
ReceivedImages ReceiveImages(SecureStream& stream, const std::string& dir,
                             const ReceiveOptions& options = {});

// Removes a flat image directory (its files, then itself); a missing one is fine.
void RemoveImageDir(const std::string& dir);

}  // namespace homeward::migrate
