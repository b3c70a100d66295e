// What the daemon and mosjob-init agree on about a job's environment. Header only:
// mosjob-init links nothing of the daemon.
#pragma once

namespace homeward {

// The caller's variables travel to the job's init behind this prefix, which neither
// ld.so nor glibc interprets; the init gives them back to the program after it has
// switched to the user's ids.
inline constexpr const char kUserEnvPrefix[] = "HOMEWARD_USER_ENV:";

}  // namespace homeward
