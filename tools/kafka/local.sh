# Sourced by tools/*.sh: `use_local_broker [--stop-on-exit]` points KAFKA_BOOTSTRAP_SERVERS at the
# local single-node broker (started here unless it runs already), unless the caller set it to an
# existing cluster. With --stop-on-exit the broker this script started stops when the caller exits.
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
    trap "\"$tools/broker.sh\" stop" EXIT
  fi
}
