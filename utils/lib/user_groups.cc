#include "user_groups.h"

#include <grp.h>
#include <pwd.h>

namespace homeward {

std::vector<std::string> UserGroupNames(uid_t uid) {
  passwd entry;
  passwd* user = nullptr;
  std::vector<char> buffer(16384);
  if (getpwuid_r(uid, &entry, buffer.data(), buffer.size(), &user) != 0 || !user) return {};
  std::vector<gid_t> gids(64);
  int count = static_cast<int>(gids.size());
  while (getgrouplist(user->pw_name, user->pw_gid, gids.data(), &count) < 0) {
    gids.resize(static_cast<size_t>(count) + 64);  // count says how many there are
    count = static_cast<int>(gids.size());
  }
  gids.resize(static_cast<size_t>(count));
  std::vector<std::string> names;
  std::vector<char> group_buffer(16384);
  for (gid_t gid : gids) {
    group found_entry;
    group* found = nullptr;
    if (getgrgid_r(gid, &found_entry, group_buffer.data(), group_buffer.size(), &found) == 0 &&
        found) {
      names.emplace_back(found->gr_name);
    }
  }
  return names;
}

const std::vector<std::string>& UserGroupCache::Of(uid_t uid) {
  auto now = std::chrono::steady_clock::now();
  auto it = entries_.find(uid);
  if (it == entries_.end() || now - it->second.read > keep_) {
    it = entries_.insert_or_assign(uid, Entry{UserGroupNames(uid), now}).first;
  }
  return it->second.groups;
}

}  // namespace homeward
