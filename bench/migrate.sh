#!/usr/bin/env bash
# Migration: time frozen and total time of a move against the floor of plain criu dump
# and restore, for jobs of several sizes (bench/run migrate [ARGS...]).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BUILD=${HOMEWARD_BUILD:-$ROOT/build}
meson compile -C "$BUILD" bench/migrate_bench >/dev/null
exec "$BUILD/bench/migrate_bench" "$@"
