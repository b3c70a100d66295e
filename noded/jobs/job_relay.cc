// The relay of a home job away: mosrun's stream and the stream to the job's node,
// joined here, with the events each carries handed to the move protocol.
#include "job_registry.h"

#include <spdlog/spdlog.h>

#include "job_replies.h"
#include "peer_auth.h"
#include "uv_work.h"

namespace homeward {

namespace {

constexpr auto kPeerConnectTimeout = std::chrono::seconds(5);

}  // namespace

void JobRegistry::StartAway(int slot, JobLaunch launch, const std::string& where,
                            ReplySender reply) {
  PeerAddress address = resolve_(where);
  if (!address.cluster.empty()) {
    Fail(ErrorKind::kInvalidInput,
         "node {} is in partner cluster {}: jobs start in their own cluster ({}); a running job "
         "may move there (mosmigrate, or automatically with mosrun -G)",
         where, address.cluster, config_.cluster);
  }
  auto request = GuestRequest(launch, where);

  auto away = std::make_shared<Away>(move::Protocol::Starting(launch.identity.home_pid, where));
  away->protocol.SetGeneration(launch.generation);
  away->uid = launch.identity.uid;
  away->command = CommandOf(launch.argv);
  away->locked = launch.locked;
  away->partners = launch.partners;

  auto handlers = MosrunHandlersForAway(slot, away);
  away->mosrun = reply.OpenStream(std::move(handlers));
  away->mosrun.PauseReading(true);  // until the job's node has the job
  jobs_[slot].away = away;

  // The peer handshake blocks; it runs on libuv's thread pool, never on the loop.
  struct Connection {
    Fd fd;
    std::string error;
  };
  auto result = std::make_shared<Connection>();
  auto key = config_.cluster_key;
  int status = QueueWork(
      loop_,
      [result, address, key] {
        try {
          result->fd = PeerConnect(address.host, address.port, key, "jobs", kPeerConnectTimeout);
        } catch (const std::exception& e) {
          result->error = e.what();
        }
      },
      [this, alive = alive_, slot, away, result, request] {
        if (!*alive) return;
        if (!result->error.empty()) {
          Apply(slot, away,
                away->protocol.Lost(
                    fmt::format("cannot reach node {}: {}", away->where(), result->error)));
          return;
        }
        ConnectedAway(slot, away, std::move(result->fd), request);
      });
  if (status < 0) {
    Apply(slot, away,
          away->protocol.Lost(fmt::format("cannot reach node {}: {}", where, uv_strerror(status))));
  }
}

void JobRegistry::ConnectedAway(int slot, std::shared_ptr<Away> away, Fd fd,
                                std::shared_ptr<capnp::MallocMessageBuilder> request) {
  auto it = jobs_.find(slot);
  if (it == jobs_.end() || it->second.away != away) return;  // mosrun left meanwhile
  JoinAway(slot, away, std::move(fd), request.get());
  spdlog::info("job {} started on {}: {}", away->home_pid(), away->where(), away->command);
}

std::shared_ptr<capnp::MallocMessageBuilder> JobRegistry::GuestRequest(
    const JobLaunch& launch, const std::string& where) const {
  auto request = std::make_shared<capnp::MallocMessageBuilder>();
  auto root = request->initRoot<schema::ControlRequest>();
  root.setVersion(schema::CONTROL_VERSION);
  auto guest = root.initStartGuest();
  auto job = guest.initJob();
  auto argv = job.initArgv(static_cast<unsigned>(launch.argv.size()));
  for (unsigned i = 0; i < launch.argv.size(); ++i) argv.set(i, launch.argv[i]);
  auto env = job.initEnv(static_cast<unsigned>(launch.env.size()));
  for (unsigned i = 0; i < launch.env.size(); ++i) env.set(i, launch.env[i]);
  job.setCwd(launch.cwd);
  job.setWhere(where);
  job.setKeepHome(launch.keep_home);
  job.setLocked(launch.locked);
  job.setPartners(launch.partners);
  job.setMinFreeMb(launch.min_free_mb);
  guest.setStartedUnixMs(static_cast<uint64_t>(launch.started_unix_ms));
  // Named even within a cluster: the receiver may be of a partner cluster.
  guest.setHomeCluster(ClusterOfHome(launch));
  if (launch.guest) {
    guest.setHome(launch.home);
    guest.setHomeHost(launch.home_host);
    guest.setHomePort(launch.home_port);
    guest.setReattach(where != launch.home);
  } else {
    guest.setHome(config_.name);
    guest.setHomeHost(config_.address);
    guest.setHomePort(config_.peer_port);
  }
  FillIdentity(launch.identity, guest.initIdentity());
  guest.setPidBase(launch.pid_base);
  guest.setGeneration(launch.generation);
  return request;
}

std::shared_ptr<JobRegistry::Away> JobRegistry::AwayFrom(Job& job, move::Protocol protocol) {
  auto away = std::make_shared<Away>(std::move(protocol));
  away->protocol.SetGeneration(job.launch().generation);
  away->uid = job.uid();
  away->command = job.command();
  away->locked = job.launch().locked;
  away->partners = job.launch().partners;
  away->mosrun = job.relay();
  return away;
}

StreamHandlers JobRegistry::MosrunHandlersForAway(int slot, std::shared_ptr<Away> away) {
  StreamHandlers handlers;
  handlers.on_message = [this, away](IncomingMessage& incoming) {
    auto message = incoming.Root<schema::ControlRequest>();
    if (message.isJobInputAt()) {
      auto chunk = message.getJobInputAt();
      LogInput(away->home_pid(), chunk.getOffset(), chunk.getData().begin(),
               chunk.getData().size());
    }
    switch (message.which()) {
      case schema::ControlRequest::JOB_SIGNAL:
        if (!away->peer.open()) {
          away->held_signals.push_back(message.getJobSignal());
          break;
        }
        [[fallthrough]];
      case schema::ControlRequest::JOB_SIGNAL_NUMBERED:
        // With no relay to the job's node, mosrun sends it again (it keeps it until the
        // node says it was delivered).
        if (!away->peer.open()) break;
        [[fallthrough]];
      case schema::ControlRequest::JOB_INPUT:
      case schema::ControlRequest::JOB_INPUT_END:
      case schema::ControlRequest::JOB_INPUT_AT:
      case schema::ControlRequest::JOB_INPUT_END_AT:
        Forward<schema::ControlRequest>(incoming, away->peer);
        // Hold mosrun's input back while the job's node is slower to take it.
        if (away->peer.queued_bytes() > ControlStream::kHighWater) away->mosrun.PauseReading(true);
        break;
      default:
        Fail(ErrorKind::kInvalidInput, "a job's relay carries input and signals only");
    }
  };
  handlers.on_close = [this, slot, away] {
    if (away->protocol.ended()) return;
    spdlog::info("job {}: its mosrun is gone; ending it on {}", away->home_pid(), away->where());
    Apply(slot, away, away->protocol.MosrunGone());
  };
  return handlers;
}

StreamHandlers JobRegistry::PeerHandlersForAway(int slot, std::shared_ptr<Away> away,
                                                uint32_t relay) {
  StreamHandlers handlers;
  handlers.on_message = [this, slot, away, relay](IncomingMessage& incoming) {
    auto reply = incoming.Root<schema::ControlReply>();
    if (reply.isCheckpointed()) {
      CheckpointedAway(slot, away, reply.getCheckpointed());
      return;
    }
    if (reply.isCheckpointAsked()) {
      CheckpointAsked(away->home_pid());
      return;
    }
    if (reply.isError()) {
      auto error = reply.getError();
      Apply(slot, away,
            away->protocol.Refused(relay, error.getMessage().cStr(),
                                   ErrorKindFromName(error.getKind().cStr())));
      return;
    }
    if (reply.isMovedOn()) {  // the old node's last word, after the output it owed
      spdlog::info("job {}: its old node has sent the last of its output (it moved on to {})",
                   away->home_pid(), reply.getMovedOn().cStr());
      Apply(slot, away,
            away->protocol.MovedOn(relay, reply.getMovedOn(), static_cast<int64_t>(uv_now(loop_))));
      SettledBeforeRelease(away);
      JournalSoon();  // an announced move: its record
      return;
    }
    Forward<schema::ControlReply>(incoming, away->mosrun);
    if (reply.isJobOutput()) {
      auto output = reply.getJobOutput();
      if (output.getFd() == 1 || output.getFd() == 2) {
        away->forwarded[output.getFd()] += output.getData().size();
      }
      if (relay == away->protocol.record().relay) CountOutput(*away, output);
    }
    if (reply.isJobExited()) {
      if (away->mosrun.open()) EndInputLog(away->home_pid());  // nothing will restart it
      Apply(slot, away, away->protocol.Exited());
      return;
    }
    // Hold the job's output back while mosrun is slower than the job: this relay's, which
    // may be the old node's after the job arrived elsewhere.
    if (away->mosrun.queued_bytes() > ControlStream::kHighWater) {
      if (ControlStream* own = away->StreamOf(relay)) own->PauseReading(true);
    }
  };
  handlers.on_close = [this, slot, away, relay] {
    if (AwaitNodeBack(away, relay)) return;
    Apply(slot, away, away->protocol.Closed(relay));
    SettledBeforeRelease(away);
  };
  return handlers;
}

void JobRegistry::JoinAway(int slot, std::shared_ptr<Away> away, Fd fd,
                           capnp::MallocMessageBuilder* first) {
  Caller peer;
  peer.peer = true;
  uint32_t relay = away->protocol.Connected();
  std::fill(std::begin(away->output_here), std::end(away->output_here), 0);
  away->output_told = 0;
  away->peer = control_.AdoptStream(std::move(fd), peer, PeerHandlersForAway(slot, away, relay));
  // The job's node must have the job before any of mosrun's input reaches it.
  if (first) away->peer.Send(*first);
  PaceRelays(away);
  away->mosrun.PauseReading(false);
}

void JobRegistry::PaceRelays(const std::shared_ptr<Away>& away) {
  away->mosrun.OnDrain([away] {
    away->leaving.PauseReading(false);
    if (!away->output_held) away->peer.PauseReading(false);
  });
  away->peer.OnDrain([away] { away->mosrun.PauseReading(false); });
}

void JobRegistry::SettledBeforeRelease(const std::shared_ptr<Away>& away) {
  // A journal that still said the base is pending once the new node's output reaches
  // mosrun would have a restarted daemon take mosrun's offsets, past some of that output,
  // for its start: it is written settled first.
  if (away->output_held && !away->protocol.OldOutputOwed()) JournalAways();
  MaybeReleaseOutput(away);
}

void JobRegistry::MaybeReleaseOutput(const std::shared_ptr<Away>& away) {
  if (!away->release_output || away->protocol.OldOutputOwed()) return;
  auto release = std::move(away->release_output);
  away->release_output = nullptr;
  away->leaving = ControlStream();  // the old node has said all it had
  release();
}

}  // namespace homeward
