// Fuzzes the node configuration reader (utils/lib/config: TOML parsing and validation).
// The input is the file's text; the harness works in a scratch directory holding a valid
// key file named "key", so that inputs naming it get past the key to the later fields.
// Every problem must be an Error(kInvalidInput), and what is accepted must be valid.
#include <unistd.h>

#include <cstdint>
#include <fstream>
#include <string>

#include "config.h"
#include "error.h"
#include "fuzz_util.h"

using namespace homeward;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const bool ready = [] {
    std::string dir = fuzz::ScratchDir("homeward-fuzz-config");
    if (::chdir(dir.c_str()) != 0) fuzz::Broken("chdir to the scratch directory");
    std::ofstream("key") << std::string(64, 'a') << "\n";
    return true;
  }();
  (void)ready;
  std::string text(reinterpret_cast<const char*>(data), size);
  NodeConfig config;
  try {
    config = ParseNodeConfig(text, "fuzz.toml");
  } catch (const Error& e) {
    if (e.kind() != ErrorKind::kInvalidInput) fuzz::Broken("a config problem is invalid input");
    if (std::string(e.what()).rfind("fuzz.toml", 0) != 0) {
      fuzz::Broken("a config error does not name the file");
    }
    return 0;
  }
  if (config.name.empty() || config.cluster_key.size() != 32 || config.gossip_port == 0 ||
      config.peer_port == 0 || config.gossip.dead_after <= config.gossip.suspect_after ||
      config.gossip.window < 1 || config.gossip.window > 64) {
    fuzz::Broken("an invalid config was accepted");
  }
  return 0;
}
