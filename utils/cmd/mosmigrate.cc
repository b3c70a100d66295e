// mosmigrate: moves a job of this home (named by its home pid, as mosps lists it) to
// another node, and says where it now runs or why it could not move.
#include <cstdio>

#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include "control_client.h"
#include "error.h"
#include "framing.h"

int main(int argc, char** argv) {
  CLI::App app{"Move a Homeward job to another node"};
  int pid = 0;
  std::string target;
  bool no_wait = false;
  app.add_option("pid", pid, "the job's home pid (mosps lists it)")->required();
  app.add_option("node", target, "the node to move it to")->required();
  app.add_flag("--no-wait", no_wait, "return at once; the move goes on");
  std::string socket = homeward::ControlSocketPath();
  app.add_option("--control", socket, "the node daemon's control socket")
      ->envname("HOMEWARD_CONTROL");
  CLI11_PARSE(app, argc, argv);
  try {
    auto client = homeward::ControlClient::Connect(socket);
    auto fill = [&](homeward::schema::ControlRequest::Builder request) {
      auto migrate = request.initMigrateJob();
      migrate.setHomePid(pid);
      migrate.setTarget(target);
    };
    if (no_wait) {
      capnp::MallocMessageBuilder message;
      auto request = message.initRoot<homeward::schema::ControlRequest>();
      request.setVersion(homeward::schema::CONTROL_VERSION);
      fill(request);
      homeward::WriteFrame(client.fd(), message);
      fmt::print("job {}: moving to {}\n", pid, target);
      return 0;
    }
    auto reply = client.Call(fill);
    auto migrated = reply.Root<homeward::schema::ControlReply>().getMigrated();
    fmt::print("job {} now runs on {} (frozen {} ms, {} ms in all, {:.1f} MiB of images)\n", pid,
               migrated.getWhere().cStr(), migrated.getFrozenMs(), migrated.getTotalMs(),
               static_cast<double>(migrated.getImageBytes()) / (1 << 20));
    return 0;
  } catch (const homeward::Error& e) {
    std::fprintf(stderr, "mosmigrate: %s\n", e.what());
    return 1;
  }
}
