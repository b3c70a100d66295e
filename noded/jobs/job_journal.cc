// The jobs' journal (job_journal.h).
#include "job_journal.h"

#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string_view>

#include <sstream>
#include <thread>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "error.h"
#include "fd.h"

namespace homeward {

namespace {

std::string Escape(const std::string& text) {
  std::string out;
  for (unsigned char c : text) {
    if (c <= ' ' || c == '%' || c >= 0x7f) {
      out += fmt::format("%{:02x}", c);
    } else {
      out += static_cast<char>(c);
    }
  }
  return out.empty() ? "%" : out;  // a lone % is the empty string
}

std::string Unescape(const std::string& text) {
  if (text == "%") return {};
  std::string out;
  for (size_t i = 0; i < text.size(); ++i) {
    if (text[i] == '%' && i + 2 < text.size()) {
      out += static_cast<char>(std::stoi(text.substr(i + 1, 2), nullptr, 16));
      i += 2;
    } else {
      out += text[i];
    }
  }
  return out;
}

}  // namespace

std::string FormatJournalEntry(const JournalEntry& entry) {
  const JobLaunch& launch = entry.launch;
  const JobIdentity& id = launch.identity;
  std::string text = "homeward-job 1\n";
  text += fmt::format("slot {}\n", entry.slot);
  text += fmt::format("home_pid {}\nmosrun_start {}\n", id.home_pid, entry.mosrun_start);
  text += fmt::format("home_ppid {}\nuid {}\ngid {}\numask {}\n", id.home_ppid, id.uid, id.gid,
                      id.umask);
  for (gid_t group : id.groups) text += fmt::format("group {}\n", group);
  for (const auto& limit : id.limits) {
    text += fmt::format("limit {} {} {}\n", limit.resource, limit.soft, limit.hard);
  }
  for (const auto& arg : launch.argv) text += "arg " + Escape(arg) + "\n";
  text += "cwd " + Escape(launch.cwd) + "\n";
  text += "home " + Escape(launch.home) + "\n";
  if (!launch.home_cluster.empty()) text += "home_cluster " + Escape(launch.home_cluster) + "\n";
  if (launch.partners) text += "partners 1\n";
  text += fmt::format("pid_base {}\nstarted_unix_ms {}\n", launch.pid_base, launch.started_unix_ms);
  text += fmt::format("keep_home {}\nlocked {}\nmin_free_mb {}\n", launch.keep_home ? 1 : 0,
                      launch.locked ? 1 : 0, launch.min_free_mb);
  if (launch.generation) text += fmt::format("generation {}\n", launch.generation);
  if (!launch.checkpoint.dir.empty()) {
    text += "checkpoint " + Escape(launch.checkpoint.dir) +
            fmt::format(" {} {} {}\n", launch.checkpoint.every_ms, launch.checkpoint.keep,
                        launch.checkpoint.signal);
  }
  if (launch.guest) {
    text += "guest_of " + Escape(launch.home_host) + fmt::format(" {}\n", launch.home_port);
    text += "root " + Escape(launch.root) + "\n";
  }
  if (entry.away) text += "away " + Escape(entry.record) + "\n";
  if (entry.base_pending) {
    text += "base pending\n";
  } else if (entry.away || entry.base[1] || entry.base[2]) {
    text += fmt::format("base {} {}\n", entry.base[1], entry.base[2]);
  }
  if (!entry.frozen_dir.empty()) text += "frozen " + Escape(entry.frozen_dir) + "\n";
  for (const auto& pipe : entry.pipes) {
    text += fmt::format("pipe {} {}\n", pipe.inode, Escape(pipe.role));
  }
  if (entry.frozen_go_home) text += "frozen_plan home\n";
  if (entry.migrations) text += fmt::format("migrations {}\n", entry.migrations);
  if (entry.departure != move::Leave::kHere) {
    text += fmt::format("departure {}", move::LeaveName(entry.departure));
    if (!entry.departure_to.empty()) text += " " + Escape(entry.departure_to);
    text += "\n";
  }
  text += fmt::format("init {} {}\nkeeper {} {}\n", entry.init_pid, entry.init_start,
                      entry.keeper_pid, entry.keeper_start);
  return text;
}

void SaveFrozenInput(const std::string& dir, const InputCarry& input) {
  std::string path = dir + "/" + kFrozenInput;
  Fd file = Fd::Adopt(HW_SYSCALL(
      ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600), "create {}", path));
  std::string head = fmt::format("{} {}\n", input.offset, input.ended ? 1 : 0);
  WriteAll(file.get(), head.data(), head.size(), path.c_str());
  WriteAll(file.get(), input.data.data(), input.data.size(), path.c_str());
  HW_SYSCALL(::fsync(file.get()), "sync {}", path);
}

