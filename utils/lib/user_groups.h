// The names of the Unix groups a user is in, as this node's user database says: what a
// node's sub-cluster ([node] group) is matched against. Nodes of a cluster share their
// users and groups, as MOSIX assumes.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <map>
#include <string>
#include <vector>

namespace homeward {

// The groups of `uid` (its primary group included), or none when the uid has no user.
std::vector<std::string> UserGroupNames(uid_t uid);

// UserGroupNames, remembered for a while: asked for every job every balancing round, and
// a user database may be a network service.
class UserGroupCache {
 public:
  explicit UserGroupCache(std::chrono::seconds keep = std::chrono::seconds(60)) : keep_(keep) {}
  const std::vector<std::string>& Of(uid_t uid);

 private:
  struct Entry {
    std::vector<std::string> groups;
    std::chrono::steady_clock::time_point read;
  };
  std::chrono::seconds keep_;
  std::map<uid_t, Entry> entries_;
};

}  // namespace homeward
