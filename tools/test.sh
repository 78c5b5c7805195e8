#!/usr/bin/env bash
# `make test`: builds, runs the unit tests, then the real-broker tests. Unless
# KAFKA_BOOTSTRAP_SERVERS names a cluster, it fetches Apache Kafka from Maven Central on first use
# (into .cache/, ignored by git), starts one KRaft broker on 127.0.0.1 and stops it afterwards.
# It also builds a real Prometheus Alertmanager into .cache/ (tools/alertmanager/alertmanager.sh,
# Go from the machine) for the delivery tests, which start and stop it themselves.
# Beside it, the secure broker (tools/kafka/broker.sh start --secure: SASL_SSL on 127.0.0.1:19192,
# mutual TLS on 19193, ACLs; about 15 s to start) for the security tests, which find its client
# properties files in $KAFKA_SECURE_DIR (set it to use a secure setup of your own instead;
# with KAFKA_BOOTSTRAP_SERVERS and no KAFKA_SECURE_DIR no secure broker is started).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

# Alertmanager, Helm and promcheck (Prometheus' rule parser and metrics linter) are built from the Go module proxy meanwhile (mostly downloads, the
# first time), so their wait overlaps the Rust build; their log: .cache/go-tools.log.
mkdir -p .cache
(tools/alertmanager/alertmanager.sh build && tools/helm/helm.sh build && tools/promcheck/promcheck.sh build) \
  >.cache/go-tools.log 2>&1 &
go_tools=$!

# Likewise Apache Kafka from Maven Central (unless KAFKA_BOOTSTRAP_SERVERS names a cluster) and
# the Python checkers from PyPI: Illumina's interop (collector cross-check), fastavro (Avro
# cross-check), pyarrow and pandas (export cross-check), confluent-kafka with its schema-registry
# and Avro extras (the Confluent framing's independent decoder), PyYAML and kubernetes-validate
# (chart check). Their log: .cache/fetch.log.
venv="$root/.cache/interop-venv"
(
  if [ -z "${KAFKA_BOOTSTRAP_SERVERS:-}" ]; then tools/kafka/broker.sh fetch; fi
  if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c "import interop, fastavro, pyarrow, pandas, yaml, kubernetes_validate, confluent_kafka.schema_registry.avro" 2>/dev/null; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q interop numpy fastavro pyarrow pandas pyyaml kubernetes-validate "confluent-kafka[avro,schemaregistry]==2.16.1"
  fi
) >.cache/fetch.log 2>&1 &
fetches=$!

echo "== [${SECONDS} s] build (debug binaries used by the integration tests)"
cargo build --workspace --bins --tests

echo "== [${SECONDS} s] fuzz, short (make fuzz runs 10 million inputs): each target's corpus, then up to 20,000 mutated"
echo "   inputs or 3 s per target"
# The binary the build above made: `cargo run -p seqmon-fuzz` would unify features for that one
# package and rebuild dependencies (80 s measured).
"${CARGO_TARGET_DIR:-target}/debug/seqmon-fuzz" run --inputs 20000 --max-seconds 3 --json out/fuzz/short.json

echo "== [${SECONDS} s] Kafka and the Python checkers, fetched during the build"
if ! wait "$fetches"; then cat .cache/fetch.log; exit 1; fi
export INTEROP_PYTHON="$venv/bin/python"

. tools/kafka/local.sh
use_local_broker --stop-on-exit
if [ "${LOCAL_BROKER_STARTED:-0}" = 1 ] || [ -n "${KAFKA_SECURE_DIR:-}" ]; then
  echo "== [${SECONDS} s] secure broker (SASL_SSL, mutual TLS, ACLs; certificates and passwords made now)"
  use_local_secure_broker --stop-on-exit
else
  echo "== [${SECONDS} s] no secure broker beside an existing cluster: set KAFKA_SECURE_DIR for the security tests"
fi

echo "== [${SECONDS} s] Prometheus Alertmanager, built from its source as the Go module proxy serves it (first time ~90 s)"
if ! wait "$go_tools"; then cat .cache/go-tools.log; exit 1; fi
tools/alertmanager/alertmanager.sh build

