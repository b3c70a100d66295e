#!/usr/bin/env bash
# The balancing simulator: the daemon's placement and balancing policy on 100 and 1,000
# virtual nodes under a stream of jobs, against random and all-knowing placement
# (bench/run balance [ARGS...]).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BUILD=${HOMEWARD_BUILD:-$ROOT/build}
[[ -d $BUILD ]] || meson setup "$BUILD" "$ROOT" >/dev/null
meson compile -C "$BUILD" bench/balance_sim >/dev/null
exec "$BUILD/bench/balance_sim" "$@"
