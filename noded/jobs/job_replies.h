// The messages the job registry builds: a job's exit, a move's outcome (the one Migrated
// reply every kind of move answers with), an error on a relay, a job's identity, and
// relaying a message unchanged. One place, so every answer of one kind reads the same.
#pragma once

#include <capnp/message.h>

#include <memory>
#include <string>

#include "control_server.h"
#include "job.h"
#include "job_registry.h"
#include "migration.h"
#include "move_protocol.h"

namespace homeward {

// Tells a job's mosrun (or home) that the job ended with `code`, saying `why`.
void SendExit(ControlStream& stream, int code, const std::string& why);

// The Migrated reply for a move (or freeze, checkpoint, continue) that went well.
void BuildMigrated(capnp::MallocMessageBuilder& message, const MoveOutcome& outcome);
void FillMigrated(const MoveOutcome& outcome, schema::Migrated::Builder migrated);
// Answers `reply` with the Migrated reply of a dump that went well (a freeze or a
// checkpoint): where the job now is, its frozen time and image size.
void ReplyDumped(ReplySender& reply, const std::string& where, const migrate::DumpResult& dump);
// An error reply of `kind` on a relay, where no ReplySender answers.
void BuildError(capnp::MallocMessageBuilder& message, ErrorKind kind, const std::string& why);

// Answers a control request with how the move it asked for ended.
MoveDone ReplyWhenMoved(ReplySender reply);
// The figures of a move as a node reports them, and as a move out here measured them.
MoveOutcome MigratedFigures(schema::Migrated::Reader migrated);
MoveOutcome OutcomeOf(const MoveOut& move);

void FillIdentity(const JobIdentity& id, schema::JobIdentity::Builder out);
JobIdentity ReadIdentity(schema::JobIdentity::Reader in);

// Forwards one message unchanged from one side of a relay to the other.
template <typename Root>
void Forward(IncomingMessage& incoming, ControlStream& to) {
  capnp::MallocMessageBuilder message;
  message.setRoot(incoming.Root<Root>());
  to.Send(message);
}

}  // namespace homeward
