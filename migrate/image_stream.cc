// The migration stream over a blocking descriptor: sender and receiver.
#include "image_stream.h"

#include <dirent.h>
#include <fcntl.h>
#include <poll.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>
#include <xxhash.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <memory>
#include <optional>
#include <set>

#include <capnp/message.h>
#include <capnp/serialize.h>
#include <kj/exception.h>
#include <spdlog/spdlog.h>

#include "error.h"
#include "fd.h"
#include "secure_channel.h"
#include "schema/migration.capnp.h"

namespace homeward::migrate {

namespace {

constexpr size_t kWord = sizeof(capnp::word);

struct XxhStateDeleter {
  void operator()(XXH3_state_t* state) const { XXH3_freeState(state); }
};
using XxhState = std::unique_ptr<XXH3_state_t, XxhStateDeleter>;

XxhState NewHash() {
  XxhState state(XXH3_createState());
  if (!state) Fail(ErrorKind::kOverloaded, "out of memory for a checksum state");
  XXH3_64bits_reset(state.get());
  return state;
}

// Where the stream goes: a descriptor, or a SecureStream (sealed in place).
struct Conn {
  int fd = -1;
  SecureStream* stream = nullptr;
  // Carried in authenticated records: their tags, not the stream's checksums, prove that
  // every byte arrived as sent, so neither end hashes the images (see migration.capnp).
  bool sealed() const { return stream != nullptr && !stream->plaintext(); }
};

// Writes one message with the standard segment-table framing (what FrameDecoder and
// ReadMessage read) straight from the builder's segments, without flattening a copy.
void WriteMessage(const Conn& conn, capnp::MessageBuilder& message) {
  int fd = conn.fd;
  auto segments = message.getSegmentsForOutput();
  std::vector<uint32_t> table((segments.size() + 2) & ~size_t{1}, 0);
  table[0] = static_cast<uint32_t>(segments.size() - 1);
  std::vector<iovec> iov;
  iov.reserve(segments.size() + 1);
  for (size_t i = 0; i < segments.size(); ++i) {
    table[i + 1] = static_cast<uint32_t>(segments[i].size());
  }
  iov.push_back({table.data(), table.size() * sizeof(uint32_t)});
  for (auto segment : segments) {
    auto bytes = segment.asBytes();
    iov.push_back({const_cast<kj::byte*>(bytes.begin()), bytes.size()});
  }
  if (conn.stream) {
    conn.stream->Write(iov.data(), iov.size());
    return;
  }
  SendAll(fd, iov.data(), iov.size(), "send migration stream");
}

// Reads exactly `size` bytes. Returns the count read before a clean end of stream.
size_t ReadFull(const Conn& conn, void* data, size_t size) {
  auto* bytes = static_cast<char*>(data);
  size_t done = 0;
  while (done < size) {
    size_t n = conn.stream ? conn.stream->Read(bytes + done, size - done)
                           : ReadSome(conn.fd, bytes + done, size - done, "migration stream");
    if (n == 0) break;
    done += n;
  }
  return done;
}

// Reads one frame, exactly its bytes and no more, into `buffer` (grown as needed and
// reused, so a 1 MiB chunk costs no allocation). Returns nothing on an end of stream
// before the frame; throws kDisconnected on one inside it. The reader points into
// `buffer` and is valid until the next call.
std::unique_ptr<capnp::FlatArrayMessageReader> ReadMessage(const Conn& fd, size_t max_frame_bytes,
                                                           kj::Array<capnp::word>& buffer) {
  uint32_t first[2];
  size_t got = ReadFull(fd, first, sizeof first);
  if (got == 0) return nullptr;
  if (got < sizeof first) Fail(ErrorKind::kDisconnected, "stream cut inside a frame header");
  uint32_t segments = first[0] + 1;
  if (segments > 512) Fail(ErrorKind::kInvalidInput, "malformed frame: {} segments", segments);
  size_t table_words = (segments + 2) / 2;
  if (buffer.size() < table_words) buffer = kj::heapArray<capnp::word>(table_words);
  std::memcpy(buffer.begin(), first, sizeof first);
  size_t rest = (table_words - 1) * kWord;
  if (ReadFull(fd, buffer.begin() + 1, rest) < rest) {
    Fail(ErrorKind::kDisconnected, "stream cut inside a frame header");
  }
  size_t total_words;
  try {
    total_words = capnp::expectedSizeInWordsFromPrefix(buffer.slice(0, table_words));
  } catch (const kj::Exception& e) {
    Fail(ErrorKind::kInvalidInput, "malformed frame: {}", e.getDescription().cStr());
  }
  if (total_words * kWord > max_frame_bytes) {
    Fail(ErrorKind::kInvalidInput, "frame of {} bytes exceeds the limit of {} bytes",
         total_words * kWord, max_frame_bytes);
  }
  if (buffer.size() < total_words) {
    auto bigger = kj::heapArray<capnp::word>(total_words);
    std::memcpy(bigger.begin(), buffer.begin(), table_words * kWord);
    buffer = kj::mv(bigger);
  }
  size_t body = (total_words - table_words) * kWord;
  if (ReadFull(fd, buffer.begin() + table_words, body) < body) {
    Fail(ErrorKind::kDisconnected, "stream cut inside a frame of {} bytes", total_words * kWord);
  }
  capnp::ReaderOptions options;
  // Every getter counts against the limit, and the header's file list is read twice.
  options.traversalLimitInWords = 4 * total_words + 1024;
  options.nestingLimit = 16;
  return std::make_unique<capnp::FlatArrayMessageReader>(buffer.slice(0, total_words), options);
}

// A private read mapping of a whole file (nothing for an empty one).
class Mapping {
 public:
  Mapping(int fd, uint64_t size, const std::string& path) : size_(size) {
    if (size == 0) return;
    void* at = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
    if (at == MAP_FAILED) throw SystemError(errno, fmt::format("map {}", path));
    data_ = static_cast<kj::byte*>(at);
    ::madvise(data_, size_, MADV_SEQUENTIAL);
  }
  Mapping(const Mapping&) = delete;
  Mapping& operator=(const Mapping&) = delete;
  ~Mapping() {
    if (data_) ::munmap(data_, size_);
  }
  kj::byte* data() { return data_; }

