#!/usr/bin/env bash
# Interleaved A/B runs of `peerlink bench`: each round runs every binary
# given once, in order, with the same arguments; prints each run and then
# the median deliveries/s per binary. For small differences that a
# before/after pair cannot tell from this machine's drift.
#
# Usage: scripts/ab.sh RUNS "BENCH ARGS" BINARY...
#   e.g. scripts/ab.sh 4 "dm --duration 6" ./old/peerlink target/release/peerlink
set -euo pipefail
RUNS=${1:?usage: scripts/ab.sh RUNS "BENCH ARGS" BINARY...}
ARGS=${2:?usage: scripts/ab.sh RUNS "BENCH ARGS" BINARY...}
shift 2
[ $# -gt 0 ] || { echo "usage: scripts/ab.sh RUNS \"BENCH ARGS\" BINARY..." >&2; exit 2; }
LOG=$(mktemp)
trap 'rm -f "$LOG"' EXIT
for _ in $(seq "$RUNS"); do
    for bin in "$@"; do
        # shellcheck disable=SC2086
        line=$("$bin" bench $ARGS 2>/dev/null | tail -n 1)
        rate=$(echo "$line" | tr ' ' '\n' | grep '^deliveries_per_s=' | cut -d= -f2)
        lost=$(echo "$line" | tr ' ' '\n' | grep '^lost=' | cut -d= -f2)
        echo "$bin $rate lost=$lost" | tee -a "$LOG"
    done
done
for bin in "$@"; do
    echo "median $bin: $(grep "^$bin " "$LOG" | awk '{print $2}' | sort -g |
        awk '{v[NR]=$1} END {print v[int((NR+1)/2)]}')"
done
