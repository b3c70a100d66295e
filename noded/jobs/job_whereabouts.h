// Where this home's jobs run away from home, for threads other than the loop's: the
// registry (on the loop) publishes the whole table after each turn of the loop that may
// have changed it, and the loopback service (on its own threads) asks whether a job of
// this home runs on the peer that asks to open a connection for it.
#pragma once

#include <sys/types.h>

#include <map>
#include <mutex>
#include <string>
#include <vector>

namespace homeward {

class JobWhereabouts {
 public:
  // home pid -> the nodes the job may be running on right now: where it runs, and during
  // a move the node it was announced to have moved to (whose attach is not in yet).
  using Table = std::map<pid_t, std::vector<std::string>>;

  // Replaces the table; returns whether it changed.
  bool Publish(Table table);
  // The nodes job `home_pid` runs on, as last published (empty: none, the job is at home,
  // frozen, ended or not of this home).
  std::vector<std::string> NodesOf(pid_t home_pid) const;
  bool RunsOn(pid_t home_pid, const std::string& node) const;

 private:
  mutable std::mutex mutex_;
  Table table_;
};

}  // namespace homeward
