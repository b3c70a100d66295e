// A job's input since its newest checkpoint, at its home (input_log.h).
#include "input_log.h"

#include <dirent.h>
#include <fcntl.h>
#include <sodium.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>
#include <memory>

#include <fmt/format.h>

#include "error.h"

namespace homeward {

namespace {

constexpr char kMagic[8] = {'h', 'w', 'i', 'n', 'l', 'o', 'g', '1'};
constexpr off_t kHeader = 32;
constexpr const char* kDirNote = ".dir";

struct Header {
  char magic[8];
  uint64_t start;
  uint64_t base;
  int64_t run;
};
static_assert(sizeof(Header) == kHeader);

}  // namespace

std::string InputLog::PathFor(const std::string& state_dir, uid_t uid, const std::string& dir) {
  unsigned char hash[16];
  crypto_generichash(hash, sizeof hash, reinterpret_cast<const unsigned char*>(dir.data()),
                     dir.size(), nullptr, 0);
  std::string hex;
  for (unsigned char byte : hash) hex += fmt::format("{:02x}", byte);
  return fmt::format("{}/input-logs/{}-{}", state_dir, uid, hex);
}

InputLog InputLog::Open(const std::string& path, int64_t run, bool fresh, uint64_t limit) {
  std::string parent = path.substr(0, path.rfind('/'));
  ::mkdir(parent.c_str(), 0700);
  InputLog log;
  log.path_ = path;
  log.limit_ = limit;
  log.run_ = run;
  log.file_ = Fd::Adopt(HW_SYSCALL(
      ::open(path.c_str(), O_RDWR | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0600), "open {}", path));
  Header header{};
  struct stat st {};
  HW_SYSCALL(::fstat(log.file_.get(), &st), "stat {}", path);
  bool good = !fresh && st.st_size >= kHeader &&
              ::pread(log.file_.get(), &header, sizeof header, 0) == kHeader &&
              memcmp(header.magic, kMagic, sizeof kMagic) == 0 && header.run == run &&
              header.base <= header.start &&
              header.start <= header.base + static_cast<uint64_t>(st.st_size - kHeader);
  if (good) {
    log.start_ = header.start;
    log.base_ = header.base;
    log.end_ = header.base + static_cast<uint64_t>(st.st_size - kHeader);
    return log;
  }
  HW_SYSCALL(::ftruncate(log.file_.get(), 0), "empty {}", path);
  log.WriteHeader();
  return log;
}

void InputLog::WriteHeader() {
  Header header{};
  memcpy(header.magic, kMagic, sizeof kMagic);
  header.start = start_;
  header.base = base_;
  header.run = run_;
  HW_SYSCALL(::pwrite(file_.get(), &header, sizeof header, 0) == kHeader ? 0 : -1, "write {}",
             path_);
  dirty_ = true;
}

void InputLog::Sync() {
  if (!dirty_) return;
  HW_SYSCALL(::fdatasync(file_.get()), "sync {}", path_);
  dirty_ = false;
}

void InputLog::NoteDir(const std::string& path, const std::string& dir) {
  std::string note = path + kDirNote;
  Fd file = Fd::Adopt(HW_SYSCALL(
      ::open(note.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0600),
      "open {}", note));
  WriteAll(file.get(), dir.data(), dir.size(), "input log note");
}

void InputLog::Remove(const std::string& path) {
  ::unlink(path.c_str());
  ::unlink((path + kDirNote).c_str());
}

std::vector<std::string> InputLog::SweepOrphans(const std::string& state_dir,
                                                const std::set<std::string>& in_use) {
  std::string logs = state_dir + "/input-logs";
  std::vector<std::string> removed;
  std::unique_ptr<DIR, int (*)(DIR*)> dir(::opendir(logs.c_str()), ::closedir);
  if (!dir) return removed;
  std::vector<std::string> names;
  while (dirent* entry = ::readdir(dir.get())) {
    std::string name = entry->d_name;
    if (name == "." || name == "..") continue;
    names.push_back(name);
  }
  std::string suffix = kDirNote;
  for (const std::string& name : names) {
    bool note = name.size() > suffix.size() &&
                name.compare(name.size() - suffix.size(), suffix.size(), suffix) == 0;
    std::string path = logs + "/" + (note ? name.substr(0, name.size() - suffix.size()) : name);
    if (in_use.count(path)) continue;
    if (note) {
      if (::access(path.c_str(), F_OK) != 0) ::unlink((logs + "/" + name).c_str());
      continue;  // a note without its log; a log is judged below
    }
    // A lost job's log stays while its checkpoint directory does: `mosrun -R` needs it.
    std::string noted;
    try {
      noted = ReadTextFile(path + kDirNote);
    } catch (const Error&) {
    }
    struct stat st {};
    if (!noted.empty() && noted[0] == '/' && ::lstat(noted.c_str(), &st) == 0) continue;
    Remove(path);
    removed.push_back(path);
  }
  return removed;
}

void InputLog::Append(uint64_t offset, const void* data, size_t size) {
  if (size == 0 || offset + size <= end_) return;
  if (offset > end_) {
    // Bytes the log never had: nothing before `offset` can be replayed.
    HW_SYSCALL(::ftruncate(file_.get(), 0), "empty {}", path_);
    start_ = base_ = end_ = offset;
    WriteHeader();
  }
  size_t skip = static_cast<size_t>(end_ - offset);
  const char* bytes = static_cast<const char*>(data) + skip;
  size_t left = size - skip;
  while (left > 0) {
    ssize_t n = ::pwrite(file_.get(), bytes, left, kHeader + static_cast<off_t>(end_ - base_));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) throw SystemError(errno, fmt::format("write {}", path_));
    bytes += n;
    left -= static_cast<size_t>(n);
    end_ += static_cast<uint64_t>(n);
  }
  dirty_ = true;
  if (end_ - start_ > limit_) Trim(end_ - limit_);
}

