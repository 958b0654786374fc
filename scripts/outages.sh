#!/usr/bin/env bash
# Client-visible outage for each single fault of the primary, measured with
# real processes: the replica manager, three routers and the clients each run
# in their own network namespace on one bridge, so that a partition or a
# downed link is a real one. Needs root (ip netns, ip link).
#
#   scripts/outages.sh [RUNS]     # default 3 runs of each fault
#
# A sender sends one message every 20 ms to a receiver; the outage of a run is
# the longest gap between two consecutive Sent reports, from the fault on.
# Faults, each struck 3 s into the run at the primary:
#   kill       SIGKILL
#   pause      SIGSTOP for 4 s, then SIGCONT
#   cut-rm     the primary cannot reach the replica manager for 4 s
#   link-down  the primary's network link is down for 4 s
# Prints one line per run and the median per fault.
set -euo pipefail
cd "$(dirname "$0")/.."

RUNS=${1:-3}
BIN=target/release/peerlink
NET=10.77.0
RM_ADDR=$NET.1:7000
WORK=$(mktemp -d /tmp/peerlink-outages.XXXXXX)
NAMES=(rm r1 r2 r3 cl)
declare -A IP=([rm]=1 [r1]=11 [r2]=12 [r3]=13 [cl]=21)

cargo build --release -q -p peerlink-runtime

teardown() {
    pkill -f "$WORK" 2>/dev/null || true
    pkill -KILL -f "peerlink (rm|router|client) .*$NET" 2>/dev/null || true
    local ns
    for ns in "${NAMES[@]}"; do ip netns del "pl-$ns" 2>/dev/null || true; done
    ip link del plbr0 2>/dev/null || true
}
# KEEP=1 keeps every process's output in $WORK for a look afterwards.
trap 'teardown; [ "${KEEP:-0}" = 1 ] && echo "logs in $WORK" || rm -rf "$WORK"' EXIT

network() {
    teardown
    ip link add plbr0 type bridge
    ip addr add $NET.254/24 dev plbr0
    ip link set plbr0 up
    local ns
    for ns in "${NAMES[@]}"; do
        ip netns add "pl-$ns"
        ip link add "pl-$ns-h" type veth peer name eth0 netns "pl-$ns"
        ip link set "pl-$ns-h" master plbr0 up
        ip netns exec "pl-$ns" ip addr add "$NET.${IP[$ns]}/24" dev eth0
        ip netns exec "pl-$ns" ip link set eth0 up
        ip netns exec "pl-$ns" ip link set lo up
    done
}

in_ns() { local ns=$1; shift; ip netns exec "pl-$ns" "$@"; }

# Prefixes every line read with the time in milliseconds.
stamp() { while IFS= read -r line; do echo "$(date +%s%3N) $line"; done; }

primary() {
    "$BIN" status --rm "$RM_ADDR" --json |
        python3 -c 'import json,sys; p=json.load(sys.stdin)["config"]["primary"]; print(p["id"] if p else "")'
}

run() {
    local fault=$1 n=$2 dir="$WORK/$1-$2"
    mkdir -p "$dir"
    network
    in_ns rm "$BIN" rm --listen "$RM_ADDR" --data-dir "$dir/rm" >"$dir/rm.log" 2>&1 &
    local -A PID=()
    for r in r1 r2 r3; do
        # `ip netns exec` execs the router, so $! is the router's own PID.
        ip netns exec "pl-$r" "$BIN" router --id "$r" --listen "$NET.${IP[$r]}:7001" --rm "$RM_ADDR" \
            >"$dir/$r.log" 2>&1 &
        PID[$r]=$!
    done
    local routers=$NET.11:7001,$NET.12:7001,$NET.13:7001
    for _ in $(seq 100); do
        [ "$("$BIN" status --rm "$RM_ADDR" --json 2>/dev/null | grep -o '"backups":\[[^]]*\]' | grep -o '"id"' | wc -l)" = 2 ] && break
        sleep 0.1
    done
    export PEERLINK_DATA_DIR="$dir/clients"
    (echo REGISTER; sleep 30) | in_ns cl "$BIN" client --id bob --router "$routers" >"$dir/bob.log" 2>&1 &
    sleep 0.5
    (echo REGISTER; sleep 0.5
     for i in $(seq 450); do echo "SEND_MSG bob m$i"; sleep 0.02; done; sleep 2) |
        in_ns cl "$BIN" client --id alice --router "$routers" 2>&1 | stamp >"$dir/alice.log" &
    sleep 3.5
    local p
    p=$(primary)
    local start
    start=$(date +%s%3N)
    case $fault in
        kill) kill -KILL "${PID[$p]}" ;;
        pause) kill -STOP "${PID[$p]}"; sleep 4; kill -CONT "${PID[$p]}" ;;
        cut-rm) in_ns "$p" ip route add blackhole "$NET.1/32"; sleep 4; in_ns "$p" ip route del blackhole "$NET.1/32" ;;
        link-down) in_ns "$p" ip link set eth0 down; sleep 4; in_ns "$p" ip link set eth0 up
            in_ns "$p" ip route add "$NET.0/24" dev eth0 2>/dev/null || true ;;
    esac
    sleep 8
    local gap
    gap=$(awk -v start="$start" '$2 == "sent" && $1 >= start - 100 {
              if (last && $1 - last > max) max = $1 - last; last = $1 }
              END { print max + 0 }' "$dir/alice.log")
    local sent
    sent=$(grep -c ' sent ' "$dir/alice.log" || true)
    echo "$fault run $n: primary $p, longest gap between Sent reports ${gap} ms, $sent of 450 Sent"
    echo "$fault $gap" >>"$WORK/gaps"
    pkill -KILL -f "$NET" 2>/dev/null || true
    kill -CONT "${PID[$p]}" 2>/dev/null || true
    wait 2>/dev/null || true
}

FAULTS=${FAULTS:-kill pause cut-rm link-down}
for fault in $FAULTS; do
    for n in $(seq "$RUNS"); do run "$fault" "$n"; done
done
echo "median outage per fault ($RUNS runs, $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)):"
for fault in $FAULTS; do
    grep "^$fault " "$WORK/gaps" | awk '{print $2}' | sort -n |
        awk -v f="$fault" '{ v[NR] = $1 } END { printf "  %-10s %d ms\n", f, v[int((NR + 1) / 2)] }'
done
