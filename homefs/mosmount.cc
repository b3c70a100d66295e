// mosmount: mounts a node's files with homefs.
//   mosmount [-f] [-d] [-o hard|soft,timeout=S,grace=S,attr_timeout=S,entry_timeout=S]
//            NODE|ADDRESS[:PORT] DIR
// Unmount with `fusermount3 -u DIR`.
#include <fuse_lowlevel.h>
#include <signal.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <sstream>

#include <CLI/CLI.hpp>

#include "client.h"
#include "config.h"
#include "criu_acting.h"
#include "control_client.h"
#include "error.h"
#include "fs.h"
#include "homeward_config.h"
#include "log.h"
#include "peer_auth.h"

namespace homeward {
namespace {

struct MountOptions {
  double timeout_s = 10;
  bool hard = true;
  double grace_s = 300;
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
      } else if (key == "attr_timeout") {
        options.fs.attr_timeout = Seconds(key, value);
      } else if (key == "entry_timeout") {
        options.fs.entry_timeout = Seconds(key, value);
      } else {
        Fail(ErrorKind::kInvalidInput,
             "-o {}: unknown option (known: hard, soft, timeout, grace, attr_timeout, "
             "entry_timeout)",
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

int Run(int argc, char** argv) {
  CLI::App app{"Mount a Homeward node's files (homefs)"};
  bool foreground = false, debug = false;
  std::vector<std::string> option_lists;
  std::string target, mountpoint;
  app.add_flag("-f", foreground, "stay in the foreground");
  app.add_flag("-d", debug, "print every FUSE request (implies -f)");
  app.add_option("-o", option_lists,
                 "hard (default: calls wait for an unreachable home) or soft (they fail after "
                 "the timeout), timeout=S (default 10), grace=S (hard: how long a silent "
                 "connection is kept, default 300), attr_timeout=S, entry_timeout=S");
  app.add_option("node", target, "NODE name or ADDRESS[:PORT]")->required();
  app.add_option("mountpoint", mountpoint, "where to mount")->required();
  app.set_version_flag("--version", HOMEWARD_VERSION);
  CLI11_PARSE(app, argc, argv);
  if (debug) foreground = true;

  MountOptions options;
  NodeConfig config;
  Endpoint home;
  try {
    options = ParseOptions(option_lists);
    const char* path = std::getenv("HOMEWARD_CONFIG");
    config = LoadNodeConfig(path && *path ? path : "/etc/homeward/node.toml");
    home = Resolve(target, config);
    if (::geteuid() == 0) options.fs.criu_acting_dir = CriuActingDir(config.state_dir);
  } catch (const Error& e) {
    std::fprintf(stderr, "mosmount: %s\n", e.what());
    return 2;
  }
  SetupLogging("mosmount", config.name, debug ? "debug" : config.log_level);
  ::signal(SIGPIPE, SIG_IGN);

  // Connections come from this node's address, as the daemon's do (peer_auth.h).
  SetPeerSourceAddress(config.address);
  ClientOptions client_options;
  client_options.host = home.host;
  client_options.port = home.port;
  client_options.key = config.cluster_key;
  client_options.timeout =
      std::chrono::milliseconds(static_cast<int64_t>(options.timeout_s * 1000));
  client_options.hard = options.hard;
  client_options.grace = std::chrono::milliseconds(static_cast<int64_t>(options.grace_s * 1000));
  FileClient client(client_options);
  std::optional<Fs> fs;
  try {
    fs.emplace(client, options.fs, client.Probe());
  } catch (const Error& e) {
    std::fprintf(stderr, "mosmount: %s\n", e.what());
    return 1;
  }

  // The kernel checks permissions itself (with the home's ACLs, see Fs::Init): a cached
  // name must not skip a search permission the home has taken away since.
  std::string fsname =
      "fsname=homefs:" + home.ToString() + ",subtype=homefs,default_permissions";
  if (::geteuid() == 0) fsname += ",allow_other";  // the daemon mounts for every user
  std::vector<const char*> fuse_argv = {"mosmount", "-o", fsname.c_str()};
  if (debug) fuse_argv.push_back("-d");
  fuse_args args =
      FUSE_ARGS_INIT(static_cast<int>(fuse_argv.size()), const_cast<char**>(fuse_argv.data()));
  fuse_session* se = fuse_session_new(&args, &Fs::Operations(), sizeof(fuse_lowlevel_ops), &*fs);
  if (!se) {
    std::fprintf(stderr, "mosmount: cannot create the FUSE session\n");
    return 1;
  }
  int status = 1;
  if (fuse_set_signal_handlers(se) == 0) {
    if (fuse_session_mount(se, mountpoint.c_str()) == 0) {
      fuse_daemonize(foreground ? 1 : 0);
      fs->StartNotices(se);
      client.Start();  // threads only after the fork of fuse_daemonize
      fuse_loop_config loop{};
      loop.clone_fd = 0;
      loop.max_idle_threads = 16;
      status = fuse_session_loop_mt(se, &loop) == 0 ? 0 : 1;
      client.Stop();
      fs->StopResending();
      fs->StopNotices();
      fuse_session_unmount(se);
    } else {
      std::fprintf(stderr, "mosmount: cannot mount on %s\n", mountpoint.c_str());
    }
    fuse_remove_signal_handlers(se);
  }
  fuse_session_destroy(se);
  client.Stop();
  fuse_opt_free_args(&args);
  return status;
}

}  // namespace
}  // namespace homeward

int main(int argc, char** argv) {
  return homeward::Run(argc, argv);
}
