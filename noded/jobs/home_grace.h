// HomeGrace: how long each home of this node's guests has been unreachable, and which
// are past the grace ([recovery] home_grace_s). Pure logic, time passed in.
//
// A home counts as unreachable from the moment gossip declares it dead until it is
// alive again; its guests' file calls wait meanwhile (homefs is a hard mount). Past the
// grace they are frozen to this node's disk (job_grace.cc), once per outage: a home
// declared dead again after it came back starts a new outage and a new grace.
#pragma once

#include <chrono>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace homeward {

class HomeGrace {
 public:
  explicit HomeGrace(std::chrono::milliseconds grace) : grace_(grace) {}

  // Gossip's verdicts. A second Unreachable of the same outage keeps the first time.
  void Unreachable(const std::string& home, int64_t now_ms);
  void Reachable(const std::string& home);
  bool unreachable(const std::string& home) const { return since_.count(home) > 0; }

  // The homes unreachable for at least the grace whose guests have not been frozen in
  // this outage yet; each is returned once per outage.
  std::vector<std::string> Overdue(int64_t now_ms);

 private:
  struct Outage {
    int64_t since_ms = 0;
    bool handled = false;
  };
  std::chrono::milliseconds grace_;
  std::map<std::string, Outage> since_;
};

}  // namespace homeward
