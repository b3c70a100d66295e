// The one guard for the C boundary: every place where C code (libuv, libfuse, libc through
// the job shim) calls into ours runs its body through GuardedCall, so that no exception
// crosses a C frame (which has no unwind tables: std::terminate would end the process).
// Header-only, so that the job shim can use it without linking anything of ours.
#pragma once

#include <cerrno>
#include <type_traits>

#if defined(__cpp_exceptions)
#include <exception>
#include <string>
#include <string_view>

#include <kj/exception.h>
#include <spdlog/spdlog.h>

#include "error.h"
#endif

namespace homeward {

#if defined(__cpp_exceptions)

// The errno a failure becomes at a C boundary that answers with one: the system call's
// own errno when it came from one, else the nearest errno for its kind.
inline int ErrnoForError(const Error& error) noexcept {
  if (error.sys_errno() > 0) return error.sys_errno();
  switch (error.kind()) {
    case ErrorKind::kInvalidInput:
      return EINVAL;
    case ErrorKind::kNotFound:
      return ENOENT;
    case ErrorKind::kDisconnected:
      return ENOTCONN;
    case ErrorKind::kOverloaded:
      return EAGAIN;
    case ErrorKind::kUnimplemented:
      return ENOSYS;
    case ErrorKind::kPermissionDenied:
      return EACCES;
    case ErrorKind::kFailed:
      return EIO;
  }
  return EIO;
}

namespace boundary_detail {

// Logs the exception in flight (called only from a catch block) and returns its errno.
inline int Report(std::string_view where) noexcept {
  int err = EIO;
  std::string message;
  try {
    try {
      throw;
    } catch (const Error& e) {
      err = ErrnoForError(e);
      message = e.what();
    } catch (const kj::Exception& e) {
      message = e.getDescription().cStr();
    } catch (const std::exception& e) {
      message = e.what();
    } catch (...) {
      message = "an exception of unknown type";
    }
    spdlog::error("{}: {} (stopped at the C boundary)", where, message);
  } catch (...) {
    // Out of memory while describing it: the caller still gets its errno.
  }
  return err;
}

}  // namespace boundary_detail

// Runs `body`, which C code called (a libuv callback, a FUSE operation), and returns what
// it returns. An exception it throws stops here: it is logged as "<where>: <message>",
// and a body that returns a number (0 or -errno, as C expects) returns -errno instead:
// the Error's errno, or the one its kind maps to (ErrnoForError), or EIO.
template <typename Body>
auto GuardedCall(std::string_view where, Body&& body) noexcept -> decltype(body()) {
  using Result = decltype(body());
  static_assert(std::is_void_v<Result> || std::is_integral_v<Result>,
                "a C boundary answers nothing or a number (-errno on failure)");
  try {
    return body();
  } catch (...) {
    int err = boundary_detail::Report(where);
    if constexpr (!std::is_void_v<Result>) return static_cast<Result>(-err);
  }
}

#else

// Built without exceptions (the job shim, -fno-exceptions): nothing in `body` can throw,
// which the compiler enforces, so the guard only marks the boundary. Errors there are
// already errno values, set by the hook itself.
template <typename Body>
auto GuardedCall(const char*, Body&& body) noexcept -> decltype(body()) {
  return body();
}

#endif

}  // namespace homeward
