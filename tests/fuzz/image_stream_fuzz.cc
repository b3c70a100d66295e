// Fuzzes the migration stream's receiver (migrate/image_stream: ReceiveImages), which a
// node runs on what a peer sends it when a job moves in, into a scratch directory. The
// input is the stream. The receiver must either keep a directory holding exactly the
// files the stream promised, within its limits, or fail with an Error and leave nothing.
#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdint>
#include <string>

#include "error.h"
#include "fuzz_util.h"
#include "image_stream.h"

using namespace homeward;

namespace {

constexpr uint64_t kMaxTotal = 1 << 20;
constexpr size_t kMaxFiles = 64;

bool Exists(const std::string& path) {
  struct stat st;
  return ::lstat(path.c_str(), &st) == 0;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const std::string base = fuzz::ScratchDir("homeward-fuzz-images");
  const std::string dir = base + "/images";
  Fd input = fuzz::FileWithBytes(data, size);
  migrate::ReceiveOptions options;
  options.max_total_bytes = kMaxTotal;
  options.max_files = kMaxFiles;
  options.max_chunk_bytes = 64 << 10;
  migrate::ReceivedImages received;
  try {
    received = migrate::ReceiveImages(input.get(), dir, options);
  } catch (const Error& e) {
    if (e.kind() != ErrorKind::kInvalidInput && e.kind() != ErrorKind::kDisconnected &&
        e.kind() != ErrorKind::kOverloaded) {
      fuzz::Broken("the receiver failed with an unexpected kind");
    }
    if (Exists(dir)) fuzz::Broken("a failed receive left its directory behind");
    return 0;
  }
  // Success: what is on disk is what the stream counted, within the limits.
  uint64_t bytes = 0;
  size_t files = 0;
  DIR* handle = ::opendir(dir.c_str());
  if (!handle) fuzz::Broken("a received directory is missing");
  while (dirent* entry = ::readdir(handle)) {
    std::string name = entry->d_name;
    if (name == "." || name == "..") continue;
    struct stat st;
    if (::fstatat(::dirfd(handle), entry->d_name, &st, AT_SYMLINK_NOFOLLOW) != 0 ||
        !S_ISREG(st.st_mode) || (st.st_mode & (S_ISUID | S_ISGID)) != 0) {
      fuzz::Broken("a received file is not a plain file");
    }
    bytes += static_cast<uint64_t>(st.st_size);
    ++files;
  }
  ::closedir(handle);
  if (bytes != received.stats.bytes || files != received.stats.files) {
    fuzz::Broken("the received files differ from the stream's count");
  }
  if (bytes > kMaxTotal || files > kMaxFiles) fuzz::Broken("a receive exceeded its limits");
  migrate::RemoveImageDir(dir);
  return 0;
}
