// The control requests' permission table.
#include "control_permissions.h"

#include "error.h"

namespace homeward {

Permission PermissionFor(schema::ControlRequest::Which which) {
  using W = schema::ControlRequest::Which;
  switch (which) {
    case W::STATUS:
      return {Allowed::kAnyone, "ask for the node's status"};
    case W::LIST_NODES:
      return {Allowed::kAnyone, "list the cluster's nodes"};
    case W::START_JOB:
      return {Allowed::kLocal, "start a job (mosrun)"};
    case W::RESTART_JOB:
      return {Allowed::kLocal, "restart a job from its checkpoint (mosrun -R)"};
    case W::RESUME_JOB:
      return {Allowed::kLocal, "take a job back (mosrun)"};
    case W::LIST_JOBS:
      return {Allowed::kLocal, "list jobs (mosps)"};
    case W::MIGRATE_JOB:
      return {Allowed::kJobOwner, "move, freeze or checkpoint a job"};
    case W::START_GUEST:
      return {Allowed::kClusterPeer, "start a guest job"};
    case W::ATTACH_GUEST:
      return {Allowed::kPeer, "attach a guest job"};
    case W::HOME_MOUNT:
      return {Allowed::kLocalRoot, "mount or unmount homes"};
    case W::ADMIN:
      return {Allowed::kLocalRoot, "block, unblock, expel or bring"};
    case W::JOB_INPUT:
    case W::JOB_INPUT_END:
    case W::JOB_INPUT_AT:
    case W::JOB_INPUT_END_AT:
    case W::JOB_SIGNAL:
    case W::JOB_SIGNAL_NUMBERED:
      return {Allowed::kRelayOnly, "send job input and signals"};
  }
  // A request this table does not know is refused rather than let through.
  return {Allowed::kUnknown, "send this request"};
}

void CheckPermission(schema::ControlRequest::Which which, const Caller& caller) {
  Permission permission = PermissionFor(which);
  switch (permission.allowed) {
    case Allowed::kAnyone:
      return;
    case Allowed::kLocal:
    case Allowed::kJobOwner:
      if (!caller.peer) return;
      Fail(ErrorKind::kPermissionDenied, "permission denied: only local users may {}",
           permission.what);
    case Allowed::kLocalRoot:
      if (!caller.peer && caller.uid == 0) return;
      Fail(ErrorKind::kPermissionDenied, "permission denied: only root may {}", permission.what);
    case Allowed::kPeer:
      if (caller.peer) return;
      Fail(ErrorKind::kPermissionDenied, "permission denied: only another node's daemon may {}",
           permission.what);
    case Allowed::kClusterPeer:
      if (caller.peer && caller.peer_cluster.empty()) return;
      if (caller.peer) {
        Fail(ErrorKind::kPermissionDenied,
             "permission denied: a node of partner cluster '{}' may not {}: jobs start in their "
             "own cluster",
             caller.peer_cluster, permission.what);
      }
      Fail(ErrorKind::kPermissionDenied, "permission denied: only another node's daemon may {}",
           permission.what);
    case Allowed::kRelayOnly:
      Fail(ErrorKind::kInvalidInput, "job input and signals belong on a job's relay, after "
                                     "startJob");
    case Allowed::kUnknown:
      Fail(ErrorKind::kUnimplemented, "this daemon does not know control request {}",
           static_cast<int>(which));
  }
}

void CheckJobOwner(const Caller& caller, uid_t owner, pid_t home_pid, std::string_view what) {
  if (!caller.peer && (caller.uid == 0 || caller.uid == owner)) return;
  Fail(ErrorKind::kPermissionDenied,
       "permission denied: job {} belongs to uid {}; only they or root may {}", home_pid, owner,
       what);
}

}  // namespace homeward
