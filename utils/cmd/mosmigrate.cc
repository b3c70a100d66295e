// mosmigrate: moves a job of this home (named by its home pid, as mosps lists it) to
// another node, and says where it now runs or why it could not move.
#include <limits.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <thread>

#include <fmt/format.h>
#include <CLI/CLI.hpp>

#include "control_client.h"
#include "error.h"
#include "framing.h"

int main(int argc, char** argv) {
  CLI::App app{"Move a Homeward job to another node"};
  int pid = 0;
  std::string target;
  bool no_wait = false;
  app.add_option("pid", pid, "the job's home pid (mosps lists it)")->required();
  std::string path;
  bool is_node = false;
  app.add_option("node", target,
                 "where to: a node, home, freeze (to disk at home), continue (a frozen job), "
                 "or checkpoint [DIR] (write its images and let it run on; without DIR, one "
                 "more in the job's own checkpoint directory, mosrun -C)")
      ->required();
  app.add_option("file", path, "for checkpoint: a directory to create for the images");
  app.add_flag("--node", is_node,
               "NODE is a node's name even if it reads like a verb (a node named freeze)");
  app.add_flag("--no-wait", no_wait, "return at once; the move goes on");
  double busy_wait = 60;
  app.add_option("--busy-wait", busy_wait,
                 "while the job is busy (another move or a checkpoint still ending), ask again "
                 "for up to this many seconds (0: fail at once)")
      ->capture_default_str();
  std::string socket = homeward::ControlSocketPath();
  app.add_option("--control", socket, "the node daemon's control socket")
      ->envname("HOMEWARD_CONTROL");
  CLI11_PARSE(app, argc, argv);
  enum class Verb { kMoveTo, kHome, kFreeze, kContinue, kCheckpoint };
  Verb verb = Verb::kMoveTo;
  if (!is_node) {
    if (target == "home") verb = Verb::kHome;
    if (target == "freeze") verb = Verb::kFreeze;
    if (target == "continue") verb = Verb::kContinue;
    if (target == "checkpoint") verb = Verb::kCheckpoint;
  }
  if (verb != Verb::kCheckpoint && !path.empty()) {
    std::fprintf(stderr, "mosmigrate: only checkpoint takes a directory\n");
    return 2;
  }
  try {
    auto client = homeward::ControlClient::Connect(socket);
    auto fill = [&](homeward::schema::ControlRequest::Builder request) {
      auto migrate = request.initMigrateJob();
      migrate.setHomePid(pid);
      // The daemon works in a directory of its own: a relative path is the caller's.
      char cwd[PATH_MAX];
      switch (verb) {
        case Verb::kMoveTo:
          migrate.setMoveTo(target);
          break;
        case Verb::kHome:
          migrate.setHome();
          break;
        case Verb::kFreeze:
          migrate.setFreeze();
          break;
        case Verb::kContinue:
          migrate.setContinue();
          break;
        case Verb::kCheckpoint:
          migrate.setCheckpoint(!path.empty() && path[0] != '/' && getcwd(cwd, sizeof cwd)
                                    ? std::string(cwd) + "/" + path
                                    : path);
          break;
      }
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
    // A job still ending its last move (the answer comes at its arrival, while the node it
    // left is finishing), or being checkpointed, is busy for a moment: ask again.
    auto give_up = std::chrono::steady_clock::now() +
                   std::chrono::milliseconds(static_cast<int64_t>(busy_wait * 1000));
    auto pause = std::chrono::milliseconds(50);
    auto reply = [&] {
      for (;;) {
        try {
          return client.Call(fill);
        } catch (const homeward::Error& e) {
          if (e.kind() != homeward::ErrorKind::kOverloaded ||
              std::chrono::steady_clock::now() + pause > give_up) {
            throw;
          }
        }
        std::this_thread::sleep_for(pause);
        pause = std::min(pause * 2, std::chrono::milliseconds(1000));
        client = homeward::ControlClient::Connect(socket);
      }
    }();
    auto migrated = reply.Root<homeward::schema::ControlReply>().getMigrated();
    double mib = static_cast<double>(migrated.getImageBytes()) / (1 << 20);
    if (verb == Verb::kFreeze) {
      fmt::print("job {} is frozen to disk at home ({:.1f} MiB)\n", pid, mib);
      return 0;
    }
    if (verb == Verb::kCheckpoint) {
      fmt::print("job {} runs on; its checkpoint is in {} ({:.1f} MiB)\n", pid,
                 path.empty() ? migrated.getWhere().cStr() : path, mib);
      return 0;
    }
    fmt::print("job {} now runs on {} (frozen {} ms, {} ms in all, {:.1f} MiB of images)\n", pid,
               migrated.getWhere().cStr(), migrated.getFrozenMs(), migrated.getTotalMs(),
               static_cast<double>(migrated.getImageBytes()) / (1 << 20));
    return 0;
  } catch (const homeward::Error& e) {
    std::fprintf(stderr, "mosmigrate: %s\n", e.what());
    return 1;
  }
}