void InputLog::Trim(uint64_t offset) {
  if (offset <= start_) return;
  if (offset > end_) offset = end_;
  ::fallocate(file_.get(), FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, kHeader,
              static_cast<off_t>(offset - base_));
  start_ = offset;
  WriteHeader();
}

std::optional<std::string> InputLog::Replay(const std::string& path, int64_t run,
                                            uint64_t from, std::string* why) {
  int fd = ::open(path.c_str(), O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
  if (fd < 0) {
    *why = fmt::format("no log of its input ({})", strerror(errno));
    return std::nullopt;
  }
  Fd file = Fd::Adopt(fd);
  Header header{};
  struct stat st {};
  if (::fstat(fd, &st) != 0 || st.st_size < kHeader ||
      ::pread(fd, &header, sizeof header, 0) != kHeader ||
      memcmp(header.magic, kMagic, sizeof kMagic) != 0 || header.base > header.start) {
    *why = "its input log is damaged";
    return std::nullopt;
  }
  if (header.run != run) {
    *why = "its input log is of another run of the job (started with the same directory)";
    return std::nullopt;
  }
  uint64_t end = header.base + static_cast<uint64_t>(st.st_size - kHeader);
  if (from < header.start || from > end) {
    *why = fmt::format(
        "its input log holds bytes {} to {} of its input, not from byte {} on (more than {} "
        "MiB came after the checkpoint, or a newer one is current)",
        header.start, end, from, kInputLogLimit >> 20);
    return std::nullopt;
  }
  std::string bytes(static_cast<size_t>(end - from), '\0');
  size_t have = 0;
  while (have < bytes.size()) {
    ssize_t n = ::pread(fd, bytes.data() + have, bytes.size() - have,
                        kHeader + static_cast<off_t>(from - header.base + have));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      *why = fmt::format("cannot read its input log: {}", n < 0 ? strerror(errno) : "too short");
      return std::nullopt;
    }
    have += static_cast<size_t>(n);
  }
  return bytes;
}

}  // namespace homeward