InputCarry LoadFrozenInput(const std::string& dir) {
  std::string path = dir + "/" + kFrozenInput;
  std::string text = ReadTextFile(path);
  size_t line = text.find('\n');
  InputCarry input;
  int ended = 0;
  if (line == std::string::npos ||
      std::sscanf(text.substr(0, line).c_str(), "%lu %d", &input.offset, &ended) != 2) {
    Fail(ErrorKind::kInvalidInput, "{} is not a frozen job's input", path);
  }
  input.ended = ended != 0;
  input.data = text.substr(line + 1);
  return input;
}

void MarkWaitsForRoom(const std::string& dir) {
  std::string path = dir + "/" + kWaitsForRoom;
  Fd file = Fd::Adopt(HW_SYSCALL(::open(path.c_str(), O_WRONLY | O_CREAT | O_CLOEXEC, 0600),
                                 "create {}", path));
  HW_SYSCALL(::fsync(file.get()), "sync {}", path);
}

bool WaitsForRoom(const std::string& dir) {
  return ::access((dir + "/" + kWaitsForRoom).c_str(), F_OK) == 0;
}

void SaveFrozenOutput(const std::string& dir, const FrozenOutput& output) {
  std::string path = dir + "/" + kFrozenOutput;
  Fd file = Fd::Adopt(HW_SYSCALL(
      ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600), "create {}", path));
  std::string head = fmt::format("{} {} {} {}\n", output.start[1], output.data[1].size(),
                                 output.start[2], output.data[2].size());
  WriteAll(file.get(), head.data(), head.size(), path.c_str());
  for (int fd : {1, 2}) {
    WriteAll(file.get(), output.data[fd].data(), output.data[fd].size(), path.c_str());
  }
  HW_SYSCALL(::fsync(file.get()), "sync {}", path);
}

FrozenOutput LoadFrozenOutput(const std::string& dir) {
  std::string path = dir + "/" + kFrozenOutput;
  std::string text = ReadTextFile(path);
  size_t line = text.find('\n');
  FrozenOutput output;
  uint64_t size[3] = {0, 0, 0};
  if (line == std::string::npos ||
      std::sscanf(text.substr(0, line).c_str(), "%lu %lu %lu %lu", &output.start[1], &size[1],
                  &output.start[2], &size[2]) != 4 ||
      text.size() - line - 1 != size[1] + size[2]) {
    Fail(ErrorKind::kInvalidInput, "{} is not a frozen guest's output", path);
  }
  output.data[1] = text.substr(line + 1, size[1]);
  output.data[2] = text.substr(line + 1 + size[1], size[2]);
  return output;
}

