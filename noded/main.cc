// mosnoded: the Homeward node daemon.
#include <signal.h>
#include <systemd/sd-daemon.h>
#include <uv.h>

#include <cstdio>
#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>

#include "config.h"
#include "daemon.h"
#include "error.h"
#include "fd_keeper.h"
#include "framing.h"
#include "homeward_config.h"
#include "lock_keeper.h"
#include "log.h"

int main(int argc, char** argv) {
  // A keeper of a job's pipe ends (fd_keeper.h): this binary, so it needs no path of its own.
  if (argc == 2 && std::strcmp(argv[1], "--keep-fds") == 0) return homeward::FdKeeperMain();
  // The keeper of the file service's lock descriptions (lock_keeper.h), likewise.
  if (argc == 2 && std::strcmp(argv[1], "--keep-locks") == 0) return homeward::LockKeeperMain();
  homeward::KeepMessageMemory();
  CLI::App app{"Homeward node daemon"};
  std::string config_path = "/etc/homeward/node.toml";
  app.add_option("-c,--config", config_path, "the node's TOML configuration");
  bool check_config = false;
  app.add_flag("--check-config", check_config,
               "read the configuration and its keys, say what is wrong, and exit (0: it would "
               "start)");
  app.set_version_flag("--version", HOMEWARD_VERSION);
  CLI11_PARSE(app, argc, argv);

  // Fault points (HOMEWARD_FAULT) are chosen once, here, for the tests that use them; a name
  // that is not a fault point is a start-up error, not a test that silently fails nothing.
  homeward::FaultPoints faults;
  try {
    faults = homeward::FaultPoints::FromEnvironment();
  } catch (const homeward::Error& e) {
    std::fprintf(stderr, "mosnoded: %s\n", e.what());
    return 2;
  }
  homeward::NodeConfig config;
  try {
    config = homeward::LoadNodeConfig(config_path);
  } catch (const homeward::Error& e) {
    std::fprintf(stderr, "mosnoded: %s\n", e.what());
    return 2;
  }
  if (check_config) {
    std::printf("%s: node %s of cluster %s at %s, %zu partner%s\n", config_path.c_str(),
                config.name.c_str(), config.cluster.c_str(), config.address.c_str(),
                config.partners.size(), config.partners.size() == 1 ? "" : "s");
    return 0;
  }
  homeward::SetupLogging("mosnoded", config.name, config.log_level);
  // Writes to a peer that went away must fail with EPIPE, not kill the daemon.
  ::signal(SIGPIPE, SIG_IGN);

  uv_loop_t loop;
  uv_loop_init(&loop);
  int exit_code = 0;
  {
    homeward::Daemon daemon(&loop, std::move(config), std::move(faults));
    // mosctl reload runs this program again, as it was started; from the executable's
    // path, so that an upgraded one is what runs.
    std::vector<std::string> restart{argv, argv + argc};
    std::error_code ec;
    auto self = std::filesystem::read_symlink("/proc/self/exe", ec);
    if (!ec) restart[0] = self.string();
    daemon.SetRestartCommand(std::move(restart));
    try {
      daemon.Start();
      // Under systemd (Type=notify): up once the control socket answers.
      sd_notify(0, "READY=1");
      uv_run(&loop, UV_RUN_DEFAULT);
      sd_notify(0, "STOPPING=1");
    } catch (const homeward::Error& e) {
      spdlog::critical("{}", e.what());
      exit_code = 1;
    }
  }
  // Let the close callbacks of every handle run, then free the loop.
  uv_run(&loop, UV_RUN_DEFAULT);
  if (uv_loop_close(&loop) != 0) spdlog::warn("event loop closed with handles still open");
  spdlog::info("stopped");
  return exit_code;
}
