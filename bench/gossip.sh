#!/usr/bin/env bash
# The gossip simulator: the real membership code for 1,000 to 100,000 virtual nodes
# with a lossy virtual network (bench/run gossip [ARGS...]).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BUILD=${HOMEWARD_BUILD:-$ROOT/build}
[[ -d $BUILD ]] || meson setup "$BUILD" "$ROOT" >/dev/null
meson compile -C "$BUILD" bench/gossip_sim >/dev/null
exec "$BUILD/bench/gossip_sim" "$@"
