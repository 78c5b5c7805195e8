#!/usr/bin/env bash
# A single-node Apache Kafka broker (KRaft, combined broker+controller) on 127.0.0.1 for tests,
# benchmarks and `make run-kafka`. Jars come from Maven Central (tools/kafka/pom.xml) into .cache/.
#
#   tools/kafka/broker.sh fetch    resolve the broker's jars (first use, and whenever pom.xml changes)
#   tools/kafka/broker.sh start    format a fresh log dir, start, wait until it serves requests
#   tools/kafka/broker.sh stop     stop the broker this script started
#   tools/kafka/broker.sh status   exit 0 when it is running
#   tools/kafka/broker.sh kill     SIGKILL the broker (a crash), keeping its log dir
#   tools/kafka/broker.sh restart  start it again on the log dir it had (no format: its topics,
#                                  offsets and open transactions are recovered, as after a crash)
#
# With --secure (start|stop|status --secure) the same commands drive a SECOND broker beside the
# plaintext one, which enforces what the plaintext one cannot: TLS, SASL and ACLs.
#   SASL_SSL   127.0.0.1:19192 (KAFKA_SECURE_PORT)      SCRAM-SHA-512, one user per principal
#   SSL        127.0.0.1:19193 (KAFKA_SECURE_PORT + 1)  mutual TLS: CN=<principal> is User:<principal>
#   CONTROLLER 127.0.0.1:19194 (KAFKA_SECURE_PORT + 2)  SSL with the broker's own certificate
#                                                       (client certificate required); clients do
#                                                       not use it
# Inter-broker traffic (in one node: transaction markers the broker sends itself) runs on the
# SASL_SSL listener as User:admin. The StandardAuthorizer refuses whatever no ACL allows
# (allow.everyone.if.no.acl.found=false); super users are User:admin and User:broker (the
# broker's own certificate, used on the controller listener), nobody else. (A PLAINTEXT
# controller listener would have to make User:ANONYMOUS a super user: anyone reaching the port
# could then change the cluster, so the controller listener uses mutual TLS.)
# Every start makes everything anew, nothing of it is kept in the repository: a CA, the broker's
# certificate (SAN 127.0.0.1, localhost), one client certificate per principal, random SCRAM
# passwords (added when the storage is formatted), the catalogue's topics (no prefix, 3
# partitions) and the ACLs of `seqmon-admin acls`, applied with Kafka's AclCommand. It writes to
# $KAFKA_SECURE_DIR (default .cache/kafka/secure/), files holding secrets with mode 600:
#   <principal>.properties        librdkafka config: SASL_SSL, SCRAM-SHA-512, user, password, CA
#   <principal>-mtls.properties   librdkafka config: SSL with the principal's client certificate
#   admin-java.properties         Java client config (AclCommand, kafka-*.sh --command-config)
#   acl-command                   AclCommand as admin, for `seqmon-admin acls --apply <it>`
#   ca.pem, wrong-ca.pem          the CA, and an unrelated CA for negative tests
#   collector-wrong-ca.properties, collector-expired-mtls.properties,
#   collector-untrusted-mtls.properties   must fail: wrong CA, expired / foreign client certificate
#   tls/                          certificates and keys
# Principals: admin and the names `seqmon-admin acls` lists (crates/model/src/acl.rs).
#
#   tools/kafka/broker.sh secure-topics PREFIX   create the catalogue's topics with PREFIX on the
#                                                secure broker and apply their ACLs (for tests
#                                                with their own prefix; about 4 s)
#
# Start-up takes about 15 s: certificates 1-3 s, formatting 2 s, the broker 5 s, topics and ACLs
# 4-5 s. seqmon-admin's ACL batches are replayed in one JVM (tools/kafka/AclBatch.java); one
# AclCommand JVM per batch, which `seqmon-admin acls --apply acl-command` alone does, takes ~75 s.
#
# The secure mode needs the workspace's seqmon-admin (SEQMON_ADMIN, default target/debug/; build
# it first with `cargo build --bins`), openssl and javac (JDK 17+).
#
# Settings (environment): KAFKA_VERSION (default below), KAFKA_PORT (19092), KAFKA_CACHE_DIR,
# KAFKA_SECURE_PORT (19192), KAFKA_SECURE_DIR, SEQMON_ADMIN.
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
  local stamp
  stamp=$(cksum <"$here/pom.xml")
  if [ -f "$libs/.complete" ] && [ "$(cat "$libs/.complete")" = "$stamp" ]; then return 0; fi
  command -v java >/dev/null || { log "java (17+) is required"; exit 1; }
  command -v mvn >/dev/null || { log "mvn is required to fetch Kafka from Maven Central"; exit 1; }
  log "fetching Apache Kafka $version from Maven Central into $libs"
  # Into a new directory, then swapped in: a broker already running from $libs keeps its jars.
  rm -rf "$libs.new"
  mkdir -p "$libs.new"
  (cd "$here" && mvn -B -q -Dstyle.color=never -Dkafka.version="$version" dependency:copy-dependencies \
      -DincludeScope=runtime -DoutputDirectory="$libs.new")
  echo "$stamp" >"$libs.new/.complete"
  rm -rf "$libs.old"
  if [ -d "$libs" ]; then mv "$libs" "$libs.old"; fi
  mv "$libs.new" "$libs"
  rm -rf "$libs.old"
}

