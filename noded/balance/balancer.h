// Balancer: the daemon's side of the balancing policy (balance_policy.h). Every round it
// takes the gossip picture and the jobs running here, asks the policy which should move,
// and starts those moves through the job registry.
#pragma once

#include <uv.h>

#include <memory>
#include <vector>

#include "balance_policy.h"
#include "config.h"
#include "gossip.h"
#include "job_registry.h"
#include "uv_handle.h"

namespace homeward {

// The live nodes of a gossip picture, as the policy sees them.
std::vector<balance::Node> PolicyNodes(const std::vector<MemberView>& picture,
                                       const std::string& own_cluster);

// The policy's options from the node's configuration.
balance::Options PolicyOptions(const NodeConfig& config);

class Balancer {
 public:
  Balancer(uv_loop_t* loop, const NodeConfig& config, Gossip& gossip, JobRegistry& jobs);
  Balancer(const Balancer&) = delete;
  Balancer& operator=(const Balancer&) = delete;

  // Starts the rounds. Jobs' use is sampled even when automatic moves are off: a move by
  // hand checks the target's free memory against the job's.
  void Start();
  void Stop();
  // The live nodes as placement should see them: the gossip picture with this node's
  // recent moves and placements counted.
  std::vector<balance::Node> Picture();

 private:
  void Round();
  // The live nodes for the policy, this one with its plain average and its recent count.
  std::vector<balance::Node> Nodes() const;

  uv_loop_t* loop_;
  const NodeConfig& config_;
  Gossip& gossip_;
  JobRegistry& jobs_;
  balance::Balancer policy_;
  int moving_ = 0;  // moves started and not yet ended
  UvHandle<uv_timer_t> timer_;
  std::shared_ptr<bool> alive_ = std::make_shared<bool>(true);
};

}  // namespace homeward
