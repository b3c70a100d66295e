// mosmount: mounts a node's files with homefs.
//   mosmount [-f] [-d] [-o hard|soft,timeout=S,grace=S,attr_timeout=S,entry_timeout=S,
//                      write_behind|sync_writes,io_uring|no_io_uring]
//            NODE|ADDRESS[:PORT] DIR
//   mosmount --tree [--self NAME --self-tree PATH] [--daemon-fd FD] [-o ...,idle=S] DIR
// The first mounts one node's files (by hand, for debugging); the second every node's,
// each in DIR/NODE, as the daemon mounts /mosix/home (home_tree.h). Unmount with
// `fusermount3 -u DIR`.
#include <fuse_lowlevel.h>
#include <signal.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>

#include <CLI/CLI.hpp>

#include <sys/mount.h>
#include <sys/socket.h>

#include <functional>
#include <thread>

#include "client.h"
#include "config.h"
#include "criu_acting.h"
#include "control_client.h"
#include "error.h"
#include "fault.h"
#include "framing.h"
#include "fs.h"
#include "fuse_uring.h"
#include "home_tree.h"
#include "homeward_config.h"
#include "log.h"
#include "mount.h"
#include "mounted.h"
#include "peer_auth.h"
#include "session_io.h"

namespace homeward {
namespace {

struct MountOptions {
  double timeout_s = 10;
  bool hard = true;
  double grace_s = 300;
  double idle_s = 60;              // --tree: a home's connection closes after this long unused
  bool io_uring = true;            // FUSE requests over io_uring where the kernel allows it
  bool no_io_uring_lanes = false;  // the fault point no-io-uring-lane
  FsOptions fs;
};

double Seconds(const std::string& key, const std::string& value) {
  try {
    size_t used = 0;
    double s = std::stod(value, &used);
    if (used == value.size() && s >= 0 && s < 86400) return s;
  } catch (const std::exception&) {
  }
  Fail(ErrorKind::kInvalidInput, "-o {}={}: want a number of seconds", key, value);
}

MountOptions ParseOptions(const std::vector<std::string>& lists) {
  MountOptions options;
  for (const auto& list : lists) {
    std::stringstream stream(list);
    std::string item;
    while (std::getline(stream, item, ',')) {
      if (item.empty()) continue;
      auto eq = item.find('=');
      std::string key = item.substr(0, eq),
                  value = eq == std::string::npos ? "" : item.substr(eq + 1);
      if (key == "timeout") {
        options.timeout_s = Seconds(key, value);
        if (options.timeout_s < 0.1) Fail(ErrorKind::kInvalidInput, "-o timeout: at least 0.1");
      } else if (key == "grace") {
        options.grace_s = Seconds(key, value);
      } else if (key == "hard" || key == "soft") {
        options.hard = key == "hard";
      } else if (key == "sync_writes" || key == "write_behind") {
        options.fs.write_behind = key == "write_behind";
      } else if (key == "io_uring" || key == "no_io_uring") {
        options.io_uring = key == "io_uring";
      } else if (key == "idle") {
        options.idle_s = Seconds(key, value);
      } else if (key == "attr_timeout") {
        options.fs.attr_timeout = Seconds(key, value);
      } else if (key == "entry_timeout") {
        options.fs.entry_timeout = Seconds(key, value);
      } else {
        Fail(ErrorKind::kInvalidInput,
             "-o {}: unknown option (known: hard, soft, timeout, grace, idle, attr_timeout, "
             "entry_timeout, write_behind, sync_writes, io_uring, no_io_uring)",
             key);
      }
    }
  }
  return options;
}

// An address is used as given; a node name is asked of the local daemon.
Endpoint Resolve(const std::string& target, const NodeConfig& config) {
  try {
    return Endpoint::Parse(target, config.peer_port);
  } catch (const Error&) {
  }
  IncomingMessage reply = [&] {
    try {
      return ControlClient::Connect(ControlSocketPath()).Call([](auto rq) { rq.setListNodes(); });
    } catch (const Error& e) {
      Fail(ErrorKind::kNotFound,
           "cannot resolve node '{}' through the local daemon ({}); "
           "give its address instead",
           target, e.what());
    }
  }();
  for (auto node : reply.Root<schema::ControlReply>().getNodes().getNodes()) {
    if (node.getName() == target) {
      // Every node of a cluster uses the same peer port unless told otherwise.
      return Endpoint::Parse(node.getAddress(), config.peer_port);
    }
  }
  Fail(ErrorKind::kNotFound, "no node named '{}' in this cluster", target);
}

ClientOptions ClientOptionsFor(const MountOptions& options, const NodeConfig& config) {
  ClientOptions client;
  client.key = config.cluster_key;
  client.timeout = std::chrono::milliseconds(static_cast<int64_t>(options.timeout_s * 1000));
  client.hard = options.hard;
  client.grace = std::chrono::milliseconds(static_cast<int64_t>(options.grace_s * 1000));
  return client;
}

// The kernel reads ahead 128 KiB on a FUSE mount (its default for a new bdi, which the
// FUSE_INIT reply may only lower), so a sequential reader waited for one round trip to
// the home per 128 KiB: 4 MiB keeps several 1 MiB reads in flight (a 512 MiB file read
// through homefs went from 369 to 991 MB/s here). The mount's bdi is named by its device
// number, read from mountinfo: a stat of the mount point would wait for this very
// process to answer. Only root may set it; others keep the default.
constexpr int kReadAheadKiB = 4096;

void RaiseReadAhead(const std::string& mountpoint) {
  // Without a stat: a path as mountinfo writes it (absolute, no "." or "..").
  std::string path = std::filesystem::absolute(mountpoint).lexically_normal().string();
  if (path.size() > 1 && path.back() == '/') path.pop_back();
  std::string device = TopMountDevice(path);
  if (device.empty()) return;
  std::ofstream(fmt::format("/sys/class/bdi/{}/read_ahead_kb", device)) << kReadAheadKiB;
}

// Mounts `mounted` at `mountpoint` and serves it until unmounted or signalled. `started`
// runs once mounted (threads only then: after the fork of fuse_daemonize), `stopping`
// once the loop has ended, before the unmount. Requests come through homefs's session I/O
// (session_io.h), and through io_uring where the options and the kernel allow it
// (fuse_uring.h).
int Serve(Mounted& mounted, const std::string& fsname_option, const std::string& mountpoint,
          bool foreground, bool debug, const MountOptions& options,
          const std::function<void(fuse_session*)>& started,
          const std::function<void()>& stopping) {
  std::vector<const char*> fuse_argv = {"mosmount", "-o", fsname_option.c_str()};
  if (debug) fuse_argv.push_back("-d");
  fuse_args args =
      FUSE_ARGS_INIT(static_cast<int>(fuse_argv.size()), const_cast<char**>(fuse_argv.data()));
  fuse_session* se =
      fuse_session_new(&args, &Mounted::Operations(), sizeof(fuse_lowlevel_ops), &mounted);
  if (!se) {
    std::fprintf(stderr, "mosmount: cannot create the FUSE session\n");
    fuse_opt_free_args(&args);
    return 1;
  }
  int status = 1;
  if (fuse_set_signal_handlers(se) == 0) {
    if (fuse_session_mount(se, mountpoint.c_str()) == 0) {
      fuse_daemonize(foreground ? 1 : 0);
      if (::geteuid() == 0) RaiseReadAhead(mountpoint);
      SessionIo io(se);
      std::optional<FuseUring> uring;
      if (options.io_uring && FuseUring::Allowed()) uring.emplace(se, io, options.no_io_uring_lanes);
      started(se);
      fuse_loop_config loop{};
      loop.clone_fd = 0;
      loop.max_idle_threads = 16;
      status = fuse_session_loop_mt(se, &loop) == 0 ? 0 : 1;
      uring.reset();  // no request is taken once stopping (as the loop has ended)
      stopping();
      fuse_session_unmount(se);
    } else {
      std::fprintf(stderr, "mosmount: cannot mount on %s\n", mountpoint.c_str());
    }
    fuse_remove_signal_handlers(se);
  }
  fuse_session_destroy(se);
  fuse_opt_free_args(&args);
  return status;
}

// The kernel checks permissions itself (with the home's ACLs, see Fs::Init): a cached
// name must not skip a search permission the home has taken away since.
std::string FsnameOption(const std::string& fsname) {
  std::string option = "fsname=" + fsname + ",subtype=homefs,default_permissions";
  if (::geteuid() == 0) option += ",allow_other";  // the daemon mounts for every user
  return option;
}

int MountOne(const std::string& target, const std::string& mountpoint, MountOptions options,
             const NodeConfig& config, bool foreground, bool debug) {
  Endpoint home;
  try {
    home = Resolve(target, config);
  } catch (const Error& e) {
    std::fprintf(stderr, "mosmount: %s\n", e.what());
    return 2;
  }
  ClientOptions client_options = ClientOptionsFor(options, config);
  client_options.host = home.host;
  client_options.port = home.port;
  FileClient client(client_options);
  std::optional<Fs> fs;
  try {
    fs.emplace(client, options.fs, client.Probe());
  } catch (const Error& e) {
    std::fprintf(stderr, "mosmount: %s\n", e.what());
    return 1;
  }
  OneHome mounted(*fs);
  int status = Serve(
      mounted, FsnameOption("homefs:" + home.ToString()), mountpoint, foreground, debug, options,
      [&](fuse_session* se) {
        fs->StartNotices(se);
        client.Start();
      },
      [&] {
        client.Stop();
        fs->StopResending();
        fs->StopNotices();
      });
  client.Stop();
  return status;
}

struct TreeArgs {
  std::string self, self_tree;
  int daemon_fd = -1;
};

int MountTree(const std::string& mountpoint, const MountOptions& options, const NodeConfig& config,
              const TreeArgs& tree_args, bool foreground, bool debug) {
  HomeTreeOptions tree_options;
  tree_options.self = tree_args.self;
  tree_options.client = ClientOptionsFor(options, config);
  for (const PartnerConfig& partner : config.partners) {
    tree_options.partners[partner.name] = config.CredentialsFor(partner.name);
  }
  tree_options.fs = options.fs;
  tree_options.idle = std::chrono::milliseconds(static_cast<int64_t>(options.idle_s * 1000));
  HomeTree tree(tree_options);
  Mount self;
  std::thread binding;
  int status = Serve(
      tree, FsnameOption("homefs"), mountpoint, foreground, debug, options,
      [&](fuse_session* se) {
        tree.Start(se);
        if (tree_args.daemon_fd >= 0) tree.FollowDaemon(tree_args.daemon_fd);
        // This node's entry is looked up through the mount, so on a thread of its own
        // while the loop answers; then the daemon hears that the tree is up.
        binding = std::thread([&] {
          std::string path = mountpoint + "/" + tree_args.self;
          try {
            if (!tree_args.self.empty()) {
              self = Mount::Bind(tree_args.self_tree, path, true);
              // The tree itself, seen again inside this node's own (/mosix/home under
              // /): a walk of this node's files would otherwise reach every home.
              std::string tree_root = tree_args.self_tree == "/" ? "" : tree_args.self_tree;
              if (mountpoint.rfind(tree_root + "/", 0) == 0) {
                ::umount2((path + mountpoint.substr(tree_root.size())).c_str(), MNT_DETACH);
              }
            }
          } catch (const Error& e) {
            spdlog::error("cannot make {} this node's own tree: {}", path, e.what());
          }
          if (tree_args.daemon_fd >= 0) {
            ::send(tree_args.daemon_fd, kHomeTreeMounted, sizeof kHomeTreeMounted - 1,
                   MSG_NOSIGNAL);
          }
        });
      },
      [&] { tree.Stop(); });
  if (binding.joinable()) binding.join();  // the unmount has ended a lookup still waiting
  return status;
}

int Run(int argc, char** argv) {
  CLI::App app{"Mount a Homeward node's files, or every node's (homefs)"};
  bool foreground = false, debug = false, tree = false;
  std::vector<std::string> option_lists, positional;
  TreeArgs tree_args;
  app.add_flag("-f", foreground, "stay in the foreground");
  app.add_flag("-d", debug, "print every FUSE request (implies -f)");
  app.add_option("-o", option_lists,
                 "hard (default: calls wait for an unreachable home) or soft (they fail after "
                 "the timeout), timeout=S (default 10), grace=S (hard: how long a silent "
                 "connection is kept, default 300), idle=S (--tree: a home's connection "
                 "closes after S unused, default 60), attr_timeout=S, entry_timeout=S, "
                 "write_behind (default: a write returns once sent; close and fsync wait for "
                 "the home) or sync_writes (each write waits for the home), io_uring "
                 "(default: take FUSE requests through io_uring where the kernel allows it) or "
                 "no_io_uring")
      ->allow_extra_args(false);  // one list per -o: the rest are the positional arguments
  app.add_flag("--tree", tree, "serve every live node's files, each at DIR/NODE");
  app.add_option("--self", tree_args.self, "--tree: this node's name");
  app.add_option("--self-tree", tree_args.self_tree,
                 "--tree: what DIR/SELF shows (a bind mount; default /)");
  app.add_option("--daemon-fd", tree_args.daemon_fd,
                 "--tree: a socket on which the daemon sends the live nodes");
  app.add_option("args", positional, "NODE|ADDRESS[:PORT] DIR, or DIR with --tree")->required();
  app.set_version_flag("--version", HOMEWARD_VERSION);
  CLI11_PARSE(app, argc, argv);
  if (debug) foreground = true;
  if (positional.size() != (tree ? 1u : 2u)) {
    std::fprintf(stderr, "mosmount: want %s\n", tree ? "--tree DIR" : "NODE|ADDRESS[:PORT] DIR");
    return 2;
  }
  if (tree_args.self_tree.empty()) tree_args.self_tree = "/";

  MountOptions options;
  NodeConfig config;
  try {
    options = ParseOptions(option_lists);
    options.no_io_uring_lanes = FaultPoints::FromEnvironment().Hit(Fault::kNoIoUringLane);
    const char* path = std::getenv("HOMEWARD_CONFIG");
    config = LoadNodeConfig(path && *path ? path : "/etc/homeward/node.toml");
    if (::geteuid() == 0) options.fs.criu_acting_dir = CriuActingDir(config.state_dir);
  } catch (const Error& e) {
    std::fprintf(stderr, "mosmount: %s\n", e.what());
    return 2;
  }
  SetupLogging("mosmount", config.name, debug ? "debug" : config.log_level);
  ::signal(SIGPIPE, SIG_IGN);
  // Connections come from this node's address, as the daemon's do (peer_auth.h).
  SetPeerSourceAddress(config.address);
  if (tree) return MountTree(positional[0], options, config, tree_args, foreground, debug);
  return MountOne(positional[0], positional[1], options, config, foreground, debug);
}

}  // namespace
}  // namespace homeward

int main(int argc, char** argv) {
  homeward::KeepMessageMemory();
  return homeward::Run(argc, argv);
}
