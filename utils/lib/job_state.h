// A job's state, as the control protocol carries it (schema::JobState), and its name as the
// daemon's messages, mosps and `mosps --json` show it.
#pragma once

#include <string_view>

#include "schema/control.capnp.h"

namespace homeward {

using JobState = schema::JobState;

constexpr std::string_view JobStateName(JobState state) {
  switch (state) {
    case JobState::STARTING:
      return "starting";
    case JobState::RUNNING:
      return "running";
    case JobState::MIGRATING:
      return "migrating";
    case JobState::FROZEN:
      return "frozen";
    case JobState::EXITING:
      return "exiting";
  }
  return "unknown";  // a state of a newer daemon
}

}  // namespace homeward
