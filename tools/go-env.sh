# Sourced by the tools built from the Go module proxy (tools/alertmanager, tools/helm,
# tools/promcheck): finds Go and keeps its caches in the project's .cache/go.
#
#   use_go MIN GOFLAGS   sets $go to the Go binary (GO, else `go` on PATH, else
#                        /usr/local/go/bin/go; "Go MIN+ is required" otherwise) and exports the
#                        module and build caches under $root/.cache/go (nothing goes to $HOME),
#                        GOWORK=off, CGO_ENABLED=0 (no C compiler, as upstream's release builds)
#                        and GOFLAGS (always with -modcacherw, or `rm -rf` of the cache fails).
# Needs $root (the project) and a log function.
use_go() {
  local min=$1 flags=$2 gocache=$root/.cache/go
  go=${GO:-}
  if [ -z "$go" ]; then go=$(command -v go || echo /usr/local/go/bin/go); fi
  [ -x "$go" ] || command -v "$go" >/dev/null || { log "Go ($min+) is required: set GO or put go on PATH"; exit 1; }
  export GOPATH=$gocache GOMODCACHE=$gocache/pkg/mod GOCACHE=$gocache/build GOWORK=off \
    GOFLAGS="-modcacherw $flags" CGO_ENABLED=0
}
