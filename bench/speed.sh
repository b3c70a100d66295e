#!/usr/bin/env bash
# The CPU speed nodes publish, idle and beside busy cores, in thread CPU time (what the
# daemon publishes) and in wall time (bench/speed_bench.cc); the table also goes to
# bench/results/speed.md.
#   bench/run speed [--trials N] [--busy THREADS]
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BUILD=${HOMEWARD_BUILD:-$ROOT/build}
{
  echo "# bench/run speed: $(date -u +%Y-%m-%d), $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"
  echo
  "$BUILD/bench/speed_bench" "$@"
} | tee "$ROOT/bench/results/speed.md"
