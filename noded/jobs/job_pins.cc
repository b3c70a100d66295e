// What keeps a job on this node: the reasons a move is refused before it starts (mosps
// shows them as "pinned").
#include <dirent.h>
#include <sys/statfs.h>

#include <set>
#include <sstream>
#include <string_view>

#include <fmt/format.h>

#include "fd.h"
#include "job.h"

namespace homeward {

std::set<pid_t> Job::LockHolders() {
  std::set<pid_t> holders;
  std::istringstream locks(ReadTextFile("/proc/locks"));
  std::string line;
  while (std::getline(locks, line)) {
    if (line.find("->") != std::string::npos) continue;  // a waiter, not a holder
    std::istringstream fields(line);
    std::string id, kind, mode, access;
    pid_t pid = 0;
    // A flock or an OFD lock belongs to an open file description, which the home's file
    // service keeps for a job leaving home (the shim takes a job's POSIX locks as OFD
    // locks): only a POSIX lock, owned by the process itself, cannot go along.
    if (fields >> id >> kind >> mode >> access >> pid && kind == "POSIX") holders.insert(pid);
  }
  return holders;
}

std::string Job::PinnedReason(const std::vector<pid_t>& pids,
                              const std::set<pid_t>& lock_holders) const {
  if (launch_.keep_home) return "kept at home (mosrun -h)";
  if (!launch_.guest) {
    // A POSIX lock a job at home holds through the kernel itself (not as the shim takes
    // them, as an OFD lock of the process's own description: a program without the shim's
    // hooks, or more files locked than it keeps) is owned by the job's process: no other
    // owner can take it over without a moment when it is free, since the kernel has no call
    // that hands a lock from one owner to another; and criu would take it again on the
    // target, through homefs, while the frozen copy here still holds it, and wait for ever
    // (see ARCHITECTURE.md, "Locks of a job that leaves home").
    for (pid_t pid : pids) {
      if (lock_holders.count(pid)) {
        return "holds a file lock at home (the home kernel's own: it cannot change hands "
               "without a moment when it is free, so it is not carried)";
      }
    }
  }
  std::set<std::string> sockets;
  // System V shared memory, semaphores and message queues are not a reason: they live in
  // the job's own IPC namespace, which CRIU dumps and restores with their contents. A
  // POSIX message queue lives there too, but CRIU carries no queue (its dump would fail).
  constexpr long kMqueueMagic = 0x19800202;  // ipc/mqueue.c's; not in the uapi headers
  bool message_queue = false;
  for (pid_t pid : pids) {
    std::string fd_dir = fmt::format("/proc/{}/fd", pid);
    if (DIR* fds = ::opendir(fd_dir.c_str())) {
      char link[64];
      while (dirent* entry = ::readdir(fds)) {
        ssize_t n = ::readlinkat(::dirfd(fds), entry->d_name, link, sizeof link);
        std::string_view target(link, n > 0 ? static_cast<size_t>(n) : 0);
        if (target.rfind("socket:[", 0) == 0) {
          sockets.emplace(target.substr(8, target.size() - 9));
        } else if (target.size() > 1 && target[0] == '/' &&
                   target.find('/', 1) == std::string_view::npos) {
          // A queue's descriptor reads "/NAME", as a file in / would: its file system says.
          struct statfs fs;
          std::string path = fd_dir + "/" + entry->d_name;
          if (::statfs(path.c_str(), &fs) == 0 && fs.f_type == kMqueueMagic) message_queue = true;
        }
      }
      ::closedir(fds);
    }
  }
  if (message_queue) return "uses a POSIX message queue (CRIU does not carry them)";
  if (sockets.empty()) return {};
  // The tables of the daemon's network namespace, which a job at its home shares: a guest's
  // sockets are in a namespace of its own, only the guest reaches them, and they move with
  // it. A listening TCP socket is an address of this node that clients use: it cannot move.
  // Any other TCP or UDP socket talks to the network, which away from home is only the
  // job's own loopback (see "A guest's network" in docs/ARCHITECTURE.md).
  std::string in_use;
  for (const char* table : {"/proc/net/tcp", "/proc/net/tcp6", "/proc/net/udp", "/proc/net/udp6"}) {
    bool tcp = std::string_view(table).find("tcp") != std::string_view::npos;
    std::istringstream lines(ReadTextFile(table));
    std::string line;
    std::getline(lines, line);  // the header
    while (std::getline(lines, line)) {
      std::istringstream fields(line);
      std::string slot, local, remote, state, queues, timer, retransmits, uid, timeout, inode;
      fields >> slot >> local >> remote >> state >> queues >> timer >> retransmits >> uid >>
          timeout >> inode;
      if (!sockets.count(inode)) continue;
      if (tcp && state == "0A") {
        unsigned port = static_cast<unsigned>(
            std::strtoul(local.substr(local.rfind(':') + 1).c_str(), nullptr, 16));
        return fmt::format("holds a listening socket (TCP port {})", port);
      }
      if (in_use.empty()) {
        const char* kind = tcp ? "TCP" : "UDP";
        in_use = fmt::format("uses the network (a {} socket: away from home it has none)", kind);
      }
    }
  }
  return in_use;
}

}  // namespace homeward
