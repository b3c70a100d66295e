// /metrics: a node's figures in Prometheus's text exposition format (version 0.0.4).
// Pure formatting, so that its names and types are unit-tested.
#pragma once

#include <cstdint>
#include <string>

#include "gossip_codec.h"
#include "job_registry.h"
#include "membership.h"

namespace homeward {

struct MetricsFigures {
  std::string node;
  std::string cluster;
  NodeRecord self;  // what this node publishes: load, cores, speed, memory, jobs, guests
  uint64_t nodes_alive = 0;  // this cluster's nodes as this node sees them, itself included
  uint64_t nodes_dead = 0;
  MembershipStats gossip;
  DropCounters drops;
  JobRegistry::MoveCounts moves;
  uint64_t file_requests = 0;  // the file service (homefs's server side)
  uint64_t file_errors = 0;
  uint64_t file_micros = 0;
  double uptime_s = 0;
};

std::string MetricsTextOf(const MetricsFigures& figures);

}  // namespace homeward
