// The JSON shapes of what a node knows of its cluster and its jobs: `mosmon --json`,
// `mosps --json`, and the web monitor's API (/api/nodes, /api/jobs) print the same.
#pragma once

#include <nlohmann/json.hpp>

#include "schema/control.capnp.h"

namespace homeward {

// {"nodes": [{name, cluster, address, alive, state, self, blocked, load, homeward_load,
// cpus, speed, mem_free_mb, mem_total_mb, swap_free_mb, swap_total_mb, jobs, guests,
// age_ms, clock_offset_ms (null: not heard), uptime_s (null: unknown), users}, ...] sorted
// by cluster and name,
//  "clusters": {name: {nodes, alive, cpus, load, self?}}}
nlohmann::json NodesJson(schema::NodeList::Reader list);

// {"jobs": [{pid, home, home_cluster, where, where_cluster, state, migrations, cmd, cpu_ms,
// user, guest, pinned, locked, partners}, ...]}
nlohmann::json JobsJson(schema::JobList::Reader list);

// A user's name, or the uid in decimal when it has none.
std::string UserName(uint32_t uid);

}  // namespace homeward
