#!/usr/bin/env bash
# A real Prometheus Alertmanager on 127.0.0.1 for tests, built from its source as the Go module
# proxy serves it (github.com/prometheus/alertmanager@VERSION; see build()) into .cache/.
#
#   tools/alertmanager/alertmanager.sh build               build the binary unless it is there and runs
#   tools/alertmanager/alertmanager.sh start [--port N]    (build,) start, wait until /-/ready says 200
#   tools/alertmanager/alertmanager.sh stop [--port N]     stop the instance this script started
#   tools/alertmanager/alertmanager.sh status [--port N]   exit 0 when it is running
#   tools/alertmanager/alertmanager.sh env [--port N]      print ALERTMANAGER_URL=... (for eval)
#
# One route to the receiver `seqmon-null` (no integrations: nothing is sent anywhere), no
# clustering (--cluster.listen-address=). Each start rewrites .cache/alertmanager/run-<port>/
# alertmanager.yml and keeps data/ (silences, notification log; alerts live in memory only).
# Log: .cache/alertmanager/run-<port>/alertmanager.log.
# The first build downloads the modules and compiles them (~90 s on 2 cores); Go, its module cache
# and build cache stay under .cache/go/ (nothing goes to $HOME). Needs Go >= 1.26 (GO, else `go`
# on PATH, else /usr/local/go/bin/go) and curl.
#
# Settings (environment): ALERTMANAGER_VERSION (default below), ALERTMANAGER_PORT (19095; 19093 is the local broker's controller),
# ALERTMANAGER_CACHE_DIR, GO.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
version=${ALERTMANAGER_VERSION:-v0.35.0}
port=${ALERTMANAGER_PORT:-19095}
cache=${ALERTMANAGER_CACHE_DIR:-$root/.cache/alertmanager}
bin=$cache/$version/bin/alertmanager

log() { echo "alertmanager: $*" >&2; }
. "$root/tools/go-env.sh"

cmd=${1:-}
[ $# -gt 0 ] && shift
while [ $# -gt 0 ]; do
  case "$1" in
    --port) [ $# -ge 2 ] || { log "--port needs a value"; exit 2; }; port=$2; shift 2 ;;
    --port=*) port=${1#--port=}; shift ;;
    *) log "unknown argument: $1"; exit 2 ;;
  esac
done
case "$port" in ''|*[!0-9]*) log "bad port: '$port'"; exit 2 ;; esac
run=$cache/run-$port
pidfile=$run/alertmanager.pid
url=http://127.0.0.1:$port

build() {
  if [ -x "$bin" ] && "$bin" --version >/dev/null 2>&1; then log "built: $bin"; return 0; fi
  local go src=$cache/$version/src t0=$SECONDS dir
  use_go 1.26 -mod=mod
  log "building Alertmanager $version with $("$go" version | cut -d' ' -f3) into ${bin%/*} (first time: ~90 s)"
  # Not `go install .../cmd/alertmanager@$version`: that fails with "ui/web.go: pattern app/dist:
  # no matching files found" (v0.34.2 as well). The web UI's compiled assets are made by npm/elm
  # at release time and are not in the module zip. So: the module's source from the proxy, copied,
  # with a placeholder page for the UI (the HTTP API is all that tests use), built there.
  dir=$("$go" mod download -json "github.com/prometheus/alertmanager@$version" | sed -n 's/^\t"Dir": "\(.*\)",$/\1/p')
  [ -n "$dir" ] && [ -f "$dir/go.mod" ] || { log "downloading github.com/prometheus/alertmanager@$version failed"; exit 1; }
  rm -rf "$src" && mkdir -p "${src%/*}" && cp -R "$dir" "$src" && chmod -R u+w "$src"
  mkdir -p "$src/ui/app/dist/elm" "$src/ui/app/dist/mantine" "${bin%/*}"
  for ui in elm mantine; do
    echo "<!doctype html><title>Alertmanager</title><p>Web UI not built (tools/alertmanager/alertmanager.sh); API: <a href=\"/api/v2/status\">/api/v2</a>" \
      >"$src/ui/app/dist/$ui/index.html"
  done
  (cd "$src" && "$go" build -trimpath -buildvcs=false -o "$bin" \
      -ldflags "-s -w -X github.com/prometheus/common/version.Version=${version#v} -X github.com/prometheus/common/version.Branch=module-proxy" \
      ./cmd/alertmanager) || { log "building Alertmanager $version failed"; exit 1; }
  rm -rf "$src"
  "$bin" --version >/dev/null 2>&1 || { log "$bin does not run"; exit 1; }
  log "built in $((SECONDS - t0)) s: $bin ($(du -h "$bin" | cut -f1))"
}

running() { [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; }

ready() { [ "$(curl -s -o /dev/null -w '%{http_code}' -m 2 "$url/-/ready" 2>/dev/null)" = 200 ]; }

start() {
  build
  command -v curl >/dev/null || { log "curl is required"; exit 1; }
  if running; then log "already running (pid $(cat "$pidfile")) at $url"; return 0; fi
  if ready; then log "something else already answers at $url: pick another --port"; exit 1; fi
  mkdir -p "$run/data"
  cat >"$run/alertmanager.yml" <<YML
# written by tools/alertmanager/alertmanager.sh start; rewritten at every start
global:
  resolve_timeout: 5m
route:
  receiver: seqmon-null
  group_wait: 0s
  group_interval: 1s
  repeat_interval: 4h
receivers:
  - name: seqmon-null
YML
  nohup "$bin" --config.file="$run/alertmanager.yml" --storage.path="$run/data" \
    --web.listen-address="127.0.0.1:$port" --cluster.listen-address= \
    >>"$run/alertmanager.log" 2>&1 &
  echo $! >"$pidfile"
  for _ in $(seq 1 120); do
    if ! running; then log "exited during start-up; see $run/alertmanager.log"; tail -20 "$run/alertmanager.log" >&2; exit 1; fi
    if ready; then log "running (pid $(cat "$pidfile")) at $url"; return 0; fi
    sleep 0.5
  done
  log "$url/-/ready did not answer 200 within 60 s; see $run/alertmanager.log"
  tail -20 "$run/alertmanager.log" >&2
  stop; exit 1
}

stop() {
  if ! running; then rm -f "$pidfile"; return 0; fi
  local pid; pid=$(cat "$pidfile")
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
  kill -9 "$pid" 2>/dev/null || true
  rm -f "$pidfile"
  log "stopped (port $port)"
}

status() {
  if running; then log "running (pid $(cat "$pidfile")) at $url"; else log "not running (port $port)"; return 1; fi
}

case "$cmd" in
  build) build ;;
  start) start ;;
  stop) stop ;;
  status) status ;;
  env) echo "ALERTMANAGER_URL=$url" ;;
  *) echo "usage: $0 build | start|stop|status|env [--port N]" >&2; exit 2 ;;
esac
