// Error kinds and the mapping from errno.
#include "error.h"

#include <cstring>

namespace homeward {

std::string_view ErrorKindName(ErrorKind kind) {
  switch (kind) {
    case ErrorKind::kFailed: return "failed";
    case ErrorKind::kInvalidInput: return "invalid input";
    case ErrorKind::kNotFound: return "not found";
    case ErrorKind::kDisconnected: return "disconnected";
    case ErrorKind::kOverloaded: return "overloaded";
    case ErrorKind::kUnimplemented: return "unimplemented";
    case ErrorKind::kPermissionDenied: return "permission denied";
  }
  return "unknown";
}

ErrorKind ErrorKindFromName(std::string_view name) {
  for (auto kind : {ErrorKind::kInvalidInput, ErrorKind::kNotFound, ErrorKind::kDisconnected,
                    ErrorKind::kOverloaded, ErrorKind::kUnimplemented,
                    ErrorKind::kPermissionDenied}) {
    if (ErrorKindName(kind) == name) return kind;
  }
  return ErrorKind::kFailed;
}

ErrorKind KindForErrno(int err) {
  switch (err) {
    case ENOENT:
    case ESRCH: return ErrorKind::kNotFound;
    case ECONNREFUSED:
    case ECONNRESET:
    case EPIPE:
    case ENOTCONN:
    case ETIMEDOUT:
    case EHOSTUNREACH: return ErrorKind::kDisconnected;
    case EAGAIN:
    case ENOMEM:
    case ENOSPC:
    case EMFILE:
    case ENFILE: return ErrorKind::kOverloaded;
    case EINVAL: return ErrorKind::kInvalidInput;
    case EPERM:
    case EACCES: return ErrorKind::kPermissionDenied;
    case ENOSYS:
    case EOPNOTSUPP: return ErrorKind::kUnimplemented;
    default: return ErrorKind::kFailed;
  }
}

Error SystemError(int err, std::string_view what) {
  const char* name = strerrorname_np(err);
  return Error(KindForErrno(err),
               fmt::format("{}: {} ({})", what, std::strerror(err), name ? name : "?"), err);
}

}  // namespace homeward
