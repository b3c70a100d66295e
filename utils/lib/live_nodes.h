// The live nodes, as the daemon tells its homefs (`mosmount --tree --daemon-fd`): one
// datagram per change, each the whole list, a line "NAME HOST PORT [CLUSTER]" per node
// after a first line "# live nodes" (lines starting with # are comments); CLUSTER names a
// partner cluster's node, reached with the partnership's key. A whole
// list each time: nothing is lost when one is dropped (a full socket), the next says all.
#pragma once

#include <cstdint>
#include <map>
#include <string>

namespace homeward {

// A live node's file service.
struct HomeAddress {
  std::string host;
  uint16_t port = 0;
  std::string cluster;  // a partner cluster's node; empty: one of this cluster
  bool operator==(const HomeAddress&) const = default;
};

using LiveNodes = std::map<std::string, HomeAddress>;

// Throws Error naming the line for a malformed one (a bad name, host or port).
LiveNodes ParseLiveNodes(const std::string& text);
std::string FormatLiveNodes(const LiveNodes& live);

// What homefs answers on the same socket once /mosix/home is mounted.
inline constexpr char kHomeTreeMounted[] = "mounted";

}  // namespace homeward