echo "== [${SECONDS} s] Helm, built from its source on the Go module proxy (first time ~95 s): the chart lints, renders, every"
echo "   manifest validates against the Kubernetes schema, every pod meets Pod Security \"restricted\", the"
echo "   alert rules parse (tools/helm/check_chart.py, promcheck), for several value sets"
helm=$(tools/helm/helm.sh path | tail -1)
PROMCHECK=$(tools/promcheck/promcheck.sh path | tail -1)
export PROMCHECK
"$helm" lint --strict helm/seqmon
required=(--set privacy.pseudonymKeySecret=k --set encryption.keysSecret=k --set encryption.activeKey=a
  --set 'networkPolicy.kafkaPeers[0].podSelector.matchLabels.app=kafka')
everything=(--set ingestGateway.enabled=true --set ingestGateway.tlsSecret=t --set ingestGateway.clientCaSecret=c
  --set alertDispatcher.enabled=true --set 'alertDispatcher.alertmanagerUrls[0]=http://alertmanager:9093'
  --set alertDispatcher.webhooksSecret=w --set alertDispatcher.inventoryConfigMap=i)
tls=(--set kafka.auth=tls --set kafka.securityProtocol=ssl --set kafka.caSecret=ca --set encryption.enabled=false
  --set networkPolicy.enabled=false)
monitoring=(--set monitoring.serviceMonitor.enabled=true --set monitoring.prometheusRule.enabled=true
  --set monitoring.dashboards.enabled=true --set keda.enabled=true)
for set in "required" "required everything" "required tls" "required everything tls" \
  "required everything monitoring" "required everything tls monitoring"; do
  args=()
  for name in $set; do eval "args+=(\"\${$name[@]}\")"; done
  "$helm" template seqmon helm/seqmon "${args[@]}" | "$venv/bin/python" tools/helm/check_chart.py
done
# values.schema.json: a typo or a wrong type fails at template time, not in the cluster.
for typo in "kafka.securityProtocl=sasl-ssl" "resource.limits.memory=1Gi" "metricsPort=abc" \
  "stages.validatr.replicas=1" "monitoring.serviceMonitor.enable=true" "keda.maxReplicas=3"; do
  if "$helm" template seqmon helm/seqmon "${required[@]}" --set "$typo" >/dev/null 2>&1; then
    echo "values.schema.json accepted --set $typo"; exit 1
  fi
done
# KEDA must never scale a stage past its input's partitions (the extra pods would idle).
if "$helm" template seqmon helm/seqmon "${required[@]}" --set keda.enabled=true --set keda.maxReplicaCount=13 >/dev/null 2>&1; then
  echo "the chart accepted keda.maxReplicaCount above topics.partitions"; exit 1
fi

echo "== [${SECONDS} s] tests (unit, embedded pipeline, then real-broker integration)"
# The chaos test (tests/tests/chaos.rs, trimmed here; make chaos runs it in full) kills and restarts
# a broker, so it starts one of its own on 127.0.0.1:29092 (CHAOS_KAFKA_PORT) and stops it after.
# Integration tests each use their own topics and groups. tools/run-tests.py runs two test
# binaries at a time (TEST_JOBS), longest first, each with two test threads: most of them wait
# on a broker or a child process, so this halves the wall time on a 2-core machine. Each
# binary's output is printed whole when it ends; the slowest are listed at the end.
python3 tools/run-tests.py -- --test-threads=2
echo "== [${SECONDS} s] detection, trimmed (make evaluate runs the full sweep): one seed, 24 instruments, 2 days"
tools/evaluate.sh --quick
if [ "${LOCAL_BROKER_STARTED:-0}" = 1 ]; then echo "== broker log: .cache/kafka/run-${KAFKA_PORT:-19092}/broker.log"; fi
if [ "${LOCAL_SECURE_BROKER_STARTED:-0}" = 1 ]; then echo "== secure broker log: .cache/kafka/secure-run-${KAFKA_SECURE_PORT:-19192}/broker.log"; fi
echo "== [${SECONDS} s] make test passed"
