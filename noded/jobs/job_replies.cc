// The messages the job registry builds.
#include "job_replies.h"

namespace homeward {

void SendExit(ControlStream& stream, int code, const std::string& why) {
  capnp::MallocMessageBuilder message;
  auto exit = message.initRoot<schema::ControlReply>().initJobExited();
  exit.setCode(code);
  exit.setMessage(why);
  stream.Send(message);
}

void BuildMigrated(capnp::MallocMessageBuilder& message, const MoveOutcome& outcome) {
  FillMigrated(outcome, message.initRoot<schema::ControlReply>().initMigrated());
}

void FillMigrated(const MoveOutcome& outcome, schema::Migrated::Builder migrated) {
  migrated.setWhere(outcome.where);
  migrated.setFrozenMs(outcome.frozen_ms);
  migrated.setTotalMs(outcome.total_ms);
  migrated.setImageBytes(outcome.image_bytes);
}

void ReplyDumped(ReplySender& reply, const std::string& where, const migrate::DumpResult& dump) {
  MoveOutcome outcome;
  outcome.where = where;
  outcome.frozen_ms = static_cast<uint64_t>(dump.frozen_time.count() / 1000);
  outcome.image_bytes = dump.image_bytes;
  capnp::MallocMessageBuilder message;
  BuildMigrated(message, outcome);
  reply.Send(message);
}

void BuildError(capnp::MallocMessageBuilder& message, ErrorKind kind, const std::string& why) {
  auto error = message.initRoot<schema::ControlReply>().initError();
  error.setKind(std::string(ErrorKindName(kind)));
  error.setMessage(why);
}

MoveDone ReplyWhenMoved(ReplySender reply) {
  auto pending = std::make_shared<ReplySender>(std::move(reply));
  return [pending](const MoveOutcome& outcome) {
    if (!outcome.error.empty()) {
      pending->SendError(Error(outcome.kind, outcome.error));
      return;
    }
    capnp::MallocMessageBuilder message;
    BuildMigrated(message, outcome);
    pending->Send(message);
  };
}

MoveOutcome MigratedFigures(schema::Migrated::Reader migrated) {
  MoveOutcome outcome;
  outcome.where = migrated.getWhere();
  outcome.frozen_ms = migrated.getFrozenMs();
  outcome.total_ms = migrated.getTotalMs();
  outcome.image_bytes = migrated.getImageBytes();
  return outcome;
}

MoveOutcome OutcomeOf(const MoveOut& move) {
  MoveOutcome outcome;
  outcome.error = move.error;
  outcome.where = move.target_name;
  outcome.frozen_ms = static_cast<uint64_t>(move.frozen.count());
  outcome.total_ms = static_cast<uint64_t>(move.total.count());
  outcome.image_bytes = move.image_bytes;
  return outcome;
}

void FillIdentity(const JobIdentity& id, schema::JobIdentity::Builder out) {
  out.setUid(id.uid);
  out.setGid(id.gid);
  auto groups = out.initGroups(static_cast<unsigned>(id.groups.size()));
  for (unsigned i = 0; i < id.groups.size(); ++i) groups.set(i, id.groups[i]);
  out.setUmask(id.umask);
  auto limits = out.initLimits(static_cast<unsigned>(id.limits.size()));
  for (unsigned i = 0; i < id.limits.size(); ++i) {
    limits[i].setResource(id.limits[i].resource);
    limits[i].setSoft(id.limits[i].soft);
    limits[i].setHard(id.limits[i].hard);
  }
  out.setHomePid(id.home_pid);
  out.setHomePpid(id.home_ppid);
}

JobIdentity ReadIdentity(schema::JobIdentity::Reader in) {
  JobIdentity id;
  id.uid = in.getUid();
  id.gid = in.getGid();
  for (auto group : in.getGroups()) id.groups.push_back(group);
  id.umask = static_cast<mode_t>(in.getUmask() & 07777);
  for (auto limit : in.getLimits()) {
    id.limits.push_back({limit.getResource(), limit.getSoft(), limit.getHard()});
  }
  id.home_pid = in.getHomePid();
  id.home_ppid = in.getHomePpid();
  return id;
}

}  // namespace homeward
