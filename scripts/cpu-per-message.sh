#!/usr/bin/env bash
# CPU time per delivered message, of a router and of the load generator,
# for a `peerlink bench dm` run against a standalone router: a steadier
# figure than throughput on a shared machine. Linux only (reads /proc).
#
# Usage: scripts/cpu-per-message.sh [PEERLINK_BINARY] [bench dm flags...]
#   e.g. scripts/cpu-per-message.sh target/release/peerlink --duration 5 --window 1
set -euo pipefail
command -v /usr/bin/time >/dev/null || { echo "needs GNU time (Debian package: time)" >&2; exit 1; }
PEERLINK=${1:-target/release/peerlink}
shift || true
PORT=19008
"$PEERLINK" router --listen "127.0.0.1:$PORT" >/dev/null 2>&1 &
ROUTER=$!
trap 'kill $ROUTER 2>/dev/null || true' EXIT
sleep 0.5
TIMES=$(mktemp)
LINE=$( { /usr/bin/time -f "%U %S" -o "$TIMES" "$PEERLINK" bench dm --router "127.0.0.1:$PORT" "$@"; } | tail -n 1)
read -r ROUTER_USER ROUTER_SYS <<<"$(awk '{ print $14, $15 }' "/proc/$ROUTER/stat")"
read -r BENCH_USER BENCH_SYS <<<"$(cat "$TIMES")"
rm -f "$TIMES"
TICKS=$(getconf CLK_TCK)
DELIVERIES=$(tr ' ' '\n' <<<"$LINE" | grep '^deliveries=' | cut -d= -f2)
RATE=$(tr ' ' '\n' <<<"$LINE" | grep '^deliveries_per_s=' | cut -d= -f2)
awk -v d="$DELIVERIES" -v r="$RATE" -v ru="$ROUTER_USER" -v rs="$ROUTER_SYS" -v t="$TICKS" \
    -v bu="$BENCH_USER" -v bs="$BENCH_SYS" 'BEGIN {
    printf "deliveries_per_s=%s router_us_per_msg=%.1f router_user_us=%.1f router_sys_us=%.1f bench_us_per_msg=%.1f\n",
        r, (ru + rs) / t * 1e6 / d, ru / t * 1e6 / d, rs / t * 1e6 / d, (bu + bs) * 1e6 / d
}'
