// Carries the job's variables (LD_PRELOAD and HOMEWARD_*) into the environment of a
// program the job executes, so that a program that clears or rewrites its environment
// before execve still runs under the shim. Works in a caller-supplied buffer: it runs in
// the SIGSYS handler, where nothing may allocate.
#pragma once

#include <cstddef>

namespace homeward::preload {

// Bytes InjectEnv needs for `envp` (null-terminated; may be null) and the `count`
// "NAME=value" entries in `entries`.
size_t InjectEnvSize(char* const* envp, const char* const* entries, int count);

// Builds in `buffer` an environment equal to `envp` with each entry of `entries` set: an
// existing variable of the same name is replaced, except LD_PRELOAD, whose list keeps the
// program's own libraries after the shim's (`library`, left alone when already listed).
// Returns the new null-terminated array, or nullptr when `size` is too small.
char** InjectEnv(char* const* envp, const char* const* entries, int count, const char* library,
                 void* buffer, size_t size);

}  // namespace homeward::preload
