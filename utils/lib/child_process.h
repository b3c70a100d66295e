// ChildProcess: the single owner of a child. Move-only; a child still running when its
// owner is destroyed is killed and reaped, so no process outlives the code that made it.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace homeward {

struct SpawnOptions {
  std::vector<std::string> argv;  // argv[0] is looked up on PATH.
  // Replaces the environment when set; otherwise the child inherits ours.
  std::optional<std::vector<std::string>> env;
  // Descriptors to become the child's 0, 1 and 2; -1 keeps ours.
  int stdin_fd = -1;
  int stdout_fd = -1;
  int stderr_fd = -1;
  bool new_session = false;  // setsid() in the child.
  // The child starts with every signal blocked rather than none: a PID namespace's init
  // would lose a signal that comes before it blocks them itself (the kernel drops signals
  // of default action sent to such an init), so it keeps them pending from its first
  // instruction and takes them once it is ready.
  bool signals_blocked = false;
  // Descriptors to become the child's 3, 4, ... in order.
  std::vector<int> extra_fds;
  // Namespaces for the child (CLONE_NEWPID, CLONE_NEWNS, ...), made by clone3 so that
  // the child itself is the first process of a new PID namespace.
  uint64_t clone_flags = 0;
};

// How a child ended, as a shell would report it.
struct ExitStatus {
  int code = 0;    // exit code when !signaled
  int signal = 0;  // terminating signal when signaled
  bool signaled = false;

  static ExitStatus FromWaitStatus(int wait_status);
  // 0..255 exit code, or 128+signal, the way a shell's $? shows it.
  int ShellCode() const { return signaled ? 128 + signal : code; }
  std::string Describe() const;
};

class ChildProcess {
 public:
  // Starts the child. If exec fails, the child's errno comes back through a close-on-exec
  // pipe and Spawn throws an Error naming the program.
  static ChildProcess Spawn(const SpawnOptions& options);
  // Takes ownership of `pid`, which must be our child (for example a process CRIU
  // restored, re-parented to us as a child subreaper).
  static ChildProcess Adopt(pid_t pid) { return ChildProcess(pid); }

  ChildProcess(ChildProcess&& other) noexcept;
  ChildProcess& operator=(ChildProcess&& other) noexcept;
  ChildProcess(const ChildProcess&) = delete;
  ChildProcess& operator=(const ChildProcess&) = delete;
  ~ChildProcess();

  pid_t pid() const { return pid_; }
  // Blocks until the child exits and reaps it.
  ExitStatus Wait();
  // Reaps the child if it has exited; returns nothing while it still runs.
  std::optional<ExitStatus> TryWait();
  void Signal(int signo);

 private:
  explicit ChildProcess(pid_t pid);  // owns it (OwnChild)
  void KillAndReap();
  pid_t pid_ = -1;
};

// Starts a child that runs `run(arg)` in this process's memory until it execs or exits
// (clone with CLONE_VM | CLONE_VFORK, as posix_spawn does): a fork of a daemon holding
// tens of MiB copies its page tables, and every thread that writes memory before the
// child execs takes a copy-on-write fault (for a process of 30-60 MiB with two threads
// writing, a spawn took 6-11 ms so on a virtual machine, 2-2.6 ms this way). The calling
// thread waits until the child has exec'd or exited.
// `run` starts with every signal blocked and every caught one reset to its default (no
// handler of ours may run on our memory in the child); it makes only async-signal-safe
// calls, sets the signal mask the program should have, and execs or calls _exit.
// Returns the child's pid; throws when clone fails.
pid_t SpawnSharingMemory(void (*run)(void*), void* arg);

// The children this process owns by pid: every ChildProcess, and those started
// elsewhere (criu runs by SpawnSharingMemory, the check's fork), which call OwnChild once
// started and DisownChild after reaping. A child subreaper has other children too: the
// orphans of its children's children (an iptables a killed criu ran), which nobody waits
// for; ReapOrphans ends them.
void OwnChild(pid_t pid);
void DisownChild(pid_t pid);

// While one lives, no orphan is reaped: a process CRIU restores becomes our child before we
// learn its pid (from criu's pid file), and is only then owned (ChildProcess::Adopt).
class AdoptionPending {
 public:
  AdoptionPending();
  ~AdoptionPending();
  AdoptionPending(const AdoptionPending&) = delete;
  AdoptionPending& operator=(const AdoptionPending&) = delete;
};

struct ReapedOrphan {
  pid_t pid;
  std::string command;  // its comm, as /proc showed it
  ExitStatus status;
};
// Reaps the children of ours that are zombies, owned by no one, and were so at the
// previous call as well (a child forked a moment ago may not be owned yet). Call it
// periodically; it reads /proc.
std::vector<ReapedOrphan> ReapOrphans();

// Runs a command to completion, capturing its stdout; throws when it cannot start.
struct CommandResult {
  ExitStatus status;
  std::string output;
};
CommandResult RunCommand(const std::vector<std::string>& argv);

}  // namespace homeward
