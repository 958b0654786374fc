#!/usr/bin/env bash
# The broker figures in docs/benchmarks.md: NATS JetStream (file storage,
# one server, and a stream replicated on a three-server cluster) and
# Mosquitto (QoS 1) loaded like `peerlink bench dm` — 64 connections
# from one thread, each keeping 64 messages of 128 bytes waiting for an
# acknowledgement, 10 s — and, in turn with them, PeerLink (primary + 1
# backup, fsync on both) with TLS and over plain TCP like the brokers:
# RUNS rounds (default 3), medians and PeerLink's ratios at the end.
# Needs nats-server and mosquitto (Debian: apt-get install nats-server
# mosquitto); builds compare/ (its own workspace).
#
# Usage: scripts/compare-brokers.sh [RUNS]      (about 3 minutes)
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-3}
for tool in nats-server mosquitto; do
    command -v "$tool" >/dev/null || { echo "compare-brokers: $tool is not installed (apt-get install nats-server mosquitto)" >&2; exit 1; }
done
(cd compare && cargo build --release -q)
cargo build --release -q -p peerlink-runtime
COMPARE=compare/target/release/peerlink-compare
PEERLINK=target/release/peerlink
DIR=$(mktemp -d)
LOG=$DIR/runs
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    rm -rf "$DIR"
}
trap cleanup EXIT

nats-server -js -sd "$DIR/nats" -a 127.0.0.1 -p 14222 >"$DIR/nats.log" 2>&1 &
PIDS+=($!)
# A three-server JetStream cluster, for a stream kept on all three (R3): the
# replicated counterpart of PeerLink's primary and backups.
ROUTES=nats://127.0.0.1:16201,nats://127.0.0.1:16202,nats://127.0.0.1:16203
for n in 1 2 3; do
    nats-server -js -sd "$DIR/nats-r3-$n" -a 127.0.0.1 -p "1420$n" -n "n$n" --cluster_name bench \
        --cluster "nats://127.0.0.1:1620$n" --routes "$ROUTES" >"$DIR/nats-r3-$n.log" 2>&1 &
    PIDS+=($!)
done
printf 'listener 11883 127.0.0.1\nallow_anonymous true\npersistence true\npersistence_location %s/\n' "$DIR" >"$DIR/mosquitto.conf"
mosquitto -c "$DIR/mosquitto.conf" >"$DIR/mosquitto.log" 2>&1 &
PIDS+=($!)
sleep 3
echo "nats-server $(nats-server --version | awk '{print $2}'), mosquitto $(mosquitto -h | head -1 | awk '{print $3}')"

for i in $(seq "$RUNS"); do
    echo "nats $("$COMPARE" nats --url 127.0.0.1:14222)" | tee -a "$LOG"
    echo "nats-r3 $("$COMPARE" nats --url 127.0.0.1:14201 --replicas 3)" | tee -a "$LOG"
    echo "mqtt $("$COMPARE" mqtt --port 11883)" | tee -a "$LOG"
    echo "peerlink-tls $("$PEERLINK" bench dm --spawn replicated --backups 1 2>/dev/null | tail -n 1)" | tee -a "$LOG"
    echo "peerlink-plain $("$PEERLINK" bench dm --spawn replicated --backups 1 --insecure 2>/dev/null | tail -n 1)" | tee -a "$LOG"
done

median() {
    grep "^$1 " "$LOG" | tr ' ' '\n' | grep "^$2=" | cut -d= -f2 | sort -g |
        awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}
echo
echo "medians of $RUNS runs"
for broker in nats nats-r3 mqtt; do
    echo "$broker: $(median $broker acked_per_s) acknowledged/s, p50 $(median $broker ack_p50_ms) ms, p99 $(median $broker ack_p99_ms) ms"
done
for pl in peerlink-tls peerlink-plain; do
    echo "$pl: $(median $pl deliveries_per_s) delivered/s, Sent p50 $(median $pl sent_p50_ms) ms, p99 $(median $pl sent_p99_ms) ms"
done
nats=$(median nats acked_per_s)
r3=$(median nats-r3 acked_per_s)
mqtt=$(median mqtt acked_per_s)
for pl in peerlink-tls peerlink-plain; do
    rate=$(median $pl deliveries_per_s)
    awk -v p="$rate" -v n="$nats" -v r="$r3" -v m="$mqtt" -v name="$pl" \
        'BEGIN { printf "%s: %.2fx NATS JetStream (target 3x), %.2fx Mosquitto (target 1x); %.2fx a JetStream R3 cluster\n", name, p / n, p / m, p / r }'
done
