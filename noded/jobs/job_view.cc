// The job's mount view and network: see job_view.h.
#include "job_view.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <net/if.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <string>

namespace homeward::job_init {
namespace {

bool IsRealDirectory(const std::string& path) {
  struct stat st;
  return lstat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

constexpr char kStaging[] = "/tmp";  // where the new root is mounted before pivot_root
constexpr const char* kOsPaths[] = {"/usr", "/lib", "/lib32", "/lib64", "/libx32", "/bin", "/sbin"};

void Mount(const char* source, const std::string& target, const char* type, unsigned long flags,
           const char* data = nullptr) {
  if (mount(source, target.c_str(), type, flags, data) != 0) {
    Die(std::string("mount ") + (type ? type : source) + " on " + target);
  }
}

void SetAttributes(const std::string& path, uint64_t set) {
  mount_attr attr{};
  attr.attr_set = set;
  if (mount_setattr(AT_FDCWD, path.c_str(), AT_RECURSIVE, &attr, sizeof attr) != 0) {
    Die("make " + path + " read-only");
  }
}

// `source` (the node's own) bound read-only at `target`; its own symlink where the node
// has a symlink (merged /usr: /bin -> usr/bin), when `copy_links`.
void BindReadOnly(const char* source, const std::string& target, bool copy_links) {
  struct stat st;
  if (lstat(source, &st) != 0) return;
  if (S_ISLNK(st.st_mode)) {
    if (!copy_links) return;
    char link[PATH_MAX];
    ssize_t n = readlink(source, link, sizeof link - 1);
    if (n <= 0) Die(std::string("readlink ") + source);
    link[n] = '\0';
    if (symlink(link, target.c_str()) != 0 && errno != EEXIST) Die("symlink " + target);
    return;
  }
  if (!S_ISDIR(st.st_mode)) return;
  if (mkdir(target.c_str(), 0755) != 0 && errno != EEXIST) Die("mkdir " + target);
  if (!IsRealDirectory(target)) return;
  Mount(source, target, nullptr, MS_BIND | MS_REC);
  SetAttributes(target, MOUNT_ATTR_RDONLY | MOUNT_ATTR_NODEV);
}

// Drops whatever is mounted at `path` in the view (the node's /proc, /dev or /sys, copied
// with the node's tree): the view gets its own, and nothing of the node's stays beneath.
void DetachAll(const std::string& path) {
  while (umount2(path.c_str(), MNT_DETACH) == 0) {
  }
}

// A /dev with only what programs expect of it; nothing of the node's devices.
void MountMinimalDev(const std::string& dev) {
  DetachAll(dev);
  Mount("tmpfs", dev, "tmpfs", MS_NOSUID | MS_NOEXEC, "mode=0755,size=64k");
  struct Node {
    const char* name;
    unsigned major, minor;
  };
  for (Node node : {Node{"null", 1, 3}, Node{"zero", 1, 5}, Node{"full", 1, 7},
                    Node{"random", 1, 8}, Node{"urandom", 1, 9}, Node{"tty", 5, 0}}) {
    std::string path = dev + "/" + node.name;
    if (mknod(path.c_str(), S_IFCHR | 0666, makedev(node.major, node.minor)) != 0 ||
        chmod(path.c_str(), 0666) != 0) {
      Die("create " + path);
    }
  }
  for (auto [name, target] : {std::pair{"fd", "/proc/self/fd"},
                              {"stdin", "/proc/self/fd/0"},
                              {"stdout", "/proc/self/fd/1"},
                              {"stderr", "/proc/self/fd/2"},
                              {"ptmx", "pts/ptmx"}}) {
    if (symlink(target, (dev + "/" + name).c_str()) != 0) Die("create " + dev + "/" + name);
  }
  for (const char* dir : {"/pts", "/shm"}) {
    if (mkdir((dev + dir).c_str(), 0755) != 0) Die("create " + dev + dir);
  }
  Mount("devpts", dev + "/pts", "devpts", MS_NOSUID | MS_NOEXEC,
        "newinstance,ptmxmode=0666,mode=0620");
  Mount("tmpfs", dev + "/shm", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777");
  Mount(nullptr, dev, nullptr, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NOEXEC, "mode=0755");
}

// Hides a file (under the view's /dev/null) or a directory (under an empty read-only
// tmpfs) of the node's that the view must show but a job has no business reading.
void Hide(const std::string& path) {
  struct stat st;
  if (stat(path.c_str(), &st) != 0) return;
  if (S_ISDIR(st.st_mode)) {
    Mount("tmpfs", path, "tmpfs", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, "mode=0555");
  } else {
    Mount((std::string(kJobView) + "/dev/null").c_str(), path, nullptr, MS_BIND);
  }
}

}  // namespace

// The job's own /proc (of the calling process's pid namespace) in its view, with what a
// job must not change or read of its node (sysctls, sysrq, the kernel's memory, timers)
// read-only or hidden, as container runtimes do.
void MountJobProc() {
  std::string proc = std::string(kJobView) + "/proc";
  if (!IsRealDirectory(proc)) return;
  Mount("proc", proc, "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC);
  for (const char* name : {"sys", "sysrq-trigger", "irq", "bus", "fs"}) {
    std::string path = proc + "/" + name;
    if (access(path.c_str(), F_OK) != 0) continue;
    Mount(path.c_str(), path, nullptr, MS_BIND);
    SetAttributes(path,
                  MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV | MOUNT_ATTR_NOEXEC);
  }
  for (const char* name :
       {"kcore", "keys", "timer_list", "timer_stats", "sched_debug", "kmsg", "latency_stats",
        "kpagecount", "kpageflags", "kpagecgroup", "acpi", "asound", "scsi"}) {
    Hide(proc + "/" + name);
  }
}

// Builds the job's mount namespace as described at kJobView and moves into its root.
// `root` is the home's tree ("/" at home); `own_proc`: mount the job's /proc now (the
// init, already in the job's pid namespace); a namespace prepared for a restore gets it
// once CRIU has made that pid namespace (MountProcOf, as CRIU's action script).
void BuildJobRoot(const std::string& root, bool own_proc) {
  // The view is a copy of the tree taken before the new root is mounted anywhere, so the
  // new root (and the node's /proc in it) never appears inside the view.
  int tree = open_tree(AT_FDCWD, root.c_str(), OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC | AT_RECURSIVE);
  if (tree < 0) Die("copy the tree " + root);
  // This very program, taken now by its path: the staging tmpfs may hide that path (a
  // build under /tmp), and the executable's own mount may belong to the namespace we came
  // from (--prepare-root unshares after exec), which a bind by descriptor could not use.
  char self[PATH_MAX];
  ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
  if (n <= 0) Die("find the init's own executable");
  self[n] = '\0';
  int self_tree = open_tree(AT_FDCWD, self, OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC);
  if (self_tree < 0) Die(std::string("copy the init's own executable ") + self);
  Mount("tmpfs", kStaging, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755,size=1m");
  std::string top = kStaging;
  std::string view = top + kJobView;
  if (mkdir(view.c_str(), 0755) != 0) Die("mkdir " + view);
  if (move_mount(tree, "", AT_FDCWD, view.c_str(), MOVE_MOUNT_F_EMPTY_PATH) != 0) {
    Die("mount the job's tree at " + view);
  }
  close(tree);
  // The cluster is homogeneous in its OS, as MOSIX assumes: a guest runs the node's own
  // programs and libraries, which it must not change.
  if (root != "/") {
    for (const char* path : kOsPaths) {
      if (IsRealDirectory(path) && IsRealDirectory(view + path)) {
        BindReadOnly(path, view + path, false);
      }
    }
  }
  if (IsRealDirectory(view + "/dev")) MountMinimalDev(view + "/dev");
  if (IsRealDirectory(view + "/sys")) {
    // sysfs alone: not the filesystems mounted in it (cgroups, debugfs, tracefs, bpf),
    // which a root job, owner of their root-only files, could read. A sysfs of its own
    // rather than a bind of the node's: its class/net shows the devices of the network
    // namespace we are in, for a guest its loopback alone (not the node's devices, their
    // addresses and counters).
    DetachAll(view + "/sys");
    Mount("sysfs", view + "/sys", "sysfs", MS_NOSUID | MS_NODEV | MS_NOEXEC);
    SetAttributes(view + "/sys",
                  MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV | MOUNT_ATTR_NOEXEC);
    for (const char* name : {"/firmware", "/devices/virtual/powercap"}) Hide(view + "/sys" + name);
  }
  if (IsRealDirectory(view + "/proc")) DetachAll(view + "/proc");

  // The root for the init and CRIU: the node's /proc, /dev and /sys, its OS paths, a
  // scratch /tmp, and this very program (its path outside may not exist in the view).
  for (const char* path : kOsPaths) BindReadOnly(path, top + path, true);
  for (const char* path : {"/proc", "/dev", "/sys"}) {
    if (mkdir((top + path).c_str(), 0755) != 0) Die("mkdir " + top + path);
    Mount(path, top + path, nullptr, MS_BIND | MS_REC);
  }
  if (mkdir((top + "/tmp").c_str(), 01777) != 0) Die("mkdir " + top + "/tmp");
  std::string init_copy = top + kInitCopy;
  int placeholder = open(init_copy.c_str(), O_CREAT | O_WRONLY | O_CLOEXEC, 0700);
  if (placeholder < 0) Die("create " + init_copy);
  close(placeholder);
  if (move_mount(self_tree, "", AT_FDCWD, init_copy.c_str(), MOVE_MOUNT_F_EMPTY_PATH) != 0) {
    Die("mount the init's own executable at " + init_copy);
  }
  close(self_tree);
  SetAttributes(init_copy, MOUNT_ATTR_RDONLY | MOUNT_ATTR_NODEV);

  if (chdir(top.c_str()) != 0) Die("enter " + top);
  // pivot_root(".", ".") stacks the old root on the new one; detaching it leaves only
  // the new root, so nothing of this node's own tree stays reachable but what it holds.
  if (syscall(SYS_pivot_root, ".", ".") != 0) Die("pivot_root to the job's root");
  if (umount2(".", MNT_DETACH) != 0) Die("detach the node's own root");
  if (chdir("/") != 0) Die("chdir /");
  if (own_proc) MountJobProc();
}

// A new network namespace has only a loopback device, and it is down. Up, it carries
// 127.0.0.0/8 and ::1 of the job's own: a job talks to itself over its loopback as
// anywhere, and nothing of the node's (its loopback services, its abstract unix sockets,
// which belong to a network namespace) is there to reach.
void BringUpLoopback() {
  int sock = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (sock < 0) Die("open a socket to bring the job's loopback up");
  ifreq request{};
  strncpy(request.ifr_name, "lo", IFNAMSIZ - 1);
  if (ioctl(sock, SIOCGIFFLAGS, &request) != 0) Die("read the flags of the job's loopback");
  request.ifr_flags = static_cast<short>(request.ifr_flags | IFF_UP | IFF_RUNNING);
  if (ioctl(sock, SIOCSIFFLAGS, &request) != 0) Die("bring the job's loopback up");
  close(sock);
}

}  // namespace homeward::job_init
