#!/usr/bin/env bash
# A single-node Apache Kafka broker (KRaft, combined broker+controller) on 127.0.0.1 for tests,
# benchmarks and `make run-kafka`. Jars come from Maven Central (tools/kafka/pom.xml) into .cache/.
#
#   tools/kafka/broker.sh fetch    resolve the broker's jars (first use only)
#   tools/kafka/broker.sh start    format a fresh log dir, start, wait until it serves requests
#   tools/kafka/broker.sh stop     stop the broker this script started
#   tools/kafka/broker.sh status   exit 0 when it is running
#
# Settings (environment): KAFKA_VERSION (default below), KAFKA_PORT (19092), KAFKA_CACHE_DIR.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
version=${KAFKA_VERSION:-4.1.1}
port=${KAFKA_PORT:-19092}
controller_port=$((port + 1))
cache=${KAFKA_CACHE_DIR:-$root/.cache/kafka}
libs=$cache/$version/libs
run=$cache/run-$port
pidfile=$run/broker.pid

log() { echo "kafka-broker: $*" >&2; }

fetch() {
  if [ -f "$libs/.complete" ]; then return 0; fi
  command -v java >/dev/null || { log "java (17+) is required"; exit 1; }
  command -v mvn >/dev/null || { log "mvn is required to fetch Kafka from Maven Central"; exit 1; }
  log "fetching Apache Kafka $version from Maven Central into $libs"
  rm -rf "$libs"
  mkdir -p "$libs"
  (cd "$here" && mvn -B -q -Dstyle.color=never -Dkafka.version="$version" dependency:copy-dependencies \
      -DincludeScope=runtime -DoutputDirectory="$libs")
  touch "$libs/.complete"
}

running() { [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; }

start() {
  fetch
  if running; then log "already running (pid $(cat "$pidfile")) on 127.0.0.1:$port"; return 0; fi
  rm -rf "$run"
  mkdir -p "$run/data"
  cat > "$run/server.properties" <<PROPS
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$controller_port
listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$controller_port
advertised.listeners=PLAINTEXT://127.0.0.1:$port
controller.listener.names=CONTROLLER
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
inter.broker.listener.name=PLAINTEXT
log.dirs=$run/data
num.partitions=3
offsets.topic.replication.factor=1
offsets.topic.num.partitions=6
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=6
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=false
log.retention.hours=24
PROPS
  cat > "$run/log4j2.properties" <<PROPS
status = warn
appender.file.type = File
appender.file.name = FILE
appender.file.fileName = $run/broker.log
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = WARN
rootLogger.appenderRef.file.ref = FILE
logger.kafka.name = kafka
logger.kafka.level = INFO
PROPS
  local cluster_id
  cluster_id=$(python3 -c 'import base64,os;print(base64.urlsafe_b64encode(os.urandom(16)).decode().rstrip("="))')
  java -Dlog4j2.configurationFile="$run/log4j2.properties" -cp "$libs/*" kafka.tools.StorageTool \
    format -t "$cluster_id" -c "$run/server.properties" >"$run/format.log" 2>&1 \
    || { log "formatting storage failed:"; cat "$run/format.log" >&2; exit 1; }
  nohup java -Xms256m -Xmx1g -XX:+UseG1GC \
    -Dlog4j2.configurationFile="$run/log4j2.properties" \
    -cp "$libs/*" kafka.Kafka "$run/server.properties" >"$run/stdout.log" 2>&1 &
  echo $! >"$pidfile"
  for _ in $(seq 1 120); do
    if ! running; then log "broker exited during start-up; see $run/stdout.log and $run/broker.log"; tail -20 "$run/stdout.log" >&2; exit 1; fi
    if grep -q "Kafka Server started" "$run/broker.log" "$run/stdout.log" 2>/dev/null \
       || (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      log "running (pid $(cat "$pidfile")) on 127.0.0.1:$port"
      return 0
    fi
    sleep 0.5
  done
  log "broker did not open 127.0.0.1:$port within 60 s"; exit 1
}

stop() {
  if ! running; then rm -f "$pidfile"; return 0; fi
  local pid; pid=$(cat "$pidfile")
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
  kill -9 "$pid" 2>/dev/null || true
  rm -f "$pidfile"
  log "stopped"
}

case "${1:-}" in
  fetch) fetch ;;
  start) start ;;
  stop) stop ;;
  status) running ;;
  *) echo "usage: $0 fetch|start|stop|status" >&2; exit 2 ;;
esac