 private:
  kj::byte* data_ = nullptr;
  uint64_t size_;
};

struct LocalFile {
  std::string name;
  uint64_t size;
  uint32_t mode;
};

std::vector<LocalFile> ListImageDir(const std::string& dir) {
  std::unique_ptr<DIR, int (*)(DIR*)> handle(::opendir(dir.c_str()), ::closedir);
  if (!handle) throw SystemError(errno, fmt::format("open image directory {}", dir));
  std::vector<LocalFile> files;
  while (dirent* entry = ::readdir(handle.get())) {
    std::string name = entry->d_name;
    if (name == "." || name == "..") continue;
    struct stat st;
    HW_SYSCALL(::fstatat(::dirfd(handle.get()), name.c_str(), &st, AT_SYMLINK_NOFOLLOW),
               "stat {}/{}", dir, name);
    if (!S_ISREG(st.st_mode)) {
      Fail(ErrorKind::kInvalidInput, "image directory {} holds {}, which is not a plain file", dir,
           name);
    }
    files.push_back({name, static_cast<uint64_t>(st.st_size), st.st_mode & 07777u});
  }
  // Small files first: the header, inventory and process images reach the target before
  // the large page images, and the order is stable from run to run.
  std::sort(files.begin(), files.end(), [](const LocalFile& a, const LocalFile& b) {
    return std::tie(a.size, a.name) < std::tie(b.size, b.name);
  });
  return files;
}

void FillJob(schema::JobMetadata::Builder out, const JobMetadata& job) {
  out.setJobId(job.job_id);
  out.setHomeNode(job.home_node);
  out.setHomePid(job.home_pid);
  out.setCriuVersion(job.criu_version);
  auto pipes = out.initExternalPipes(static_cast<unsigned>(job.external_pipes.size()));
  for (size_t i = 0; i < job.external_pipes.size(); ++i) {
    pipes[i].setInode(job.external_pipes[i].inode);
    pipes[i].setRole(job.external_pipes[i].role);
  }
  auto input = out.initInput();
  input.setOffset(job.input_offset);
  input.setData(kj::arrayPtr(reinterpret_cast<const kj::byte*>(job.input_data.data()),
                             job.input_data.size()));
  input.setEnded(job.input_ended);
  out.setLockToken(job.lock_token);
  out.setLazyToken(job.lazy_token);
  out.setMemoryBytes(job.memory_bytes);
}

JobMetadata ReadJob(schema::JobMetadata::Reader in) {
  JobMetadata job;
  job.job_id = in.getJobId();
  job.home_node = in.getHomeNode();
  job.home_pid = in.getHomePid();
  job.criu_version = in.getCriuVersion();
  for (auto pipe : in.getExternalPipes()) {
    job.external_pipes.push_back({pipe.getInode(), pipe.getRole()});
  }
  if (in.hasInput()) {
    auto input = in.getInput();
    auto data = input.getData();
    job.input_offset = input.getOffset();
    job.input_data.assign(reinterpret_cast<const char*>(data.begin()), data.size());
    job.input_ended = input.getEnded();
  }
  job.lock_token = in.getLockToken();
  job.lazy_token = in.getLazyToken();
  job.memory_bytes = in.getMemoryBytes();
  return job;
}

bool IsPlainName(std::string_view name) {
  return !name.empty() && name.size() <= 255 && name != "." && name != ".." &&
         name.find('/') == std::string_view::npos && name.find('\0') == std::string_view::npos;
}

// Removes the receiver's directory unless the stream completes.
class DirGuard {
 public:
  explicit DirGuard(std::string dir) : dir_(std::move(dir)) {}
  DirGuard(const DirGuard&) = delete;
  DirGuard& operator=(const DirGuard&) = delete;
  ~DirGuard() {
    if (!dir_.empty()) {
      try {
        RemoveImageDir(dir_);
      } catch (...) {
        // Removal is best effort on the failure path; the first error is the one to report.
      }
    }
  }
  void Keep() { dir_.clear(); }

