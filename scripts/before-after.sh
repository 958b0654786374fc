#!/usr/bin/env bash
# Compares `peerlink bench dm` at an earlier commit with the working tree,
# on the same machine in one sitting: builds REV in a worktree under
# target/, then runs each configuration with the old and the new binary in
# turn, RUNS times (default 3), and prints the medians side by side.
#
# Usage: scripts/before-after.sh REV [RUNS]      (about 8 minutes with 3 runs)
set -euo pipefail
cd "$(dirname "$0")/.."
REV=${1:?usage: scripts/before-after.sh REV [RUNS]}
RUNS=${2:-3}
TREE=target/before-$REV
[ -d "$TREE" ] || git worktree add --detach "$TREE" "$REV" >/dev/null
(cd "$TREE" && cargo build --release -q -p peerlink-runtime)
cargo build --release -q -p peerlink-runtime
BEFORE=$TREE/target/release/peerlink
AFTER=target/release/peerlink
LOG=$(mktemp)
trap 'rm -f "$LOG"' EXIT

CONFIGS=(
    "dm-standalone|dm"
    "dm-1-backup|dm --spawn replicated --backups 1"
    "dm-2-backups|dm --spawn replicated --backups 2"
    "w1-standalone|dm --window 1"
    "w1-1-backup|dm --window 1 --spawn replicated --backups 1"
    "w1-2-backups|dm --window 1 --spawn replicated --backups 2"
)
for i in $(seq "$RUNS"); do
    for config in "${CONFIGS[@]}"; do
        name=${config%%|*}
        # shellcheck disable=SC2086
        echo "before-$name $("$BEFORE" bench ${config#*|} | tail -n 1)" | tee -a "$LOG"
        # shellcheck disable=SC2086
        echo "after-$name $("$AFTER" bench ${config#*|} | tail -n 1)" | tee -a "$LOG"
    done
done

median() {
    grep "^$1 " "$LOG" | tr ' ' '\n' | grep "^$2=" | cut -d= -f2 | sort -g |
        awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}
echo
echo "medians of $RUNS runs: before = $REV, after = $(git rev-parse --short HEAD)$(git diff --quiet || echo '+changes')"
printf '%-14s %14s %14s %12s %12s %12s %12s\n' configuration before/s after/s before_p50 after_p50 before_rss after_rss
for config in "${CONFIGS[@]}"; do
    name=${config%%|*}
    printf '%-14s %14s %14s %12s %12s %12s %12s\n' "$name" \
        "$(median "before-$name" deliveries_per_s)" "$(median "after-$name" deliveries_per_s)" \
        "$(median "before-$name" sent_p50_ms)" "$(median "after-$name" sent_p50_ms)" \
        "$(median "before-$name" router_peak_rss_mib)" "$(median "after-$name" router_peak_rss_mib)"
done
