#!/usr/bin/env bash
# The home's CPU per metadata request (create, lookup, unlink), in process: the file
# service's session with its change watcher and replay log, fed requests directly, beside
# the bare system calls of a local process, served as root and as an ordinary user
# (bench/file_service_bench.cc). No network and no FUSE: the part of a request's cost that
# is the home's own. The table also goes to bench/results/file_service.md.
#   bench/run file_service [--dir /tmp] [--files 10000]
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BUILD=${HOMEWARD_BUILD:-$ROOT/build}
mkdir -p "$ROOT/bench/results"
{
  echo "# bench/run file_service: $(date -u +%Y-%m-%d), $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"
  echo
  "$BUILD/bench/file_service_bench" "$@"
} | tee "$ROOT/bench/results/file_service.md"