 private:
  std::string dir_;
};

// Fault point "stream-hold": the sender stops halfway and waits, at most a minute, until
// the other side hangs up (or says something), so that a test can kill the target while a
// move is certainly under way. The log line is what the test waits for.
void HoldUntilPeerHangsUp(int fd, uint64_t sent, uint64_t total) {
  spdlog::info("fault point stream-hold: holding the stream after {} of {} bytes", sent, total);
  pollfd p{fd, POLLIN | POLLRDHUP, 0};
  int ready;
  do {
    ready = ::poll(&p, 1, 60000);
  } while (ready < 0 && errno == EINTR);
  spdlog::info("fault point stream-hold: the stream goes on");
}

}  // namespace

void RemoveImageDir(const std::string& dir) {
  std::unique_ptr<DIR, int (*)(DIR*)> handle(::opendir(dir.c_str()), ::closedir);
  if (!handle) {
    if (errno == ENOENT) return;
    throw SystemError(errno, fmt::format("open {} to remove it", dir));
  }
  while (dirent* entry = ::readdir(handle.get())) {
    std::string_view name = entry->d_name;
    if (name == "." || name == "..") continue;
    HW_SYSCALL(::unlinkat(::dirfd(handle.get()), entry->d_name, 0), "remove {}/{}", dir, name);
  }
  handle.reset();
  HW_SYSCALL(::rmdir(dir.c_str()), "remove {}", dir);
}

namespace {

StreamStats Send(const Conn& fd, const std::string& dir, const JobMetadata& job,
                 const SendOptions& options) {
  auto files = ListImageDir(dir);
  uint64_t total = 0;
  for (const auto& file : files) total += file.size;
  {
    capnp::MallocMessageBuilder message;
    auto header = message.initRoot<schema::StreamMessage>().initHeader();
    header.setVersion(schema::MIGRATION_VERSION);
    FillJob(header.initJob(), job);
    auto list = header.initFiles(static_cast<unsigned>(files.size()));
    for (size_t i = 0; i < files.size(); ++i) {
      list[i].setName(files[i].name);
      list[i].setSize(files[i].size);
      list[i].setMode(files[i].mode);
    }
    header.setTotalBytes(total);
    header.setSealed(fd.sealed());
    WriteMessage(fd, message);
  }

  // Chunks reference the file's pages in place (a private read mapping) instead of
  // copying them into the message: the socket write is then the only copy on this side.
  bool cut = options.faults.Hit(Fault::kStreamMid);
  bool corrupt = options.faults.Hit(Fault::kStreamCorrupt);
  bool hold = options.faults.Hit(Fault::kStreamHold);
  StreamStats stats;
  for (size_t index = 0; index < files.size(); ++index) {
    const LocalFile& file = files[index];
    std::string path = dir + "/" + file.name;
    Fd in = Fd::Open(path, O_RDONLY);
    Mapping map(in.get(), file.size, path);
    XxhState hash = fd.sealed() ? nullptr : NewHash();
    uint64_t offset = 0;
    while (offset < file.size) {
      size_t n = static_cast<size_t>(std::min<uint64_t>(options.chunk_bytes, file.size - offset));
      auto* data = map.data() + offset;
      // Fault the chunk's pages in with one call rather than one fault per page.
      ::madvise(data - (offset % 4096), n + offset % 4096, MADV_POPULATE_READ);
      if (hash) XXH3_64bits_update(hash.get(), data, n);
      if (corrupt && fd.sealed()) {
        fd.stream->DamageNextRecord();  // the chunk's record, altered as if on the wire
        corrupt = false;
      } else if (corrupt) {
        data[0] ^= 0x5a;  // the mapping is private: the file itself is untouched
        corrupt = false;
      }
      capnp::MallocMessageBuilder message(64);
      auto chunk = message.initRoot<schema::StreamMessage>().initChunk();
      chunk.setFile(static_cast<uint32_t>(index));
      chunk.setOffset(offset);
      chunk.adoptData(message.getOrphanage().referenceExternalData(capnp::Data::Reader(data, n)));
      WriteMessage(fd, message);
      offset += n;
      stats.bytes += n;
      if (cut && stats.bytes * 2 >= total) {
        Fail(ErrorKind::kDisconnected, "fault point stream-mid hit after {} of {} bytes",
             stats.bytes, total);
      }
      if (hold && stats.bytes * 2 >= total) {
        hold = false;
        HoldUntilPeerHangsUp(fd.fd, stats.bytes, total);
      }
    }
    capnp::MallocMessageBuilder message;
    auto end = message.initRoot<schema::StreamMessage>().initFileEnd();
    end.setFile(static_cast<uint32_t>(index));
    end.setSize(offset);
    end.setXxh64(hash ? XXH3_64bits_digest(hash.get()) : 0);
    WriteMessage(fd, message);
    if (options.remove_sent_files) HW_SYSCALL(::unlink(path.c_str()), "remove sent {}", path);
    ++stats.files;
  }
  capnp::MallocMessageBuilder message;
  auto trailer = message.initRoot<schema::StreamMessage>().initTrailer();
  trailer.setFiles(static_cast<uint32_t>(files.size()));
  trailer.setTotalBytes(total);
  WriteMessage(fd, message);
  return stats;
}

ReceivedImages Receive(const Conn& fd, const std::string& dir, const ReceiveOptions& options) {
  // The header may list many files; chunks carry at most max_chunk_bytes of data.
  const size_t max_frame = std::max<size_t>(options.max_chunk_bytes + 4096, 16 << 20);
  if (!options.into_existing) {
    HW_SYSCALL(::mkdir(dir.c_str(), 0700), "create image directory {}", dir);
  }
  DirGuard guard(dir);
  Fd dir_fd = Fd::Open(dir, O_RDONLY | O_DIRECTORY);

  kj::Array<capnp::word> buffer = kj::heapArray<capnp::word>(max_frame / kWord / 4);
  auto next = [&](const char* expecting) {
    auto message = ReadMessage(fd, max_frame, buffer);
    if (!message) Fail(ErrorKind::kDisconnected, "stream ended before {}", expecting);
    return message;
  };

  ReceivedImages result;
  std::vector<LocalFile> files;
  uint64_t total = 0;
  try {
    auto first = next("its header");
    auto root = first->getRoot<schema::StreamMessage>();
    if (!root.isHeader()) Fail(ErrorKind::kInvalidInput, "stream does not begin with a header");
    auto header = root.getHeader();
    if (header.getVersion() != schema::MIGRATION_VERSION) {
      Fail(ErrorKind::kInvalidInput, "migration stream version {} (this node speaks {})",
           header.getVersion(), schema::MIGRATION_VERSION);
    }
    // A clear stream that leaves its checksums out would pass damage unnoticed.
    const bool sealed = header.getSealed();
    if (sealed && !fd.sealed()) {
      Fail(ErrorKind::kInvalidInput,
           "stream says it is sealed in authenticated records but arrived in clear: refused "
           "without its checksums");
    }
    result.job = ReadJob(header.getJob());
    if (header.getFiles().size() > options.max_files) {
      Fail(ErrorKind::kInvalidInput, "stream lists {} files (limit {})", header.getFiles().size(),
           options.max_files);
    }
    std::set<std::string, std::less<>> names;
    for (auto entry : header.getFiles()) {
      std::string name = entry.getName();
      if (!IsPlainName(name)) Fail(ErrorKind::kInvalidInput, "bad image file name '{}'", name);
      if (!names.insert(name).second) {
        Fail(ErrorKind::kInvalidInput, "image file {} listed twice", name);
      }
      files.push_back({name, entry.getSize(), entry.getMode() & 0777u});
      // Sizes near 2^64 must not wrap the sum below the limit checked below.
      if (entry.getSize() > UINT64_MAX - total) {
        Fail(ErrorKind::kInvalidInput, "the sizes of the stream's files add up to over 2^64");
      }
      total += entry.getSize();
    }
    if (total != header.getTotalBytes()) {
      Fail(ErrorKind::kInvalidInput, "header says {} bytes but its files add up to {}",
           header.getTotalBytes(), total);
    }
    if (total > options.max_total_bytes) {
      Fail(ErrorKind::kOverloaded, "the job's images ({} MiB) are more than {} ({} MiB)",
           (total + (1 << 20) - 1) >> 20, options.max_total_what, options.max_total_bytes >> 20);
    }

    bool fail_mid = options.faults.Hit(Fault::kReceiveMid);
    for (size_t index = 0; index < files.size(); ++index) {
      const LocalFile& file = files[index];
      Fd out =
          Fd::Adopt(HW_SYSCALL(::openat(dir_fd.get(), file.name.c_str(),
                                        O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, file.mode | 0600),
                               "create {}/{}", dir, file.name));
      XxhState hash = sealed ? nullptr : NewHash();
      uint64_t offset = 0;
      for (;;) {
        auto what =
            fmt::format("the rest of {} ({} of {} bytes received)", file.name, offset, file.size);
        auto message = next(what.c_str());
        auto msg = message->getRoot<schema::StreamMessage>();
        if (msg.isChunk()) {
          auto chunk = msg.getChunk();
          auto data = chunk.getData();
          if (chunk.getFile() != index || chunk.getOffset() != offset ||
              data.size() > file.size - offset || data.size() > options.max_chunk_bytes) {
            Fail(ErrorKind::kInvalidInput,
                 "unexpected chunk (file {}, offset {}, {} bytes) while receiving {} at {}",
                 chunk.getFile(), chunk.getOffset(), data.size(), file.name, offset);
          }
          if (hash) XXH3_64bits_update(hash.get(), data.begin(), data.size());
          WriteAll(out.get(), data.begin(), data.size(), file.name.c_str());
          offset += data.size();
          result.stats.bytes += data.size();
          if (fail_mid && result.stats.bytes * 2 >= total) {
            Fail(ErrorKind::kFailed, "fault point receive-mid hit after {} bytes",
                 result.stats.bytes);
          }
        } else if (msg.isFileEnd()) {
          auto end = msg.getFileEnd();
          if (end.getFile() != index || end.getSize() != file.size || offset != file.size) {
            Fail(ErrorKind::kInvalidInput, "{} ended at {} of {} bytes", file.name, offset,
                 file.size);
          }
          if (hash && end.getXxh64() != XXH3_64bits_digest(hash.get())) {
            Fail(ErrorKind::kInvalidInput, "checksum of {} does not match: damaged in transit",
                 file.name);
          }
          break;
        } else {
          Fail(ErrorKind::kInvalidInput, "unexpected message while receiving {}", file.name);
        }
      }
      ++result.stats.files;
    }
    auto last = next("its trailer");
    auto msg = last->getRoot<schema::StreamMessage>();
    if (!msg.isTrailer() || msg.getTrailer().getFiles() != files.size() ||
        msg.getTrailer().getTotalBytes() != total) {
      Fail(ErrorKind::kInvalidInput, "stream has no matching trailer after its {} files",
           files.size());
    }
  } catch (const kj::Exception& e) {
    // A reader refusing a malformed message (bad pointer, traversal limit) throws kj's type.
    Fail(ErrorKind::kInvalidInput, "malformed migration message: {}", e.getDescription().cStr());
  }
  guard.Keep();
  return result;
}

}  // namespace

StreamStats SendImages(int fd, const std::string& dir, const JobMetadata& job,
                       const SendOptions& options) {
  return Send(Conn{fd, nullptr}, dir, job, options);
}

StreamStats SendImages(SecureStream& stream, const std::string& dir, const JobMetadata& job,
                       const SendOptions& options) {
  return Send(Conn{stream.fd(), &stream}, dir, job, options);
}

ReceivedImages ReceiveImages(int fd, const std::string& dir, const ReceiveOptions& options) {
  return Receive(Conn{fd, nullptr}, dir, options);
}

ReceivedImages ReceiveImages(SecureStream& stream, const std::string& dir,
                             const ReceiveOptions& options) {
  return Receive(Conn{stream.fd(), &stream}, dir, options);
}

}  // namespace homeward::migrate
