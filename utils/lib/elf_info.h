// What kind of executable a file is, for mosrun to refuse what the job shim cannot enter:
// a statically linked program never loads libmosix_preload.so, so it would see the
// local node's ids (and die on the shim's inherited seccomp trap) away from home.
#pragma once

#include <string>

namespace homeward {

enum class ExecutableKind {
  kDynamic,  // An ELF program with an interpreter (PT_INTERP): the shim can be preloaded.
  kStatic,   // An ELF program without one: LD_PRELOAD does nothing to it.
  kScript,   // "#!": what runs is the interpreter named on the first line.
};

struct ExecutableInfo {
  ExecutableKind kind;
  // The ELF interpreter (e.g. /lib64/ld-linux-x86-64.so.2) or the script's interpreter
  // path; empty for a static program.
  std::string interpreter;
};

// Reads the start of `path`. Throws Error: kNotFound/kFailed from open, kInvalidInput when
// the file is neither an ELF executable nor a script (the message names the file).
ExecutableInfo ReadExecutableInfo(const std::string& path);

}  // namespace homeward
