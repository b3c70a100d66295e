// The one error type of Homeward. Every failure carries a kind the caller can act on
// and a message that names the cause; system call failures also carry errno.
#pragma once

#include <cerrno>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>

#include <fmt/format.h>

namespace homeward {

enum class ErrorKind {
  kFailed,         // Something went wrong; retrying the same thing will not help.
  kInvalidInput,   // The caller's input (a file, a message, an argument) is malformed.
  kNotFound,       // A named thing (node, job, file) does not exist.
  kDisconnected,   // The peer or daemon went away; retrying later may work.
  kOverloaded,     // Temporarily out of a resource; retrying later may work.
  kUnimplemented,  // The request is understood but not supported.
  kPermissionDenied,  // The caller may not do this; another user (root, the owner) may.
};

std::string_view ErrorKindName(ErrorKind kind);
// The kind ErrorKindName names; kFailed for a name it does not know.
ErrorKind ErrorKindFromName(std::string_view name);

class Error : public std::runtime_error {
 public:
  Error(ErrorKind kind, std::string message, int sys_errno = 0)
      : std::runtime_error(std::move(message)), kind_(kind), errno_(sys_errno) {}

  ErrorKind kind() const { return kind_; }
  // The errno of the failed system call, or 0 when the error did not come from one.
  int sys_errno() const { return errno_; }

 private:
  ErrorKind kind_;
  int errno_;
};

// Maps an errno value to the kind a caller would act on.
ErrorKind KindForErrno(int err);

// Builds the error for a failed system call: "<what>: <strerror> (<ERRNAME>)".
Error SystemError(int err, std::string_view what);

template <typename... Args>
[[noreturn]] void Fail(ErrorKind kind, fmt::format_string<Args...> format, Args&&... args) {
  throw Error(kind, fmt::format(format, std::forward<Args>(args)...));
}

// Describes a failed call: the call's own text, or the caller's formatted context.
inline std::string SyscallContext(const char* call_text) { return call_text; }
template <typename... Args>
std::string SyscallContext(const char*, fmt::format_string<Args...> format, Args&&... args) {
  return fmt::format(format, std::forward<Args>(args)...);
}

// Runs a system call, retrying on EINTR, and throws SystemError with the context that
// `describe` builds (only on failure) when it returns -1. Returns the call's result.
template <typename Call, typename Describe>
auto CheckSyscall(Call&& call, Describe&& describe) {
  for (;;) {
    auto result = call();
    if (result != -1) return result;
    if (errno == EINTR) continue;
    int err = errno;
    throw SystemError(err, describe());
  }
}

}  // namespace homeward

// HW_SYSCALL(::open(path, flags), "open {}", path): retries EINTR and throws an Error
// with errno and the formatted context; without a context, the call's text is used.
#define HW_SYSCALL(call, ...)                                     \
  ::homeward::CheckSyscall([&] { return (call); }, [&] {          \
    return ::homeward::SyscallContext(#call __VA_OPT__(, ) __VA_ARGS__); \
  })
