# Sourced by tools/*.sh: `use_local_broker [--stop-on-exit]` points KAFKA_BOOTSTRAP_SERVERS at the
# local single-node broker (started here unless it runs already), unless the caller set it to an
# existing cluster. With --stop-on-exit the broker this script started stops when the caller exits.
#
# `use_local_secure_broker [--stop-on-exit]` starts the secure broker beside it
# (`broker.sh start --secure`: SASL_SSL, mutual TLS, ACLs) and exports KAFKA_SECURE_DIR, the
# directory of its client properties files, unless the caller set KAFKA_SECURE_DIR already.
# It needs the workspace's seqmon-admin built (target/debug, or SEQMON_ADMIN).
_local_broker_on_exit=()
_local_broker_cleanup() {
  local c
  for c in "${_local_broker_on_exit[@]}"; do eval "$c" || true; done
}

use_local_broker() {
  if [ -n "${KAFKA_BOOTSTRAP_SERVERS:-}" ]; then
    echo "== using the existing cluster at $KAFKA_BOOTSTRAP_SERVERS"
    return 0
  fi
  local tools
  tools=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
  "$tools/broker.sh" start
  export KAFKA_BOOTSTRAP_SERVERS="127.0.0.1:${KAFKA_PORT:-19092}"
  LOCAL_BROKER_STARTED=1
  if [ "${1:-}" = "--stop-on-exit" ]; then
    _local_broker_on_exit+=("\"$tools/broker.sh\" stop")
    trap _local_broker_cleanup EXIT
  fi
}

use_local_secure_broker() {
  if [ -n "${KAFKA_SECURE_DIR:-}" ]; then
    echo "== using the secure broker described in $KAFKA_SECURE_DIR"
    return 0
  fi
  local tools root
  tools=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
  root=$(cd "$tools/../.." && pwd)
  # Only a broker started here is stopped at exit.
  local already=0
  if "$tools/broker.sh" status --secure; then already=1; fi
  "$tools/broker.sh" start --secure
  export KAFKA_SECURE_DIR="${KAFKA_CACHE_DIR:-$root/.cache/kafka}/secure"
  LOCAL_SECURE_BROKER_STARTED=1
  if [ "${1:-}" = "--stop-on-exit" ] && [ "$already" = 0 ]; then
    _local_broker_on_exit+=("\"$tools/broker.sh\" stop --secure")
    trap _local_broker_cleanup EXIT
  fi
}
