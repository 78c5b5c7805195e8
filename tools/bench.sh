#!/usr/bin/env bash
# `make bench`: release build, the same local broker as `make test` (or KAFKA_BOOTSTRAP_SERVERS),
# then seqmon-bench: one table on stdout, figures as JSON in out/bench/ (latest.json and a
# timestamped copy, so two runs can be compared).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
cargo build --release -q --workspace --bins
. tools/kafka/local.sh
use_local_broker --stop-on-exit
mkdir -p out/bench
stamp=$(date -u +%Y%m%dT%H%M%SZ)
# The local broker's process, so its CPU and memory are reported with the services'.
pidfile="$root/.cache/kafka/run-${KAFKA_PORT:-19092}/broker.pid"
broker=()
if [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
  broker=(--broker-pid "$(cat "$pidfile")")
fi
target/release/seqmon-bench --json "out/bench/$stamp.json" "${broker[@]}" "$@"
cp "out/bench/$stamp.json" out/bench/latest.json
