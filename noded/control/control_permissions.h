// Who may send which control request: one table, checked before any request is
// dispatched, so that no handler is reached by a caller it was not written for.
#pragma once

#include <sys/types.h>

#include <string_view>

#include "control_server.h"
#include "schema/control.capnp.h"

namespace homeward {

// The callers a request is meant for.
enum class Allowed {
  kAnyone,     // any local user, and peers (read-only facts about the node)
  kLocal,      // any local user, never a peer (mosrun, mosps)
  kJobOwner,   // a local user; the handler then checks CheckJobOwner against the job
  kLocalRoot,  // local root only (mounts, block/expel/bring)
  kPeer,       // another node's daemon, of this cluster or a partner's (its key)
  kClusterPeer,  // another node's daemon of this cluster, never a partner cluster's
  kRelayOnly,  // only on a job's relay, never as a request of its own
  kUnknown,    // not in this release's table: refused
};

struct Permission {
  Allowed allowed;
  std::string_view what;  // names the action in a refusal: "mount or unmount homes"
};

// The table's entry for a request.
Permission PermissionFor(schema::ControlRequest::Which which);

// Throws kPermissionDenied ("permission denied: only root may ...") unless `caller` may
// send `which`.
void CheckPermission(schema::ControlRequest::Which which, const Caller& caller);

// For requests about one job (kJobOwner): its owner or root, never a peer.
void CheckJobOwner(const Caller& caller, uid_t owner, pid_t home_pid, std::string_view what);

}  // namespace homeward
