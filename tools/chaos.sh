#!/usr/bin/env bash
# `make chaos`: the chaos suite (tests/tests/chaos.rs) at full size on its own local broker:
# >= 100,000 raw records with bad ones, 5 SIGKILLs of every stage in open transactions, 2 broker
# kill -9 and restarts, one stage SIGSTOPped past its session timeout, poison on every input
# topic; an oracle compares every output topic with an uninterrupted run. Table on stdout, JSON in
# out/chaos/latest.json (and full.json), logs in target/it-logs/it-chaos-*/.
# The suite kills its broker, so it never uses the shared one (KAFKA_BOOTSTRAP_SERVERS / 19092):
# it runs tools/kafka/broker.sh on 127.0.0.1:$CHAOS_KAFKA_PORT (default 29092), started here
# unless running, and stopped afterwards if started here. Every CHAOS_* setting the suite reads
# can be overridden from the environment (see the header of tests/tests/chaos.rs).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
port=${CHAOS_KAFKA_PORT:-29092}
export CHAOS_KAFKA_PORT=$port
export CHAOS_PROFILE=${CHAOS_PROFILE:-full}
export CHAOS_RECORDS=${CHAOS_RECORDS:-100000}
export CHAOS_INSTRUMENTS=${CHAOS_INSTRUMENTS:-24}
export CHAOS_KILLS_PER_STAGE=${CHAOS_KILLS_PER_STAGE:-5}
export CHAOS_BROKER_RESTARTS=${CHAOS_BROKER_RESTARTS:-2}
export CHAOS_PAUSES=${CHAOS_PAUSES:-1}

echo "== build (debug binaries the suite runs as processes)"
cargo build --workspace --bins --tests

echo "== the suite's own broker on 127.0.0.1:$port (it is killed and restarted by the suite)"
started=0
if ! KAFKA_PORT=$port tools/kafka/broker.sh status; then
  KAFKA_PORT=$port tools/kafka/broker.sh start
  started=1
fi
stop_broker() { if [ "$started" = 1 ]; then KAFKA_PORT=$port tools/kafka/broker.sh stop || true; fi; }
trap stop_broker EXIT

echo "== chaos: $CHAOS_RECORDS records, $CHAOS_KILLS_PER_STAGE kills per stage, $CHAOS_BROKER_RESTARTS broker restarts, $CHAOS_PAUSES pause(s)"
cargo test -p seqmon-integration-tests --test chaos -- --nocapture 2>&1
echo "== broker log: .cache/kafka/run-$port/broker.log; report: out/chaos/latest.json"