namespace {

// ParseJournalEntry's pieces: each reads the line with `key` into its part of the entry,
// and says whether the key was one of its own.
bool ParseIdentityLine(const std::string& key, std::istringstream& fields, JobIdentity& id) {
  if (key == "home_pid") {
    fields >> id.home_pid;
  } else if (key == "home_ppid") {
    fields >> id.home_ppid;
  } else if (key == "uid") {
    fields >> id.uid;
  } else if (key == "gid") {
    fields >> id.gid;
  } else if (key == "umask") {
    fields >> id.umask;
  } else if (key == "group") {
    gid_t group;
    if (fields >> group) id.groups.push_back(group);
  } else if (key == "limit") {
    JobIdentity::Limit limit{};
    if (fields >> limit.resource >> limit.soft >> limit.hard) id.limits.push_back(limit);
  } else {
    return false;
  }
  return true;
}

bool ParseFlag(std::istringstream& fields) {
  int flag = 0;
  fields >> flag;
  return flag != 0;
}

bool ParseLaunchLine(const std::string& key, std::istringstream& fields, JobLaunch& launch) {
  std::string value;
  if (key == "arg" && fields >> value) {
    launch.argv.push_back(Unescape(value));
  } else if (key == "cwd" && fields >> value) {
    launch.cwd = Unescape(value);
  } else if (key == "home" && fields >> value) {
    launch.home = Unescape(value);
  } else if (key == "home_cluster" && fields >> value) {
    launch.home_cluster = Unescape(value);
  } else if (key == "partners") {
    launch.partners = ParseFlag(fields);
  } else if (key == "pid_base") {
    fields >> launch.pid_base;
  } else if (key == "started_unix_ms") {
    fields >> launch.started_unix_ms;
  } else if (key == "keep_home") {
    launch.keep_home = ParseFlag(fields);
  } else if (key == "locked") {
    launch.locked = ParseFlag(fields);
  } else if (key == "min_free_mb") {
    fields >> launch.min_free_mb;
  } else if (key == "generation") {
    fields >> launch.generation;
  } else if (key == "checkpoint" && fields >> value) {
    launch.checkpoint.dir = Unescape(value);
    fields >> launch.checkpoint.every_ms >> launch.checkpoint.keep >> launch.checkpoint.signal;
  } else if (key == "guest_of" && fields >> value) {
    launch.guest = true;
    launch.home_host = Unescape(value);
    fields >> launch.home_port;
  } else if (key == "root" && fields >> value) {
    launch.root = Unescape(value);
  } else {
    return false;
  }
  return true;
}

// The lines about where the job stands (away, frozen, departing) and its processes.
void ParseStateLine(const std::string& key, std::istringstream& fields, JournalEntry& entry) {
  std::string value;
  if (key == "slot") {
    fields >> entry.slot;
  } else if (key == "mosrun_start") {
    fields >> entry.mosrun_start;
  } else if (key == "away" && fields >> value) {
    entry.away = true;
    entry.record = Unescape(value);
  } else if (key == "frozen" && fields >> value) {
    entry.frozen_dir = Unescape(value);
  } else if (key == "pipe") {
    migrate::PipeRole pipe;
    if (fields >> pipe.inode >> value) {
      pipe.role = Unescape(value);
      entry.pipes.push_back(pipe);
    }
  } else if (key == "frozen_plan" && fields >> value) {
    entry.frozen_go_home = value == "home";
  } else if (key == "migrations") {
    fields >> entry.migrations;
  } else if (key == "moving") {  // the form before departures were named
    entry.departure = move::Leave::kDumping;
  } else if (key == "departure" && fields >> value) {
    entry.departure = move::LeaveNamed(value);
    if (fields >> value) entry.departure_to = Unescape(value);
  } else if (key == "base" && fields >> value) {
    entry.base_pending = value == "pending";
    if (!entry.base_pending) {
      std::istringstream(value) >> entry.base[1];
      fields >> entry.base[2];
    }
  } else if (key == "init") {
    fields >> entry.init_pid >> entry.init_start;
  } else if (key == "keeper") {
    fields >> entry.keeper_pid >> entry.keeper_start;
  }
}

}  // namespace

JournalEntry ParseJournalEntry(const std::string& text) {
  JournalEntry entry;
  JobLaunch& launch = entry.launch;
  std::istringstream lines(text);
  std::string line;
  bool header = false;
  bool complete = false;
  while (std::getline(lines, line)) {
    std::istringstream fields(line);
    std::string key;
    fields >> key;
    if (key == "homeward-job") {
      header = true;
    } else if (!ParseIdentityLine(key, fields, launch.identity) &&
               !ParseLaunchLine(key, fields, launch)) {
      ParseStateLine(key, fields, entry);
      if (key == "keeper") complete = true;  // the last line: a torn file never gets here
    }
  }
  if (!header || !complete || launch.identity.home_pid <= 0 || (entry.slot < 0 && !launch.guest) ||
      launch.argv.empty() || launch.home.find('/') != std::string::npos) {
    Fail(ErrorKind::kInvalidInput, "not a complete job journal entry");
  }
  return entry;
}

