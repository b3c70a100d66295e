#include "live_nodes.h"

#include <sstream>

#include "error.h"
#include "config.h"

namespace homeward {

LiveNodes ParseLiveNodes(const std::string& text) {
  LiveNodes live;
  std::istringstream lines(text);
  std::string line;
  while (std::getline(lines, line)) {
    if (line.empty() || line[0] == '#') continue;
    std::istringstream fields(line);
    std::string name, host, cluster, extra;
    unsigned long port = 0;
    if (!(fields >> name >> host >> port) || !ValidNodeName(name) || port == 0 || port > 65535 ||
        ((fields >> cluster) && !ValidNodeName(cluster)) || (fields >> extra)) {
      Fail(ErrorKind::kInvalidInput, "bad live node line '{}': want NAME HOST PORT [CLUSTER]",
           line);
    }
    live[name] = HomeAddress{host, static_cast<uint16_t>(port), cluster};
  }
  return live;
}

std::string FormatLiveNodes(const LiveNodes& live) {
  // Never an empty datagram, which reads as the end of the stream.
  std::string text = "# live nodes\n";
  for (const auto& [name, address] : live) {
    text += fmt::format("{} {} {}{}{}\n", name, address.host, address.port,
                        address.cluster.empty() ? "" : " ", address.cluster);
  }
  return text;
}

}  // namespace homeward
