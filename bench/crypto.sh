#!/usr/bin/env bash
# Encrypted peer connections against the same connections in clear, in one run: the
# migration stream and homefs sequential read (bench/crypto_bench.cc), first over
# loopback with everything in memory (the CPU is all there is: the worst case), then
# over a veth link limited to RATE (1 Gbit/s by default, as between two machines), with
# the peer server in a network namespace of its own.
#   bench/run crypto [--mib 1024] [--rounds 3] [--link-rate 1gbit] [--link-mib 512]
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BUILD=${HOMEWARD_BUILD:-$ROOT/build}
MIB=1024 ROUNDS=3 RATE=1gbit LINK_MIB=512
while [[ $# -gt 0 ]]; do
  case $1 in
    --mib) MIB=$2; shift 2 ;;
    --rounds) ROUNDS=$2; shift 2 ;;
    --link-rate) RATE=$2; shift 2 ;;
    --link-mib) LINK_MIB=$2; shift 2 ;;
    *) echo "usage: bench/run crypto [--mib N] [--rounds R] [--link-rate 1gbit] [--link-mib N]" >&2; exit 2 ;;
  esac
done
[[ $(id -u) -eq 0 ]] || { echo "bench crypto: needs root (it mounts homefs)" >&2; exit 1; }
meson compile -C "$BUILD" bench/crypto_bench >/dev/null
"$BUILD/bench/crypto_bench" --mib "$MIB" --rounds "$ROUNDS"
echo

NS=hwcrypto$$ A=hwc$$a B=hwc$$b
cleanup() { ip link del "$A" 2>/dev/null || true; ip netns del "$NS" 2>/dev/null || true; }
trap cleanup EXIT
ip netns add "$NS"
ip link add "$A" type veth peer name "$B" netns "$NS"
ip addr add 10.231.0.1/30 dev "$A"
ip link set "$A" up
ip -n "$NS" addr add 10.231.0.2/30 dev "$B"
ip -n "$NS" link set "$B" up
ip -n "$NS" link set lo up
# The same rate each way: image streams go to the server, homefs reads come from it.
tc qdisc add dev "$A" root tbf rate "$RATE" burst 256kb latency 20ms
ip netns exec "$NS" tc qdisc add dev "$B" root tbf rate "$RATE" burst 256kb latency 20ms
echo "link: veth limited to $RATE each way"
"$BUILD/bench/crypto_bench" --mib "$LINK_MIB" --rounds "$ROUNDS" --server-netns "$NS" --address 10.231.0.2
