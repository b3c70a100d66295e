#!/usr/bin/env bash
# Encrypted peer connections against the same connections in clear, in one run: the
# migration stream and homefs sequential read over loopback (bench/crypto_bench.cc).
#   bench/run crypto [--mib 1024] [--rounds 3]
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BUILD=${HOMEWARD_BUILD:-$ROOT/build}
[[ $(id -u) -eq 0 ]] || { echo "bench crypto: needs root (it mounts homefs)" >&2; exit 1; }
meson compile -C "$BUILD" bench/crypto_bench >/dev/null
exec "$BUILD/bench/crypto_bench" "$@"
