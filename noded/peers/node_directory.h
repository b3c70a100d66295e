// The nodes this node's gossip knows, its own cluster's and its partners', by name: where
// each is and which cluster it is of. Kept on the loop from gossip's news and read from
// any thread: an incoming move, on its peer connection's thread, checks the home its job
// names against it (partner_services.h, KnownHome).
#pragma once

#include <cstdint>
#include <map>
#include <mutex>
#include <optional>
#include <string>

namespace homeward {

struct KnownNode {
  std::string cluster;  // empty: this node's own cluster
  std::string address;
  uint16_t peer_port = 0;
  bool alive = true;
};

class NodeDirectory {
 public:
  // Gossip's word on `name`. A name of this cluster keeps its entry against a partner's
  // node that claims it (a partnership's key speaks for its partner's nodes only), and so
  // against a partner's late word on a node that has since joined this cluster. Returns
  // whether the word was taken.
  bool Update(const std::string& name, const KnownNode& node);
  std::optional<KnownNode> Find(const std::string& name) const;

 private:
  mutable std::mutex mutex_;
  std::map<std::string, KnownNode> nodes_;
};

}  // namespace homeward