running() { local f=${1:-$pidfile}; [ -f "$f" ] && kill -0 "$(cat "$f")" 2>/dev/null; }

# Settings both local brokers share: one node, so every internal topic has one replica.
single_node_props() {
  cat <<PROPS
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
}

broker_log4j() { # run-dir: the broker logs to <run-dir>/broker.log
  cat >"$1/log4j2.properties" <<PROPS
status = warn
appender.file.type = File
appender.file.name = FILE
appender.file.fileName = $1/broker.log
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = WARN
rootLogger.appenderRef.file.ref = FILE
logger.kafka.name = kafka
logger.kafka.level = INFO
PROPS
}

format_storage() { # run-dir [extra StorageTool arguments...]
  local dir=$1 cluster_id
  shift
  # Base64url may start with '-', which an argument parser reads as an option: hence --cluster-id=.
  cluster_id=$(python3 -c 'import base64,os;print(base64.urlsafe_b64encode(os.urandom(16)).decode().rstrip("="))')
  java -Dlog4j2.configurationFile="$dir/log4j2.properties" -cp "$libs/*" kafka.tools.StorageTool \
    format --cluster-id="$cluster_id" -c "$dir/server.properties" "$@" >"$dir/format.log" 2>&1 \
    || { log "formatting storage failed:"; cat "$dir/format.log" >&2; exit 1; }
}

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
$(single_node_props)
PROPS
  broker_log4j "$run"
  format_storage "$run"
  launch
}

