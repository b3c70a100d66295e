#!/bin/sh
# bench/run fuzz [SECONDS]: runs every fuzz harness for SECONDS each (default 60) and
# prints, per harness, its runs, seconds and crashes (scripts/fuzz).
exec "$(dirname "$0")/../scripts/fuzz" run "${1:-60}"
