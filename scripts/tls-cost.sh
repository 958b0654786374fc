#!/usr/bin/env bash
# What TLS costs: the same `peerlink bench` configurations with TLS (the
# default) and with --insecure (plain TCP), RUNS times each (default 3),
# interleaved so that drift on the machine hits both alike; prints every
# run's key=value line, then the medians side by side.
#
# Usage: scripts/tls-cost.sh [RUNS]     (about 6 minutes with 3 runs)
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-3}
cargo build --release -q -p peerlink-runtime
PEERLINK=target/release/peerlink
LOG=$(mktemp)
trap 'rm -f "$LOG"' EXIT

CONFIGS=(
    "dm-standalone|dm --duration 5"
    "dm-1-backup|dm --duration 5 --spawn replicated --backups 1"
    "w1-standalone|dm --duration 5 --window 1"
    "w1-1-backup|dm --duration 5 --window 1 --spawn replicated --backups 1"
)
for i in $(seq "$RUNS"); do
    for config in "${CONFIGS[@]}"; do
        name=${config%%|*}
        read -r -a args <<<"${config#*|}"
        for mode in tls insecure; do
            flags=()
            [ "$mode" = insecure ] && flags=(--insecure)
            line=$("$PEERLINK" bench "${args[@]}" "${flags[@]}" 2>/dev/null | tail -n 1)
            echo "$name-$mode $line" | tee -a "$LOG"
        done
    done
done

median() {
    grep "^$1 " "$LOG" | tr ' ' '\n' | grep "^$2=" | cut -d= -f2 | sort -g |
        awk '{ v[NR] = $1 } END { if (NR == 0) print "-"; else if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

echo
echo "medians of $RUNS runs"
printf '%-14s %-8s %12s %9s %9s %9s %9s %5s %9s\n' configuration links deliveries/s sent_p50 sent_p99 deliv_p50 deliv_p99 lost rss_mib
for config in "${CONFIGS[@]}"; do
    name=${config%%|*}
    for mode in insecure tls; do
        printf '%-14s %-8s %12s %9s %9s %9s %9s %5s %9s\n' "$name" "$mode" \
            "$(median "$name-$mode" deliveries_per_s)" "$(median "$name-$mode" sent_p50_ms)" \
            "$(median "$name-$mode" sent_p99_ms)" "$(median "$name-$mode" delivered_p50_ms)" \
            "$(median "$name-$mode" delivered_p99_ms)" "$(median "$name-$mode" lost)" \
            "$(median "$name-$mode" router_peak_rss_mib)"
    done
done
