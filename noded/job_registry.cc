// The home's job registry.
#include "job_registry.h"

#include <unistd.h>

#include <filesystem>

#include <capnp/message.h>
#include <spdlog/spdlog.h>

#include "error.h"
#include "install_paths.h"

namespace homeward {


JobRegistry::JobRegistry(uv_loop_t* loop, const NodeConfig& config)
    : loop_(loop),
      config_(config),
      init_path_(FindBesideExecutable({"mosjob-init", "../libexec/homeward/mosjob-init"})),
      preload_path_(FindBesideExecutable({"../preload/libmosix_preload.so", "libmosix_preload.so",
                                "../lib/homeward/libmosix_preload.so"})) {
  if (preload_path_.empty()) {
    spdlog::warn("libmosix_preload.so not found beside mosnoded: jobs run without the shim");
  }
}

JobRegistry::~JobRegistry() { KillAll(); }

int JobRegistry::FreeSlot() const {
  for (int slot = 0; slot < kMaxJobs; ++slot) {
    if (!jobs_.count(slot)) return slot;
  }
  Fail(ErrorKind::kOverloaded, "this node already runs {} jobs from here, the most it can",
       kMaxJobs);
}

void JobRegistry::StartJob(schema::JobSpec::Reader spec, ReplySender reply) {
  if (init_path_.empty()) {
    Fail(ErrorKind::kFailed, "mosjob-init is missing beside mosnoded; the installation is broken");
  }
  if (spec.getArgv().size() == 0) Fail(ErrorKind::kInvalidInput, "no program to run");
  std::string where = spec.getWhere();
  if (!where.empty() && where != config_.name) {
    Fail(ErrorKind::kUnimplemented, "starting a job on another node ({}) is not available yet; "
         "run it here with mosrun -h", where);
  }
  const Caller& caller = reply.caller();
  JobLaunch launch;
  for (auto arg : spec.getArgv()) launch.argv.emplace_back(arg.cStr());
  for (auto entry : spec.getEnv()) launch.env.emplace_back(entry.cStr());
  launch.cwd = spec.getCwd();
  if (launch.cwd.empty() || launch.cwd[0] != '/') {
    Fail(ErrorKind::kInvalidInput, "the working directory must be an absolute path, not '{}'",
         launch.cwd);
  }
  launch.home = config_.name;
  launch.identity = JobIdentity::OfProcess(caller.pid, caller.uid, caller.gid);
  int slot = FreeSlot();
  launch.pid_base = PidBase(slot);
  launch.keep_home = spec.getKeepHome();
  launch.init_path = init_path_;
  launch.preload_path = preload_path_;

  StreamHandlers handlers;
  handlers.on_message = [this, slot](schema::ControlRequest::Reader message) {
    auto it = jobs_.find(slot);
    if (it == jobs_.end()) return;
    Job& job = *it->second;
    switch (message.which()) {
      case schema::ControlRequest::JOB_INPUT: {
        auto data = message.getJobInput();
        job.Input(data.begin(), data.size());
        break;
      }
      case schema::ControlRequest::JOB_INPUT_END:
        job.InputEnd();
        break;
      case schema::ControlRequest::JOB_SIGNAL:
        job.Signal(message.getJobSignal());
        break;
      default:
        Fail(ErrorKind::kInvalidInput, "a job's relay carries input and signals only");
    }
  };
  handlers.on_close = [this, slot] {
    auto it = jobs_.find(slot);
    if (it != jobs_.end()) it->second->RelayLost();
  };
  // The job's slot is only reused after the job is gone, so the relay's handlers find
  // the job by slot safely; messages after the end find nothing and are dropped.
  ControlStream relay = reply.OpenStream(std::move(handlers));
  auto job = std::make_shared<Job>(loop_, std::move(launch), relay,
                                   [this, slot](Job&) { jobs_.erase(slot); });
  jobs_[slot] = job;
  try {
    job->Start();
  } catch (const Error& e) {
    jobs_.erase(slot);
    capnp::MallocMessageBuilder message;
    auto exit = message.initRoot<schema::ControlReply>().initJobExited();
    exit.setCode(126);
    exit.setMessage(e.what());
    relay.Send(message);
    relay.Close();
    return;
  }
  capnp::MallocMessageBuilder message;
  auto started = message.initRoot<schema::ControlReply>().initJobStarted();
  started.setHomePid(job->home_pid());
  started.setWhere(config_.name);
  relay.Send(message);
}

void JobRegistry::ListJobs(ReplySender reply) const {
  capnp::MallocMessageBuilder message;
  auto list = message.initRoot<schema::ControlReply>().initJobs().initJobs(
      static_cast<unsigned>(jobs_.size()));
  unsigned i = 0;
  for (const auto& [slot, job] : jobs_) {
    auto info = list[i++];
    info.setHomePid(job->home_pid());
    info.setHome(config_.name);
    info.setWhere(config_.name);
    info.setState(job->state());
    info.setMigrations(0);
    info.setCmd(job->command());
    info.setCpuMs(job->cpu_ms());
    info.setUid(job->uid());
    if (job->keep_home()) info.setPinned("kept at home (mosrun -h)");
  }
  reply.Send(message);
}

void JobRegistry::KillAll() {
  auto jobs = std::move(jobs_);
  jobs_.clear();
  for (auto& [slot, job] : jobs) job->Kill();
}

}  // namespace homeward
