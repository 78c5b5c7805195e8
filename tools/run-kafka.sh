#!/usr/bin/env bash
# `make run-kafka`: the stage services as separate processes on the local broker (or
# KAFKA_BOOTSTRAP_SERVERS), fed by the simulator; prints each stage's counters, then stops them.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
cargo build --release -q --workspace --bins
. tools/kafka/local.sh
use_local_broker
prefix="run-$(date +%s)."
bin=target/release
logs=out/run-kafka/${prefix%.}
mkdir -p "$logs"
# The simulator replays six hours of history as fast as it can: raw records keep the times
# they were sent at (a live fleet's raw topic is stamped by the broker).
"$bin/seqmon-admin" create-topics --topic-prefix "$prefix" --partitions 3 --raw-timestamps producer
pids=()
port=9301
# A pseudonym key for this run only (the privacy enforcer refuses to start without one); in
# production it comes from a Secret and only the privacy enforcer holds it.
keyfile="$logs/pseudonym.key"
( umask 077; od -An -tx1 -N32 /dev/urandom | tr -d ' \n' > "$keyfile" )
for stage in validator privacy-enforcer feature-extractor anomaly-detector cohort-analyzer notifier; do
  "$bin/$stage" kafka --topic-prefix "$prefix" --group-id "$prefix$stage" --transactional-id "$prefix$stage-0" \
    --metrics-addr "127.0.0.1:$port" $([ "$stage" = privacy-enforcer ] && echo --pseudonym-key-file "$keyfile") \
    >"$logs/$stage.log" 2>&1 &
  pids+=($!)
  port=$((port + 1))
done
trap 'kill -TERM "${pids[@]}" 2>/dev/null; wait "${pids[@]}" 2>/dev/null || true' EXIT
start=$(( ($(date +%s) - 6 * 3600) * 1000 ))
"$bin/fleet-simulator" --to kafka --topic-prefix "$prefix" --start-time-ms "$start" --speedup "${SPEEDUP:-0}" --ground-truth "$logs/ground-truth.json"
echo "waiting for the pipeline to drain..."
sleep "${DRAIN_SECONDS:-20}"
port=9301
for stage in validator privacy-enforcer feature-extractor anomaly-detector cohort-analyzer notifier; do
  echo "== $stage"
  curl -s "http://127.0.0.1:$port/metrics" | grep -E '_(input|accepted|output|dead_letter)_records_total' | grep -v '^#' | grep -v ' 0$' || true
  port=$((port + 1))
done
echo "logs and ground truth in $logs"
