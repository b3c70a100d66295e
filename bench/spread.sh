#!/usr/bin/env bash
# Balancing on a real loopback cluster (bench/run spread [JOBS] [ITERATIONS]): two nodes
# with one core each (--cpuset); one CPU-bound job alone on node1 gives the baseline, then
# JOBS (default 4) such jobs start together on node1 and the balancer spreads them. Prints
# the batch's time against the ideal (JOBS x the baseline / 2 cores) and the moves. Root.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BUILD=${HOMEWARD_BUILD:-$ROOT/build}
export HOMEWARD_BUILD=$BUILD
JOBS=${1:-4}
ITERATIONS=${2:-18000000}
[[ -d $BUILD ]] || meson setup "$BUILD" "$ROOT" >/dev/null
meson compile -C "$BUILD" >/dev/null

LC="$ROOT/scripts/loopcluster"
DIR=$(mktemp -d /tmp/homeward-bench-spread.XXXXXX)
trap '"$LC" down "$DIR" >/dev/null; rm -rf "$DIR"' EXIT
"$LC" up --nodes 2 --dir "$DIR" --cpuset >/dev/null
sleep 3  # the nodes' first gossip rounds

JOB="i=0; while [ \$i -lt $ITERATIONS ]; do i=\$((i+1)); done"
"$LC" exec "$DIR" node1 -- sh -c "
  start=\$(date +%s.%N); mosrun sh -c '$JOB'; end=\$(date +%s.%N)
  alone=\$(echo \"\$end - \$start\" | bc)
  start=\$(date +%s.%N)
  for k in \$(seq $JOBS); do mosrun sh -c '$JOB' & done
  wait
  end=\$(date +%s.%N)
  batch=\$(echo \"\$end - \$start\" | bc)
  ideal=\$(echo \"$JOBS * \$alone / 2\" | bc -l)
  printf 'one job alone %.1f s; %d jobs together %.1f s; ideal %.1f s; ratio %.2f\n' \
    \$alone $JOBS \$batch \$ideal \$(echo \"\$batch / \$ideal\" | bc -l)"
echo "moves: $(grep -hc 'balancer: moving' "$DIR"/node*/log | paste -sd+ | bc)"
