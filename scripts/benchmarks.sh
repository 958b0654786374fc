#!/usr/bin/env bash
# Produces every figure in docs/benchmarks.md: runs each configuration
# RUNS times (default 3) with `peerlink bench` and the core micro-benchmark,
# prints every run's key=value line, then the median of each figure.
#
# Usage: scripts/benchmarks.sh [RUNS]     (about 10 minutes with 3 runs)
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-3}
cargo build --release -q -p peerlink-runtime
PEERLINK=target/release/peerlink
LOG=$(mktemp)
trap 'rm -f "$LOG"' EXIT

run() {
    local name=$1
    shift
    for i in $(seq "$RUNS"); do
        local line
        line=$("$PEERLINK" bench "$@" | tail -n 1)
        echo "$name $line" | tee -a "$LOG"
    done
}

run dm-standalone dm
run dm-1-backup dm --spawn replicated --backups 1
run dm-2-backups dm --spawn replicated --backups 2
run w1-standalone dm --window 1
run w1-1-backup dm --window 1 --spawn replicated --backups 1
run w1-2-backups dm --window 1 --spawn replicated --backups 2
run group-standalone group
run drain-standalone drain
run failover-2-backups failover --spawn replicated --backups 2
for i in $(seq "$RUNS"); do
    line=$(cargo bench -q -p peerlink-core --bench route | tail -n 1)
    echo "core $line" | tee -a "$LOG"
done

# The median of key $2 over the runs of configuration $1.
median() {
    grep "^$1 " "$LOG" | tr ' ' '\n' | grep "^$2=" | cut -d= -f2 | sort -g |
        awk '{ v[NR] = $1 } END { if (NR == 0) print "-"; else if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

echo
echo "medians of $RUNS runs"
printf '%-18s %12s %9s %9s %9s %9s %10s %5s %5s %9s\n' configuration deliveries/s sent_p50 sent_p99 deliv_p50 deliv_p99 deliv_p999 lost dup rss_mib
for name in dm-standalone dm-1-backup dm-2-backups w1-standalone w1-1-backup w1-2-backups group-standalone drain-standalone failover-2-backups; do
    printf '%-18s %12s %9s %9s %9s %9s %10s %5s %5s %9s\n' "$name" \
        "$(median "$name" deliveries_per_s)" "$(median "$name" sent_p50_ms)" "$(median "$name" sent_p99_ms)" \
        "$(median "$name" delivered_p50_ms)" "$(median "$name" delivered_p99_ms)" "$(median "$name" delivered_p999_ms)" \
        "$(median "$name" lost)" "$(median "$name" duplicated)" "$(median "$name" router_peak_rss_mib)"
done
echo "failover: first Sent after the kill $(median failover-2-backups failover_first_sent_ms) ms"
echo "drain: $(median drain-standalone drain_messages) messages in $(median drain-standalone drain_s) s"
echo "core: $(median core core_router_msgs_per_s) messages/s router only, $(median core core_router_codec_msgs_per_s) with the JSON codec"