# Starts the JVM on $run as it is and waits until the port answers.
launch() {
  # Only what this start logs counts (a restart appends to the same files).
  local seen
  seen=$(cat "$run/broker.log" "$run/stdout.log" 2>/dev/null | grep -c "Kafka Server started" || true)
  nohup java -Xms256m -Xmx1g -XX:+UseG1GC \
    -Dlog4j2.configurationFile="$run/log4j2.properties" \
    -cp "$libs/*" kafka.Kafka "$run/server.properties" >>"$run/stdout.log" 2>&1 &
  echo $! >"$pidfile"
  for _ in $(seq 1 120); do
    if ! running; then log "broker exited during start-up; see $run/stdout.log and $run/broker.log"; tail -20 "$run/stdout.log" >&2; exit 1; fi
    if [ "$(cat "$run/broker.log" "$run/stdout.log" 2>/dev/null | grep -c "Kafka Server started" || true)" -gt "$seen" ] \
       || (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      log "running (pid $(cat "$pidfile")) on 127.0.0.1:$port"
      return 0
    fi
    sleep 0.5
  done
  log "broker did not open 127.0.0.1:$port within 60 s"; exit 1
}

# kill -9: a crash. The log dir stays for `restart`.
crash() {
  if ! running; then log "not running on 127.0.0.1:$port"; exit 1; fi
  local pid; pid=$(cat "$pidfile")
  kill -9 "$pid"
  for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  if kill -0 "$pid" 2>/dev/null; then log "pid $pid survived SIGKILL"; exit 1; fi
  rm -f "$pidfile"
  log "killed (SIGKILL, pid $pid); log dir kept in $run"
}

# Starts the broker again on the log dir a kill (or stop) left, without formatting it.
restart() {
  if running; then log "already running (pid $(cat "$pidfile")) on 127.0.0.1:$port"; return 0; fi
  if [ ! -f "$run/server.properties" ] || [ ! -f "$run/data/meta.properties" ]; then
    log "no formatted log dir in $run to restart from (use start)"; exit 1
  fi
  launch
}

stop() {
  local f=${1:-$pidfile}
  if ! running "$f"; then rm -f "$f"; return 0; fi
  local pid; pid=$(cat "$f")
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
  kill -9 "$pid" 2>/dev/null || true
  rm -f "$f"
  log "stopped${2:+ $2}"
}

# ---- the secure broker (--secure) ----------------------------------------------------------

secure_port=${KAFKA_SECURE_PORT:-19192}
mtls_port=$((secure_port + 1))
secure_controller_port=$((secure_port + 2))
secure_run=$cache/secure-run-$secure_port
secure_pidfile=$secure_run/broker.pid
secure_dir=${KAFKA_SECURE_DIR:-$cache/secure}
case "$secure_dir" in /*) ;; *) secure_dir=$root/$secure_dir ;; esac
tls=$secure_dir/tls
seqmon_admin=${SEQMON_ADMIN:-$root/target/debug/seqmon-admin}

# Java's logging for the tools run here (AclCommand): warnings only, on stderr.
tools_log4j() {
  cat > "$secure_run/tools-log4j2.properties" <<PROPS
status = warn
appender.err.type = Console
appender.err.name = ERR
appender.err.target = SYSTEM_ERR
appender.err.layout.type = PatternLayout
appender.err.layout.pattern = %p %m (%c)%n
rootLogger.level = WARN
rootLogger.appenderRef.err.ref = ERR
PROPS
}

# A CA, the broker's certificate, one client certificate per principal, and the material the
# negative tests need. EC P-256 keys (PKCS#8 PEM, unencrypted; mode 600), valid 30 days.
make_tls() {
  local principals=("$@") p
  mkdir -p "$tls/issued"
  : >"$tls/index.txt"
  echo 1000 >"$tls/serial"
  cat > "$tls/openssl.cnf" <<CNF
[ req ]
distinguished_name = dn
prompt = no
[ dn ]
[ v3_ca ]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
[ broker ]
basicConstraints = CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth, clientAuth
subjectAltName = IP:127.0.0.1, DNS:localhost
authorityKeyIdentifier = keyid
[ client ]
basicConstraints = CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = clientAuth
authorityKeyIdentifier = keyid
# 'openssl ca' only for the expired certificate: it alone takes a start date in the past.
[ ca ]
default_ca = test_ca
[ test_ca ]
database = $tls/index.txt
new_certs_dir = $tls/issued
serial = $tls/serial
default_md = sha256
policy = any_cn
unique_subject = no
email_in_dn = no
[ any_cn ]
commonName = supplied
CNF
  local cnf=$tls/openssl.cnf
  newkey() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1"; }
  new_ca() { # name subject
    newkey "$tls/$1.key"
    openssl req -config "$cnf" -x509 -new -key "$tls/$1.key" -subj "$2" -days 30 -sha256 \
      -extensions v3_ca -out "$secure_dir/$1.pem"
  }
  sign() { # ca name subject extensions
    newkey "$tls/$2.key"
    openssl req -config "$cnf" -new -key "$tls/$2.key" -subj "$3" -out "$tls/$2.csr"
    openssl x509 -req -in "$tls/$2.csr" -CA "$secure_dir/$1.pem" -CAkey "$tls/$1.key" \
      -set_serial "0x$(openssl rand -hex 12)" -days 30 -sha256 -extfile "$cnf" -extensions "$4" \
      -out "$tls/$2.pem" 2>/dev/null
  }
  new_ca ca "/O=seqmon test/CN=seqmon test CA"
  new_ca wrong-ca "/O=somebody else/CN=unrelated CA"
  sign ca broker "/CN=broker" broker
  # The broker's PEM key store: key, then its certificate chain.
  cat "$tls/broker.key" "$tls/broker.pem" "$secure_dir/ca.pem" >"$tls/broker-keystore.pem"
  for p in "${principals[@]}"; do sign ca "$p" "/CN=$p" client; done
  # Negative tests: CN=collector, but expired (valid for one day in 2020), or from the wrong CA.
  newkey "$tls/collector-expired.key"
  openssl req -config "$cnf" -new -key "$tls/collector-expired.key" -subj "/CN=collector" \
    -out "$tls/collector-expired.csr"
  openssl ca -batch -config "$cnf" -extensions client -notext -cert "$secure_dir/ca.pem" \
    -keyfile "$tls/ca.key" -startdate 20200101000000Z -enddate 20200102000000Z \
    -in "$tls/collector-expired.csr" -out "$tls/collector-expired.pem" 2>/dev/null
  sign wrong-ca collector-untrusted "/CN=collector" client
  rm -f "$tls"/*.csr
  # Checked here, as `set -e` does not apply in a function called with `||`.
  for p in broker "${principals[@]}"; do
    openssl verify -CAfile "$secure_dir/ca.pem" "$tls/$p.pem" >/dev/null || return 1
  done
  for p in collector-expired collector-untrusted; do [ -s "$tls/$p.pem" ] || return 1; done
  chmod 644 "$secure_dir"/*.pem "$tls"/*.pem
  chmod 600 "$tls"/*.key "$tls/broker-keystore.pem"
}

# One librdkafka properties file. Mode 600: most hold a password or name a private key.
props() { # file lines...
  local f=$1; shift
  (umask 077; printf '%s\n' "# written by tools/kafka/broker.sh start --secure; rewritten at every start" "$@" >"$f")
}

sasl_props() { # file user password ca
  props "$1" "bootstrap.servers=127.0.0.1:$secure_port" "security.protocol=SASL_SSL" \
    "sasl.mechanism=SCRAM-SHA-512" "sasl.username=$2" "sasl.password=$3" "ssl.ca.location=$4"
}

mtls_props() { # file certificate key
  props "$1" "bootstrap.servers=127.0.0.1:$mtls_port" "security.protocol=SSL" \
    "ssl.ca.location=$secure_dir/ca.pem" "ssl.certificate.location=$2" "ssl.key.location=$3"
}

need_admin() {
  if [ ! -x "$seqmon_admin" ]; then
    log "$seqmon_admin is missing: build it first (cargo build --workspace --bins) or set SEQMON_ADMIN"
    exit 1
  fi
}

# Topics with PREFIX, then their ACLs. seqmon-admin derives and batches the ACLs; acl-command
# only records the batches here (SEQMON_ACL_BATCH), and AclBatch applies them in one JVM.
secure_topics() {
  local prefix=$1 batch out
  need_admin
  running "$secure_pidfile" || { log "the secure broker is not running (broker.sh start --secure)"; exit 1; }
  out=$(mktemp "$secure_run/topics.XXXXXX")
  if ! "$seqmon_admin" create-topics --properties-file "$secure_dir/admin.properties" \
      --topic-prefix "$prefix" --partitions "${KAFKA_SECURE_PARTITIONS:-3}" >"$out" 2>&1; then
    log "creating topics (prefix '$prefix') failed:"; cat "$out" >&2; rm -f "$out"; return 1
  fi
  batch=$(mktemp "$secure_run/acls.XXXXXX")
  if ! SEQMON_ACL_BATCH=$batch "$seqmon_admin" acls --topic-prefix "$prefix" \
      --apply "$secure_dir/acl-command" >"$out" 2>&1; then
    log "seqmon-admin acls failed:"; cat "$out" >&2; rm -f "$out" "$batch"; return 1
  fi
  if ! java -Dlog4j2.configurationFile="$secure_run/tools-log4j2.properties" \
      -cp "$libs/*:$secure_run/classes" AclBatch "$batch" \
      --bootstrap-server "127.0.0.1:$secure_port" --command-config "$secure_dir/admin-java.properties" \
      >"$out" 2>&1; then
    log "applying ACLs (prefix '$prefix') failed:"; tail -30 "$out" >&2; rm -f "$out" "$batch"; return 1
  fi
  log "topics and $(grep -c . "$batch") ACL batches applied for prefix '$prefix'"
  rm -f "$out" "$batch"
}

secure_start() {
  fetch
  need_admin
  command -v openssl >/dev/null || { log "openssl is required"; exit 1; }
  if running "$secure_pidfile"; then
    log "secure broker already running (pid $(cat "$secure_pidfile")) on 127.0.0.1:$secure_port"; return 0
  fi
  local t0=$SECONDS p
  rm -rf "$secure_run" "$secure_dir"
  mkdir -p "$secure_run/data"
  (umask 077; mkdir -p "$secure_dir" "$tls")
  tools_log4j
  # AclBatch, compiled once per version of its source.
  local classes
  classes=$cache/$version/acl-batch-$(cksum <"$here/AclBatch.java" | cut -d' ' -f1)
  if [ ! -f "$classes/AclBatch.class" ]; then
    command -v javac >/dev/null || { log "javac (JDK 17+) is required"; exit 1; }
    rm -rf "$classes.tmp" && mkdir -p "$classes.tmp"
    javac -nowarn -cp "$libs/*" -d "$classes.tmp" "$here/AclBatch.java" 2>"$secure_run/javac.log" \
      || { log "compiling AclBatch failed:"; cat "$secure_run/javac.log" >&2; exit 1; }
    rm -rf "$classes" && mv "$classes.tmp" "$classes"
  fi
  ln -sfn "$classes" "$secure_run/classes"

  # The principals: admin, and every one the ACLs name.
  local principals=(admin)
  while read -r p _; do principals+=("$p"); done < <("$seqmon_admin" acls | awk '{print $1}' | sort -u)
  make_tls "${principals[@]}" 2>"$secure_run/openssl.log" \
    || { log "making certificates failed:"; cat "$secure_run/openssl.log" >&2; exit 1; }
  local t_tls=$SECONDS

  # Random SCRAM passwords (hex: nothing to quote), added to the metadata when formatting.
  local scram=() pw admin_pw=""
  for p in "${principals[@]}"; do
    pw=$(openssl rand -hex 24)
    [ "$p" = admin ] && admin_pw=$pw
    scram+=(--add-scram "SCRAM-SHA-512=[name=$p,password=$pw]")
    sasl_props "$secure_dir/$p.properties" "$p" "$pw" "$secure_dir/ca.pem"
    mtls_props "$secure_dir/$p-mtls.properties" "$tls/$p.pem" "$tls/$p.key"
  done
  # Negative tests: each must fail to connect.
  local collector_pw
  collector_pw=$(sed -n 's/^sasl.password=//p' "$secure_dir/collector.properties")
  sasl_props "$secure_dir/collector-wrong-ca.properties" collector "$collector_pw" "$secure_dir/wrong-ca.pem"
  mtls_props "$secure_dir/collector-expired-mtls.properties" "$tls/collector-expired.pem" "$tls/collector-expired.key"
  mtls_props "$secure_dir/collector-untrusted-mtls.properties" "$tls/collector-untrusted.pem" "$tls/collector-untrusted.key"
  # Java client config of the admin (AclCommand, kafka-*.sh --command-config).
  props "$secure_dir/admin-java.properties" "bootstrap.servers=127.0.0.1:$secure_port" \
    "security.protocol=SASL_SSL" "sasl.mechanism=SCRAM-SHA-512" \
    "sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required username=\"admin\" password=\"$admin_pw\";" \
    "ssl.truststore.type=PEM" "ssl.truststore.location=$secure_dir/ca.pem"
  # Kafka's ACL command as admin; `seqmon-admin acls --apply <this file>` appends each batch.
  # With SEQMON_ACL_BATCH set it only records the batches there (broker.sh replays them in one JVM).
  (umask 077; cat >"$secure_dir/acl-command" <<SH
#!/bin/sh
# Kafka's AclCommand as User:admin on the secure local broker (written by tools/kafka/broker.sh).
# Usage: seqmon-admin acls --topic-prefix P --apply $secure_dir/acl-command
if [ -n "\${SEQMON_ACL_BATCH:-}" ]; then printf '%s\n' "\$*" >>"\$SEQMON_ACL_BATCH"; exit 0; fi
exec java -Dlog4j2.configurationFile='$secure_run/tools-log4j2.properties' -cp '$libs/*' \\
  org.apache.kafka.tools.AclCommand --bootstrap-server 127.0.0.1:$secure_port \\
  --command-config '$secure_dir/admin-java.properties' "\$@"
SH
  chmod 700 "$secure_dir/acl-command")

  (umask 077; cat > "$secure_run/server.properties" <<PROPS
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$secure_controller_port
# Clients use SASL_SSL (SCRAM) or SSL (mutual TLS); the controller listener is for the node itself.
listeners=SASL_SSL://127.0.0.1:$secure_port,SSL://127.0.0.1:$mtls_port,CONTROLLER://127.0.0.1:$secure_controller_port
advertised.listeners=SASL_SSL://127.0.0.1:$secure_port,SSL://127.0.0.1:$mtls_port
listener.security.protocol.map=SASL_SSL:SASL_SSL,SSL:SSL,CONTROLLER:SSL
controller.listener.names=CONTROLLER
# Inter-broker requests (one node: the transaction markers it sends itself) as User:admin.
inter.broker.listener.name=SASL_SSL
sasl.mechanism.inter.broker.protocol=SCRAM-SHA-512
sasl.enabled.mechanisms=SCRAM-SHA-512
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required username="admin" password="$admin_pw";
# TLS from PEM files made at start. The broker's certificate (CN=broker) is also its client
# certificate on the controller listener, where a client certificate is required.
ssl.keystore.type=PEM
ssl.keystore.location=$tls/broker-keystore.pem
ssl.truststore.type=PEM
ssl.truststore.location=$secure_dir/ca.pem
ssl.endpoint.identification.algorithm=https
listener.name.ssl.ssl.client.auth=required
listener.name.controller.ssl.client.auth=required
# Certificate subject CN=<name> is User:<name>, the same principal as the SCRAM user <name>.
ssl.principal.mapping.rules=RULE:^CN=([A-Za-z0-9._-]+)\$/\$1/,DEFAULT
authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer
allow.everyone.if.no.acl.found=false
# admin: topics, ACLs, inter-broker; broker: the node's own certificate on the controller listener.
super.users=User:admin;User:broker
log.dirs=$secure_run/data
$(single_node_props)
PROPS
  )
  broker_log4j "$secure_run"
  format_storage "$secure_run" "${scram[@]}"
  local t_format=$SECONDS
  nohup java -Xms256m -Xmx768m -XX:+UseG1GC \
    -Dlog4j2.configurationFile="$secure_run/log4j2.properties" \
    -cp "$libs/*" kafka.Kafka "$secure_run/server.properties" >"$secure_run/stdout.log" 2>&1 &
  echo $! >"$secure_pidfile"
  local ok=0
  for _ in $(seq 1 120); do
    if ! running "$secure_pidfile"; then
      log "secure broker exited during start-up; see $secure_run/stdout.log and $secure_run/broker.log"
      tail -20 "$secure_run/stdout.log" >&2; exit 1
    fi
    if grep -q "Kafka Server started" "$secure_run/broker.log" "$secure_run/stdout.log" 2>/dev/null; then ok=1; break; fi
    sleep 0.5
  done
  if [ "$ok" != 1 ]; then
    log "secure broker did not start within 60 s; see $secure_run/broker.log"; stop "$secure_pidfile"; exit 1
  fi
  local t_up=$SECONDS
  secure_topics "" || { stop "$secure_pidfile" "(secure broker)"; exit 1; }
  log "secure start: certificates $((t_tls - t0)) s, format $((t_format - t_tls)) s," \
    "broker up $((t_up - t_format)) s, topics and ACLs $((SECONDS - t_up)) s"
  log "secure broker running (pid $(cat "$secure_pidfile")): SASL_SSL 127.0.0.1:$secure_port," \
    "mutual TLS 127.0.0.1:$mtls_port; client configs in $secure_dir; ready after $((SECONDS - t0)) s"
}

secure=0
for arg in "${@:2}"; do [ "$arg" = --secure ] && secure=1; done
case "${1:-}:$secure" in
  fetch:*) fetch ;;
  start:0) start ;;
  stop:0) stop ;;
  status:0) running ;;
  kill:0) crash ;;
  restart:0) restart ;;
  start:1) secure_start ;;
  stop:1) stop "$secure_pidfile" "(secure broker)" ;;
  status:1) running "$secure_pidfile" ;;
  secure-topics:*)
    [ $# -ge 2 ] || { echo "usage: $0 secure-topics PREFIX" >&2; exit 2; }
    secure_topics "$2" ;;
  *) echo "usage: $0 fetch | start|stop|status [--secure] | kill|restart | secure-topics PREFIX" >&2; exit 2 ;;
esac
