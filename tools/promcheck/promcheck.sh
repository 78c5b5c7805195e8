#!/usr/bin/env bash
# promcheck (tools/promcheck/main.go): `promtool check rules` and `promtool check metrics` from
# Prometheus' own libraries (model/rulefmt, promql/parser; client_golang's promlint), built from
# this directory's go.mod/go.sum with modules from the Go module proxy into .cache/.
#
#   tools/promcheck/promcheck.sh build    build the binary unless it is there, runs and is newer
#                                         than its source; prints its path last
#   tools/promcheck/promcheck.sh path     print the binary's path (building it first if needed)
#
# e.g.  "$(tools/promcheck/promcheck.sh path | tail -1)" rules rules.yaml
#       curl -s localhost:9100/metrics | "$(tools/promcheck/promcheck.sh path | tail -1)" metrics
# The first build downloads the modules (26 MB) and compiles them (rulefmt brings the PromQL
# engine along): about a minute on 2 cores from empty caches; Go, its module cache and build
# cache stay under .cache/go/ (nothing goes to $HOME). Needs Go >= 1.26.7 (GO, else `go` on
# PATH, else /usr/local/go/bin/go).
#
# Settings (environment): PROMCHECK_CACHE_DIR, GO.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
cache=${PROMCHECK_CACHE_DIR:-$root/.cache/promcheck}
bin=$cache/bin/promcheck

log() { echo "promcheck: $*" >&2; }
. "$root/tools/go-env.sh"

# Built, runs (an empty exposition lints clean), and newer than every file it is built from.
runs() {
  [ -x "$bin" ] && "$bin" metrics </dev/null >/dev/null 2>&1 || return 1
  local f
  for f in "$here"/main.go "$here"/go.mod "$here"/go.sum; do [ "$bin" -nt "$f" ] || return 1; done
}

build() {
  if runs; then log "built: $bin"; return 0; fi
  local go t0=$SECONDS
  # -mod=readonly: go.sum is complete and committed; a build never edits go.mod.
  use_go 1.26.7 -mod=readonly
  log "building with $("$go" version | cut -d' ' -f3) into ${bin%/*} (first time: about a minute)"
  mkdir -p "${bin%/*}"
  (cd "$here" && "$go" build -trimpath -buildvcs=false -ldflags "-s -w" -o "$bin" .) \
    || { log "building promcheck failed"; exit 1; }
  runs || { log "$bin does not run"; exit 1; }
  log "built in $((SECONDS - t0)) s: $bin ($(du -h "$bin" | cut -f1))"
}

cmd=${1:-}
[ $# -gt 0 ] && shift
[ $# -eq 0 ] || { log "unknown argument: $1"; exit 2; }
case "$cmd" in
  build) build; echo "$bin" ;;
  path) runs || build; echo "$bin" ;;
  *) echo "usage: $0 build | path" >&2; exit 2 ;;
esac
