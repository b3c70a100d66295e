// A job's checkpoint directory: numbered, sealed checkpoints written and read with the
// user's rights.
#include "checkpoint_store.h"

#include <dirent.h>
#include <fcntl.h>
#include <sodium.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <memory>

#include <fmt/ranges.h>
#include <spdlog/spdlog.h>
#include <nlohmann/json.hpp>

#include "checkpoint_dir.h"
#include "error.h"

namespace homeward {

namespace {

using json = nlohmann::json;

constexpr const char* kManifest = "manifest";
constexpr const char* kMagic = "homeward-checkpoint 1";
constexpr size_t kMaxManifest = 16 << 20;

// "ckpt-N" (complete) or ".ckpt-N.partial" (being written, or left by a crash): N, or 0.
uint64_t NumberOf(const std::string& name, bool* partial) {
  std::string digits;
  *partial = false;
  if (name.rfind("ckpt-", 0) == 0) {
    digits = name.substr(5);
  } else if (name.rfind(".ckpt-", 0) == 0 && name.size() > 14 &&
             name.compare(name.size() - 8, 8, ".partial") == 0) {
    digits = name.substr(6, name.size() - 14);
    *partial = true;
  }
  if (digits.empty() || digits.size() > 18 ||
      !std::all_of(digits.begin(), digits.end(), [](char c) { return c >= '0' && c <= '9'; })) {
    return 0;
  }
  return std::stoull(digits);
}

std::string Hex(const unsigned char* data, size_t size) {
  std::string out(size * 2 + 1, '\0');
  sodium_bin2hex(out.data(), out.size(), data, size);
  out.pop_back();
  return out;
}

std::string Seal(const std::vector<uint8_t>& key, const std::string& body) {
  unsigned char mac[32];
  crypto_generichash(mac, sizeof mac, reinterpret_cast<const unsigned char*>(body.data()),
                     body.size(), key.data(), key.size());
  return Hex(mac, sizeof mac);
}

// Hashes what `fd` holds from its start; with `copy_to`, writes it there too.
std::string HashFile(int fd, const std::string& name, int copy_to = -1, uint64_t* size = nullptr) {
  crypto_generichash_state state;
  crypto_generichash_init(&state, nullptr, 0, 32);
  std::vector<char> buffer(1 << 20);
  uint64_t total = 0;
  off_t at = 0;
  for (;;) {
    ssize_t n = ::pread(fd, buffer.data(), buffer.size(), at);
    if (n < 0 && errno == EINTR) continue;
    HW_SYSCALL(n < 0 ? -1 : 0, "read {}", name);
    if (n == 0) break;
    at += n;
    total += static_cast<uint64_t>(n);
    crypto_generichash_update(&state, reinterpret_cast<unsigned char*>(buffer.data()),
                              static_cast<size_t>(n));
    for (ssize_t done = 0; copy_to >= 0 && done < n;) {
      ssize_t w = ::write(copy_to, buffer.data() + done, static_cast<size_t>(n - done));
      if (w < 0 && errno == EINTR) continue;
      HW_SYSCALL(w < 0 ? -1 : 0, "copy {}", name);
      done += w;
    }
  }
  unsigned char hash[32];
  crypto_generichash_final(&state, hash, sizeof hash);
  if (size) *size = total;
  return Hex(hash, sizeof hash);
}

void WriteAllTo(int fd, const std::string& data, const std::string& what) {
  for (size_t done = 0; done < data.size();) {
    ssize_t n = ::write(fd, data.data() + done, data.size() - done);
    if (n < 0 && errno == EINTR) continue;
    HW_SYSCALL(n < 0 ? -1 : 0, "write {}", what);
    done += static_cast<size_t>(n);
  }
}

json LaunchToJson(const JobLaunch& launch) {
  const JobIdentity& id = launch.identity;
  json limits = json::array();
  for (const auto& limit : id.limits) {
    limits.push_back(
        {limit.resource, static_cast<uint64_t>(limit.soft), static_cast<uint64_t>(limit.hard)});
  }
  return {{"argv", launch.argv},
          {"env", launch.env},
          {"cwd", launch.cwd},
          {"home", launch.home},
          {"uid", id.uid},
          {"gid", id.gid},
          {"groups", id.groups},
          {"umask", id.umask},
          {"limits", limits},
          {"home_pid", id.home_pid},
          {"home_ppid", id.home_ppid},
          {"pid_base", launch.pid_base},
          {"keep_home", launch.keep_home},
          {"locked", launch.locked},
          {"min_free_mb", launch.min_free_mb},
          {"started_unix_ms", launch.started_unix_ms},
          {"checkpoint_every_ms", launch.checkpoint.every_ms},
          {"checkpoint_keep", launch.checkpoint.keep},
          {"checkpoint_signal", launch.checkpoint.signal},
          {"generation", launch.generation}};
}

JobLaunch LaunchFromJson(const json& j) {
  JobLaunch launch;
  launch.argv = j.at("argv").get<std::vector<std::string>>();
  launch.env = j.at("env").get<std::vector<std::string>>();
  launch.cwd = j.at("cwd").get<std::string>();
  launch.home = j.at("home").get<std::string>();
  JobIdentity& id = launch.identity;
  id.uid = j.at("uid").get<uid_t>();
  id.gid = j.at("gid").get<gid_t>();
  id.groups = j.at("groups").get<std::vector<gid_t>>();
  id.umask = j.at("umask").get<mode_t>();
  for (const auto& limit : j.at("limits")) {
    id.limits.push_back({limit.at(0).get<int>(), static_cast<rlim_t>(limit.at(1).get<uint64_t>()),
                         static_cast<rlim_t>(limit.at(2).get<uint64_t>())});
  }
  id.home_pid = j.at("home_pid").get<pid_t>();
  id.home_ppid = j.at("home_ppid").get<pid_t>();
  launch.pid_base = j.at("pid_base").get<int64_t>();
  launch.keep_home = j.at("keep_home").get<bool>();
  launch.locked = j.at("locked").get<bool>();
  launch.min_free_mb = j.at("min_free_mb").get<uint32_t>();
  launch.started_unix_ms = j.at("started_unix_ms").get<int64_t>();
  launch.checkpoint.every_ms = j.at("checkpoint_every_ms").get<int64_t>();
  launch.checkpoint.keep = j.at("checkpoint_keep").get<uint32_t>();
  launch.checkpoint.signal = j.at("checkpoint_signal").get<int>();
  launch.generation = j.value("generation", 0u);
  return launch;
}

// Opens the user's checkpoint directory as the user, making it when it is missing.
Fd OpenUserDir(const std::string& dir, const FsIdentity& who, bool create) {
  if (dir.empty() || dir[0] != '/') {
    Fail(ErrorKind::kInvalidInput, "a checkpoint directory must be an absolute path, not '{}'",
         dir);
  }
  ScopedFsCredentials as_user(who);
  if (create && ::mkdir(dir.c_str(), 0700) != 0 && errno != EEXIST) {
    throw SystemError(errno, fmt::format("create {}", dir));
  }
  return Fd::Adopt(
      HW_SYSCALL(::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC), "open {}", dir));
}

// Removes checkpoint directory `name` in `parent` and what is in it, as the user.
void RemoveAsUser(int parent, const std::string& name, const FsIdentity& who) {
  ScopedFsCredentials as_user(who);
  Fd dir =
      Fd::Adopt(::openat(parent, name.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
  if (!dir.valid()) return;
  for (const auto& entry : DirectoryEntries(dir.get())) ::unlinkat(dir.get(), entry.c_str(), 0);
  ::unlinkat(parent, name.c_str(), AT_REMOVEDIR);
}

// A partial checkpoint a crash left: root's (the user could not have written in it), so
// root empties it by descriptor; then it is the user's to remove.
void RemoveLeftover(int parent, const std::string& name, const FsIdentity& who) {
  Fd dir =
      Fd::Adopt(::openat(parent, name.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
  struct stat st;
  if (!dir.valid() || ::fstat(dir.get(), &st) != 0) return;
  if (st.st_uid == 0) {
    for (const auto& entry : DirectoryEntries(dir.get())) ::unlinkat(dir.get(), entry.c_str(), 0);
    (void)!::fchown(dir.get(), who.uid, who.gid);
  }
  dir.Reset();
  RemoveAsUser(parent, name, who);  // one a guest node wrote as the user
}

// The manifest's text: `manifest` and the images' sizes and hashes, sealed with `key`.
std::string SealedManifest(const std::vector<uint8_t>& key, const CheckpointManifest& manifest,
                           const json& files) {
  json pipes = json::array();
  for (const auto& pipe : manifest.pipes) pipes.push_back({pipe.inode, pipe.role});
  json body = {{"number", manifest.number},
               {"taken_unix_ms", manifest.taken_unix_ms},
               {"launch", LaunchToJson(manifest.launch)},
               {"pipes", pipes},
               {"files", files}};
  if (manifest.input_offset) body["input_offset"] = *manifest.input_offset;
  std::string text = body.dump();
  return fmt::format("{} {}\n{}", kMagic, Seal(key, text), text);
}

// The number past every checkpoint in `parent`; partial ones a crash left are removed.
uint64_t NextNumber(int parent, const FsIdentity& who) {
  uint64_t last = 0;
  for (const auto& name : DirectoryEntries(parent)) {
    bool partial = false;
    uint64_t number = NumberOf(name, &partial);
    last = std::max(last, number);
    if (partial) RemoveLeftover(parent, name, who);
  }
  return last + 1;
}

// All but the newest `keep` (0: all) go, as the user.
void Prune(int parent, uint32_t keep, const FsIdentity& who) {
  if (keep == 0) return;
  std::vector<uint64_t> numbers;
  for (const auto& name : DirectoryEntries(parent)) {
    bool partial = false;
    uint64_t number = NumberOf(name, &partial);
    if (number && !partial) numbers.push_back(number);
  }
  std::sort(numbers.rbegin(), numbers.rend());
  for (size_t i = keep; i < numbers.size(); ++i) {
    RemoveAsUser(parent, fmt::format("ckpt-{}", numbers[i]), who);
  }
}

}  // namespace

std::vector<uint8_t> CheckpointKey(const std::vector<uint8_t>& cluster_key) {
  static const char kContext[] = "homeward checkpoint seal v1";
  std::vector<uint8_t> key(32);
  crypto_generichash(key.data(), key.size(), reinterpret_cast<const unsigned char*>(kContext),
                     sizeof kContext - 1, cluster_key.empty() ? nullptr : cluster_key.data(),
                     cluster_key.size());
  return key;
}

WrittenCheckpoint WriteCheckpoint(
    const std::string& dir, const FsIdentity& who, uint32_t keep, const std::vector<uint8_t>& key,
    CheckpointManifest manifest, const CheckpointDump& dump) {
  Fd parent = OpenUserDir(dir, who, true);
  WrittenCheckpoint written;
  written.number = NextNumber(parent.get(), who);
  std::string final_name = fmt::format("ckpt-{}", written.number);
  written.path = dir + "/" + final_name;
  CheckpointDir images = CheckpointDir::Create(fmt::format("{}/.{}.partial", dir, final_name), who);
  written.dump = dump(images.fd_path(), manifest);
  // The manifest: the job's launch and pipes, and each image's size and hash, sealed.
  manifest.number = written.number;
  manifest.taken_unix_ms = WallClockMs();
  json files = json::array();
  for (const auto& name : DirectoryEntries(images.fd())) {
    Fd file = Fd::Adopt(HW_SYSCALL(
        ::openat(images.fd(), name.c_str(), O_RDONLY | O_NOFOLLOW | O_CLOEXEC), "open {}", name));
    uint64_t size = 0;
    std::string hash = HashFile(file.get(), name, -1, &size);
    HW_SYSCALL(::fsync(file.get()), "write {}/{}", written.path, name);
    files.push_back({name, size, hash});
  }
  std::string sealed = SealedManifest(key, manifest, files);
  {
    Fd file =
        Fd::Adopt(HW_SYSCALL(::openat(images.fd(), kManifest,
                                      O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600),
                             "write {}/{}", written.path, kManifest));
    WriteAllTo(file.get(), sealed, written.path + "/" + kManifest);
    HW_SYSCALL(::fsync(file.get()), "write {}/{}", written.path, kManifest);
  }
  HW_SYSCALL(::fsync(images.fd()), "write {}", written.path);
  images.HandOver(final_name);
  ::fsync(parent.get());
  Prune(parent.get(), keep, who);
  return written;
}

WrittenCheckpoint PublishCheckpoint(const std::string& dir, const FsIdentity& who, uint32_t keep,
                                    const std::vector<uint8_t>& key, CheckpointManifest manifest,
                                    const std::string& image_dir) {
  Fd parent = OpenUserDir(dir, who, true);
  Fd images = Fd::Adopt(HW_SYSCALL(::open(image_dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC),
                                   "open {}", image_dir));
  WrittenCheckpoint written;
  written.number = NextNumber(parent.get(), who);
  std::string final_name = fmt::format("ckpt-{}", written.number);
  std::string partial = fmt::format(".{}.partial", final_name);
  written.path = dir + "/" + final_name;
  try {
    Fd target_dir;
    {
      ScopedFsCredentials as_user(who);
      HW_SYSCALL(::mkdirat(parent.get(), partial.c_str(), 0700), "create {}/{}", dir, partial);
      target_dir = Fd::Adopt(HW_SYSCALL(
          ::openat(parent.get(), partial.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC),
          "open {}/{}", dir, partial));
    }
    manifest.number = written.number;
    manifest.taken_unix_ms = WallClockMs();
    json files = json::array();
    auto create = [&](const std::string& name) {
      ScopedFsCredentials as_user(who);
      return Fd::Adopt(
          HW_SYSCALL(::openat(target_dir.get(), name.c_str(),
                              O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600),
                     "write {}/{}", written.path, name));
    };
    for (const auto& name : DirectoryEntries(images.get())) {
      Fd source = Fd::Adopt(
          HW_SYSCALL(::openat(images.get(), name.c_str(), O_RDONLY | O_NOFOLLOW | O_CLOEXEC),
                     "open {}", name));
      Fd target = create(name);
      uint64_t size = 0;
      std::string hash = HashFile(source.get(), name, target.get(), &size);
      HW_SYSCALL(::fsync(target.get()), "write {}/{}", written.path, name);
      files.push_back({name, size, hash});
    }
    {
      Fd file = create(kManifest);
      WriteAllTo(file.get(), SealedManifest(key, manifest, files), written.path + "/" + kManifest);
      HW_SYSCALL(::fsync(file.get()), "write {}/{}", written.path, kManifest);
    }
    ScopedFsCredentials as_user(who);
    HW_SYSCALL(::renameat2(parent.get(), partial.c_str(), parent.get(), final_name.c_str(),
                           RENAME_NOREPLACE),
               "name the checkpoint {}", written.path);
  } catch (...) {
    RemoveAsUser(parent.get(), partial, who);
    throw;
  }
  Prune(parent.get(), keep, who);
  return written;
}

namespace {

// Reads, checks and copies checkpoint `name` of `parent`; throws Error saying what is wrong.
CheckpointManifest CopyOne(int parent, const std::string& name, const FsIdentity& who,
                           bool any_user, const std::vector<uint8_t>& key, int copy_dir) {
  Fd dir;
  Fd manifest_file;
  {
    ScopedFsCredentials as_user(who);
    dir = Fd::Adopt(HW_SYSCALL(
        ::openat(parent, name.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC), "open"));
    manifest_file = Fd::Adopt(HW_SYSCALL(
        ::openat(dir.get(), kManifest, O_RDONLY | O_NOFOLLOW | O_CLOEXEC), "open its manifest"));
  }
  std::string text;
  {
    char buffer[65536];
    for (;;) {
      ssize_t n = ::read(manifest_file.get(), buffer, sizeof buffer);
      if (n < 0 && errno == EINTR) continue;
      HW_SYSCALL(n < 0 ? -1 : 0, "read its manifest");
      if (n == 0) break;
      text.append(buffer, static_cast<size_t>(n));
      if (text.size() > kMaxManifest) Fail(ErrorKind::kInvalidInput, "its manifest is too large");
    }
  }
  size_t newline = text.find('\n');
  std::string header = text.substr(0, newline);
  std::string magic = std::string(kMagic) + " ";
  if (newline == std::string::npos || header.rfind(magic, 0) != 0) {
    Fail(ErrorKind::kInvalidInput, "its manifest is not one this daemon writes");
  }
  std::string body = text.substr(newline + 1);
  std::string mac = header.substr(magic.size());
  std::string expected = Seal(key, body);
  if (mac.size() != expected.size() ||
      sodium_memcmp(mac.data(), expected.data(), expected.size()) != 0) {
    Fail(ErrorKind::kPermissionDenied,
         "its seal does not match: it was changed, or written by another cluster");
  }
  json j = json::parse(body);
  CheckpointManifest manifest;
  manifest.number = j.at("number").get<uint64_t>();
  manifest.taken_unix_ms = j.at("taken_unix_ms").get<int64_t>();
  manifest.launch = LaunchFromJson(j.at("launch"));
  if (j.contains("input_offset")) manifest.input_offset = j.at("input_offset").get<uint64_t>();
  for (const auto& pipe : j.at("pipes")) {
    manifest.pipes.push_back({pipe.at(0).get<uint64_t>(), pipe.at(1).get<std::string>()});
  }
  if (!any_user && manifest.launch.identity.uid != who.uid) {
    Fail(ErrorKind::kPermissionDenied, "it is a job of uid {}, not of uid {}",
         manifest.launch.identity.uid, who.uid);
  }
  for (const auto& file : j.at("files")) {
    std::string file_name = file.at(0).get<std::string>();
    uint64_t size = file.at(1).get<uint64_t>();
    std::string hash = file.at(2).get<std::string>();
    if (file_name.empty() || file_name == "." || file_name == ".." ||
        file_name.find('/') != std::string::npos || file_name == kManifest) {
      Fail(ErrorKind::kInvalidInput, "its manifest names '{}'", file_name);
    }
    Fd source;
    {
      ScopedFsCredentials as_user(who);
      source = Fd::Adopt(
          HW_SYSCALL(::openat(dir.get(), file_name.c_str(), O_RDONLY | O_NOFOLLOW | O_CLOEXEC),
                     "open {}", file_name));
    }
    struct stat st;
    HW_SYSCALL(::fstat(source.get(), &st), "stat {}", file_name);
    if (!S_ISREG(st.st_mode)) Fail(ErrorKind::kInvalidInput, "{} is not a file", file_name);
    Fd target =
        Fd::Adopt(HW_SYSCALL(::openat(copy_dir, file_name.c_str(),
                                      O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600),
                             "copy {}", file_name));
    uint64_t copied = 0;
    std::string got = HashFile(source.get(), file_name, target.get(), &copied);
    if (copied != size || got != hash) {
      Fail(ErrorKind::kInvalidInput, "{} is not as it was written ({} bytes, {} when written)",
           file_name, copied, size);
    }
  }
  return manifest;
}

}  // namespace

CheckpointManifest CopyNewestCheckpoint(const std::string& dir, const FsIdentity& who,
                                        bool any_user, const std::vector<uint8_t>& key,
                                        const std::string& copy_dir) {
  Fd parent = OpenUserDir(dir, who, false);
  Fd copy = Fd::Adopt(HW_SYSCALL(::open(copy_dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC),
                                 "open {}", copy_dir));
  std::vector<uint64_t> numbers;
  for (const auto& name : DirectoryEntries(parent.get())) {
    bool partial = false;
    uint64_t number = NumberOf(name, &partial);
    if (number && !partial) numbers.push_back(number);
  }
  std::sort(numbers.rbegin(), numbers.rend());
  std::vector<std::string> refused;
  for (uint64_t number : numbers) {
    std::string name = fmt::format("ckpt-{}", number);
    try {
      return CopyOne(parent.get(), name, who, any_user, key, copy.get());
    } catch (const std::exception& e) {
      spdlog::warn("checkpoint {}/{} passed over: {}", dir, name, e.what());
      refused.push_back(fmt::format("{}: {}", name, e.what()));
      for (const auto& entry : DirectoryEntries(copy.get()))
        ::unlinkat(copy.get(), entry.c_str(), 0);
    }
  }
  if (refused.empty()) Fail(ErrorKind::kNotFound, "{} holds no complete checkpoint", dir);
  Fail(ErrorKind::kNotFound, "{} holds no checkpoint to restart from ({})", dir,
       fmt::join(refused, "; "));
}

}  // namespace homeward
