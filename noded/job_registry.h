// JobRegistry: the jobs whose home is this node. It starts them for mosrun, answers
// mosps, gives each a unique block of process ids, and kills them all at shutdown.
#pragma once

#include <uv.h>

#include <map>
#include <memory>
#include <string>

#include "config.h"
#include "control_server.h"
#include "job.h"

namespace homeward {

class JobRegistry {
 public:
  JobRegistry(uv_loop_t* loop, const NodeConfig& config);
  JobRegistry(const JobRegistry&) = delete;
  JobRegistry& operator=(const JobRegistry&) = delete;
  ~JobRegistry();

  // mosrun's startJob: starts the job and turns the connection into its relay.
  void StartJob(schema::JobSpec::Reader spec, ReplySender reply);
  // mosps's listJobs.
  void ListJobs(ReplySender reply) const;
  void KillAll();
  size_t size() const { return jobs_.size(); }

  // Each job's processes other than its main one get ids PidBase(slot) + their pid in
  // the job's namespace: above any real pid (at most 2^22), and unique among the home's
  // jobs. See preload/.
  static int64_t PidBase(int slot) { return (static_cast<int64_t>(slot) + 1) << 22; }
  static constexpr int kMaxJobs = 500;

 private:
  int FreeSlot() const;

  uv_loop_t* loop_;
  const NodeConfig& config_;
  std::string init_path_;
  std::string preload_path_;
  std::map<int, std::shared_ptr<Job>> jobs_;  // by slot
};

}  // namespace homeward
