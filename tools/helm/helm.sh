#!/usr/bin/env bash
# A real Helm 3 binary for linting/rendering helm/seqmon, built from its source as the Go module
# proxy serves it (helm.sh/helm/v3@VERSION; see build()) into .cache/.
#
#   tools/helm/helm.sh build    build the binary unless it is there and runs; prints its path last
#   tools/helm/helm.sh path     print the binary's path (building it first if needed)
#
# e.g.  "$(tools/helm/helm.sh path)" lint --strict helm/seqmon
# The first build downloads the modules and compiles them (a few minutes on 2 cores); Go, its
# module cache and build cache stay under .cache/go/ (nothing goes to $HOME). Needs Go >= 1.26
# (GO, else `go` on PATH, else /usr/local/go/bin/go).
#
# Settings (environment): HELM_VERSION (default below), HELM_CACHE_DIR, GO.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
version=${HELM_VERSION:-v3.22.0}
cache=${HELM_CACHE_DIR:-$root/.cache/helm}
bin=$cache/$version/bin/helm
module=helm.sh/helm/v3

log() { echo "helm: $*" >&2; }
. "$root/tools/go-env.sh"

runs() { [ -x "$bin" ] && "$bin" version >/dev/null 2>&1; }

build() {
  if runs; then log "built: $bin"; return 0; fi
  local go src=$cache/$version/src t0=$SECONDS dir k8s major minor ldflags
  use_go 1.26 ""
  log "building Helm $version with $("$go" version | cut -d' ' -f3) into ${bin%/*} (first time: a few minutes)"
  # The module's source (for its go.mod): the ldflags below are those of upstream's Makefile,
  # which sets the version (else `helm version` says "v3.22") and the Kubernetes version that
  # lint and template assume (.Capabilities.KubeVersion; else v1.20) from k8s.io/client-go.
  dir=$("$go" mod download -json "$module@$version" | sed -n 's/^\t"Dir": "\(.*\)",$/\1/p')
  [ -n "$dir" ] && [ -f "$dir/go.mod" ] || { log "downloading $module@$version failed"; exit 1; }
  k8s=$(sed -n 's/^[[:space:]]*k8s\.io\/client-go v0\.\([0-9]*\)\..*/\1/p' "$dir/go.mod" | head -1)
  ldflags="-s -w -X helm.sh/helm/v3/internal/version.version=$version"
  ldflags+=" -X helm.sh/helm/v3/internal/version.metadata=module-proxy"
  if [ -n "$k8s" ]; then
    major=1 minor=$k8s
    ldflags+=" -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMajor=$major -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMinor=$minor"
    ldflags+=" -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=$major -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=$minor"
  fi
  mkdir -p "${bin%/*}"
  if ! GOBIN=${bin%/*} "$go" install -trimpath -buildvcs=false -ldflags "$ldflags" "$module/cmd/helm@$version"; then
    # Fallback, as tools/alertmanager/alertmanager.sh does: build in a copy of the module's source.
    log "go install failed; building in a copy of the module's source"
    rm -rf "$src" && mkdir -p "${src%/*}" && cp -R "$dir" "$src" && chmod -R u+w "$src"
    (cd "$src" && GOFLAGS="-modcacherw -mod=mod" "$go" build -trimpath -buildvcs=false -o "$bin" \
        -ldflags "$ldflags" ./cmd/helm) || { log "building Helm $version failed"; exit 1; }
    rm -rf "$src"
  fi
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