void JobJournal::Write(const JournalEntry& entry) const {
  ::mkdir(dir_.c_str(), 0700);
  std::string path = fmt::format("{}/{}", dir_, entry.Name());
  std::string temp = path + ".new";
  std::string text = FormatJournalEntry(entry);
  {
    Fd fd = Fd::Open(temp, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    WriteAll(fd.get(), text.data(), text.size(), "job journal");
    HW_SYSCALL(::fsync(fd.get()), "fsync {}", temp);
  }
  HW_SYSCALL(::rename(temp.c_str(), path.c_str()), "rename {}", temp);
  // The rename itself is made durable with the directory.
  Fd dir = Fd::Open(dir_, O_RDONLY | O_DIRECTORY);
  ::fsync(dir.get());
}

std::string JournalEntry::Name() const {
  if (launch.guest) return fmt::format("guest-{}-{}", launch.home, launch.identity.home_pid);
  return std::to_string(launch.identity.home_pid);
}

void JobJournal::Remove(const std::string& name) const {
  std::string path = fmt::format("{}/{}", dir_, name);
  ::unlink(path.c_str());
}

void WriteRestoreIntent(const std::string& dir, uint64_t stdout_inode) {
  ::mkdir(dir.c_str(), 0700);
  std::string path = fmt::format("{}/restoring-{}", dir, stdout_inode);
  Fd fd = Fd::Open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
  HW_SYSCALL(::fsync(fd.get()), "fsync {}", path);
  Fd parent = Fd::Open(dir, O_RDONLY | O_DIRECTORY);
  ::fsync(parent.get());
}

void RemoveRestoreIntent(const std::string& dir, uint64_t stdout_inode) {
  ::unlink(fmt::format("{}/restoring-{}", dir, stdout_inode).c_str());
}

void CleanRestoreIntents(const std::string& dir, const std::vector<uint64_t>& taken) {
  DIR* handle = ::opendir(dir.c_str());
  if (!handle) return;
  std::vector<uint64_t> intents;
  while (dirent* entry = ::readdir(handle)) {
    std::string name = entry->d_name;
    if (name.rfind("restoring-", 0) == 0)
      intents.push_back(std::strtoull(name.c_str() + 10, nullptr, 10));
  }
  ::closedir(handle);
  for (uint64_t inode : intents) {
    if (std::find(taken.begin(), taken.end(), inode) != taken.end()) {
      RemoveRestoreIntent(dir, inode);
      continue;
    }
    std::string target = fmt::format("pipe:[{}]", inode);
    // A criu still restoring holds the pipe too, and makes processes that hold it while
    // it runs: scan again until a scan finds none (criu, killed, makes no more).
    for (int pass = 0; pass < 100; ++pass) {
      bool found = false;
      DIR* procs = ::opendir("/proc");
      if (!procs) break;
      while (dirent* proc = ::readdir(procs)) {
        pid_t pid = static_cast<pid_t>(std::strtol(proc->d_name, nullptr, 10));
        if (pid <= 0) continue;
        std::string fd_dir = fmt::format("/proc/{}/fd", pid);
        DIR* fds = ::opendir(fd_dir.c_str());
        if (!fds) continue;
        bool holds = false;
        char link[64];
        while (dirent* fd = ::readdir(fds)) {
          ssize_t n = ::readlinkat(::dirfd(fds), fd->d_name, link, sizeof link);
          if (n > 0 && std::string_view(link, static_cast<size_t>(n)) == target) holds = true;
        }
        ::closedir(fds);
        if (holds) {
          spdlog::warn("process {} holds the pipe of a restore cut by a restart; killing it", pid);
          ::kill(pid, SIGKILL);
          found = true;
        }
      }
      ::closedir(procs);
      if (!found) break;
      // Killed processes let go of their descriptors only once they are gone.
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    // Removed only once nothing holds the pipe: a daemon killed meanwhile looks again.
    RemoveRestoreIntent(dir, inode);
  }
}

std::vector<JournalEntry> JobJournal::ReadAll() const {
  std::vector<JournalEntry> entries;
  DIR* dir = ::opendir(dir_.c_str());
  if (!dir) return entries;
  std::vector<std::string> names;
  while (dirent* entry = ::readdir(dir)) {
    if (entry->d_name[0] != '.') names.emplace_back(entry->d_name);
  }
  ::closedir(dir);
  for (const auto& name : names) {
    std::string path = dir_ + "/" + name;
    if (name.rfind("restoring-", 0) == 0) continue;                   // CleanRestoreIntents
    if (name.size() > 4 && name.substr(name.size() - 4) == ".new") {  // never renamed
      ::unlink(path.c_str());
      continue;
    }
    try {
      entries.push_back(ParseJournalEntry(ReadTextFile(path)));
    } catch (const Error& e) {
      spdlog::warn("job journal {}: {}; removed", path, e.what());
      ::unlink(path.c_str());
    }
  }
  return entries;
}

}  // namespace homeward
