#!/usr/bin/env bash
# The broker figures in docs/benchmarks.md: NATS JetStream (file storage)
# and Mosquitto (QoS 1) loaded like `peerlink bench dm` — 64 connections
# from one thread, each keeping 64 messages of 128 bytes waiting for an
# acknowledgement, 10 s — RUNS times each (default 3), medians at the end.
# Needs nats-server and mosquitto (Debian: apt-get install nats-server
# mosquitto); builds compare/ (its own workspace).
#
# Usage: scripts/compare-brokers.sh [RUNS]      (about 2 minutes)
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-3}
for tool in nats-server mosquitto; do
    command -v "$tool" >/dev/null || { echo "compare-brokers: $tool is not installed (apt-get install nats-server mosquitto)" >&2; exit 1; }
done
(cd compare && cargo build --release -q)
COMPARE=compare/target/release/peerlink-compare
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
printf 'listener 11883 127.0.0.1\nallow_anonymous true\npersistence true\npersistence_location %s/\n' "$DIR" >"$DIR/mosquitto.conf"
mosquitto -c "$DIR/mosquitto.conf" >"$DIR/mosquitto.log" 2>&1 &
PIDS+=($!)
sleep 1
echo "nats-server $(nats-server --version | awk '{print $2}'), mosquitto $(mosquitto -h | head -1 | awk '{print $3}')"

for i in $(seq "$RUNS"); do
    echo "nats $("$COMPARE" nats --url 127.0.0.1:14222)" | tee -a "$LOG"
    echo "mqtt $("$COMPARE" mqtt --port 11883)" | tee -a "$LOG"
done

median() {
    grep "^$1 " "$LOG" | tr ' ' '\n' | grep "^$2=" | cut -d= -f2 | sort -g |
        awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}
echo
echo "medians of $RUNS runs"
for broker in nats mqtt; do
    echo "$broker: $(median $broker acked_per_s) acknowledged/s, p50 $(median $broker ack_p50_ms) ms, p99 $(median $broker ack_p99_ms) ms"
done
