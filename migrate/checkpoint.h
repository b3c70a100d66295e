// Checkpoint and restore of a whole job with CRIU 4.x. A job is a process tree in its own
// PID, mount, UTS and IPC namespaces (a guest in a network namespace of its own too) whose
// pid 1 is a session leader (the job's init), with pipes to the daemon as its only
// descriptors from outside. Every call blocks until criu is done; the daemon runs them on
// a thread of its own.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "criu_acting.h"
#include "fault.h"

namespace homeward::migrate {

// What becomes of the job once its images are written.
enum class AfterDump {
  kStop,  // left stopped: a move continues it (ContinueJob) or kills it (KillJob) later
  kRun,   // left running: a checkpoint of a job that goes on
  kKill,  // killed by criu: the caller reaps the init
};

// Where criu dump sends the job's memory when it does not write it into the image
// directory: a page server (criu page-server) reached through a descriptor, one session
// per criu run (Dump runs criu again after some failures). See page_relay.h.
class PageSessions {
 public:
  virtual ~PageSessions() = default;
  // Before a criu run: the descriptor criu talks to the page server on (--ps-socket).
  virtual int Begin() = 0;
  // After that run, criu gone: waits until the page server has ended the session too.
  // Throws Error when the session failed on the way (the connection, the page server).
  virtual void End() = 0;
  // Ends the session's connection now, so that criu, on its end, stops (a lazy dump that
  // is given up).
  virtual void Abort() = 0;
};

// The criu this node runs: the one installed beside the commands
// (<prefix>/libexec/homeward/criu, `meson install`), else the one `scripts/setup` built
// for the build tree (meson option criu).
const std::string& DefaultCriuPath();

struct DumpOptions {
  std::string criu_path = DefaultCriuPath();
  AfterDump after = AfterDump::kStop;
  // Inodes of the job's pipes whose other end is outside the job (stdio, status). They
  // are dumped as external and re-plumbed at restore with RestoreOptions::pipes.
  std::vector<uint64_t> external_pipes;
  // criu's log and other scratch go here; empty: a fresh "<image_dir>.work", removed after.
  std::string work_dir;
  // "dump-before-criu": fail before running criu; "dump-criu": make criu itself fail
  // (CRIU_FAULT) so the resume path runs.
  FaultPoints faults;
  // The job's user, whose rights homefs gives criu's file calls in the job's mount
  // namespace (see criu_acting.h); none: root's own.
  std::optional<ActingUser> as_user;
  // Not null: the job's memory goes to this page server while criu dumps, and only the
  // rest of the images into the image directory.
  PageSessions* pages = nullptr;
  // With `pages`: a lazy dump. Dump returns once the images but the memory are written,
  // the job stopped; criu then serves its memory to a criu lazy-pages on the target
  // (RestoreOptions::lazy_pages_socket) through `pages` until that has every page
  // (DumpResult::lazy).
  bool lazy = false;
};

// The second half of a lazy dump: criu holds the job stopped and serves its memory.
class LazyDump {
 public:
  virtual ~LazyDump() = default;
  // Blocks until the target has every page; the job is then as DumpOptions::after says.
  // Throws Error when the target left before it had them all: criu has then let the job
  // run on here. Dropped unfinished, its connection is ended so that criu fails the same
  // way (a criu that does not stop within 10 s is killed, and the job continued).
  virtual void Finish() = 0;
};

struct DumpResult {
  std::chrono::microseconds criu_time{0};     // wall time of the criu run
  std::chrono::microseconds frozen_time{0};   // time criu held the job frozen (its stats)
  std::chrono::microseconds memdump_time{0};  // part of that spent draining memory
  uint64_t image_bytes = 0;                   // size of the image directory
  uint64_t pages_written = 0;
  std::shared_ptr<LazyDump> lazy;             // a lazy dump's second half
};

// Dumps the job whose init has `init_pid` (a pid of our namespace) into `image_dir`,
// which must exist and be empty. criu runs inside the job's own mount and network
// namespaces, so the job's mounts are not dumped and its files are recorded by path, and
// its network namespace is not dumped either (its sockets are). On failure criu
// leaves the job running as it was, and the Error names the step and quotes criu's log.
DumpResult Dump(pid_t init_pid, const std::string& image_dir, const DumpOptions& options = {});

struct InheritedPipe {
  uint64_t inode = 0;  // the pipe's inode at dump time
  int fd = -1;         // the caller's end that replaces it (kept open by the caller)
};

// A program criu runs at one step (its action: "setup-namespaces", "post-restore", ...).
struct ActionScript {
  std::string path;
  std::string action;
};

struct RestoreOptions {
  std::string criu_path = DefaultCriuPath();
  std::vector<InheritedPipe> pipes;
  // A mount namespace (an open /proc/<pid>/ns/mnt) the job is restored into, so that its
  // files reopen by path there; -1 restores into the caller's own.
  int mount_namespace_fd = -1;
  // A network namespace (an open /proc/<pid>/ns/net) criu runs in, and so the job lands
  // in: Dump runs criu in the job's own, so the images hold the job's sockets but never
  // the namespace itself. -1 restores into the caller's own.
  int net_namespace_fd = -1;
  std::string work_dir;  // as in DumpOptions
  std::optional<ActingUser> as_user;  // as in DumpOptions, for mount_namespace_fd
  // Programs criu runs (by path, without arguments or a shell) at a step of the restore
  // (--action-script), with CRTOOLS_SCRIPT_ACTION naming the step and CRTOOLS_INIT_PID
  // the restored init; one that fails fails the restore. criu runs them at only the steps
  // they name (CRIU patch 0011): each run is a fork and an exec while the job is frozen.
  std::vector<ActionScript> action_scripts;
  // "restore-before-criu", "restore-criu" (criu fails), "restore-after-criu" (the
  // restored job is killed again and the restore reported as failed).
  FaultPoints faults;
  // Not -1: a lazy restore. The job's memory is not in the images: a criu lazy-pages
  // pulls it over this connection to the source's lazy dump (its page-server protocol)
  // as the restored job touches it, and the rest in the background (RestoreResult::lazy).
  int lazy_pages_socket = -1;
  // Each 2 MiB-aligned range of the job's anonymous memory that the images fill whole is
  // read into a huge page (CRIU patch 0012): on a virtual machine whose hypervisor keeps
  // shadow page tables a first touch of each 4 KiB page costs more than its copy, and
  // these are the frozen job's pages. The job holds no more memory than before; a job
  // that turned huge pages off (prctl, MADV_NOHUGEPAGE) keeps small ones, and so does
  // every job where the administrator did (transparent_hugepage/enabled: never).
  // false: criu's own restore.
  bool huge_pages = true;
};

// The second half of a lazy restore: criu lazy-pages fills the job's memory.
class LazyPages {
 public:
  virtual ~LazyPages() = default;
  // Blocks until the job has every page. Throws Error when the source could not give
  // them all: criu lazy-pages has then killed the job rather than let it read memory it
  // never had. Dropped unfinished, lazy-pages is killed: kill the job first.
  virtual void Finish() = 0;
};

struct RestoreResult {
  // The job's init in our PID namespace: our child, owned (OwnChild) until ChildProcess::Adopt
  // or KillJob takes it.
  pid_t init_pid = -1;
  std::chrono::microseconds criu_time{0};
  std::unique_ptr<LazyPages> lazy;  // a lazy restore's second half
};

// Restores the job from `image_dir`. The calling process must be a child subreaper
// (PR_SET_CHILD_SUBREAPER) so that the restored init becomes its child. On failure no
// restored process is left alive, and the Error names the step and quotes criu's log.
RestoreResult Restore(const std::string& image_dir, const RestoreOptions& options = {});

// Serves one session of criu dump's page-server protocol on the connected socket
// `socket` (criu page-server --ps-socket): writes the job's memory images into
// `image_dir`, which exists, until the dump says it is done or the socket ends; blocks.
// Throws Error quoting criu's log when the session did not end with every page written.
void ServePages(int socket, const std::string& image_dir,
                const std::string& criu_path = DefaultCriuPath());

// Every pid of the tree under `init_pid` (itself first), read from /proc.
std::vector<pid_t> JobPids(pid_t init_pid);
// Sends SIGCONT to every process of a job that Dump left stopped.
void ContinueJob(pid_t init_pid);
// Kills a job (SIGKILL to its init ends its PID namespace) and reaps the init, which
// must be our child. Safe on a job that already exited.
void KillJob(pid_t init_pid);

// The inode of the pipe `fd` refers to, as criu names it in pipe:[inode].
uint64_t PipeInode(int fd);

struct CriuFeature {
  std::string name;
  bool supported = false;
};

struct CriuCheckResult {
  bool usable = false;  // `criu check` passed
  std::string version;  // "4.1.1"
  std::string message;  // criu's own words when it is not usable
  std::vector<CriuFeature> features;
};

// Probes criu once (at start-up): whether it runs on this kernel, and which optional
// features (dirty-memory tracking for pre-copy, userfaultfd for post-copy, ...) work:
// each of `features` (criu check --feature NAME, about 0.1 s each).
inline const std::vector<std::string> kCriuFeatures = {
    "mem_dirty_track", "uffd-noncoop", "seccomp_filters", "timens", "pidfd_store"};
CriuCheckResult CriuCheck(const std::string& criu_path = DefaultCriuPath(),
                          const std::vector<std::string>& features = kCriuFeatures);

// Whether this process keeps criu's kernel probes for its next criu runs: a run has filled
// the cache it passes them (CRIU patch 0010), and it is sealed.
bool CriuProbesKept();

}  // namespace homeward::migrate
