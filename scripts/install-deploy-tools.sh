#!/usr/bin/env bash
# What the Kubernetes manifests' tests (tests/deploy) need, offline at test time:
#   - kustomize, pinned (KUSTOMIZE_VERSION in scripts/versions.env), built from the Go module
#     proxy into ${XDG_CACHE_HOME:-$HOME/.cache}/dapr-workflow-worker/bin/kustomize
#   - Dapr's CRDs (their openAPIV3Schema) at the pinned runtime: the github.com/dapr/dapr
#     module in the Go module cache, charts/dapr/crds/ (the Dapr build fetches the same module;
#     this makes sure it is there when the runtime came from elsewhere), and the two modules
#     whose sources say what a Resiliency retry really does (github.com/dapr/kit's retry
#     defaults, github.com/cenkalti/backoff/v4's), at the versions daprd's go.mod requires
# Idempotent: skips what is in place. Called by scripts/setup.sh.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=versions.env
source "$here/versions.env"

say() { printf '[deploy-tools] %s\n' "$*"; }
die() { printf '[deploy-tools] ERROR: %s\n' "$*" >&2; exit 1; }

command -v go >/dev/null 2>&1 || die "Go is not installed (needed for kustomize and Dapr's CRDs).
  Install Go >= $DAPR_GO_MIN, then re-run."

bin_dir="${XDG_CACHE_HOME:-$HOME/.cache}/dapr-workflow-worker/bin"
kustomize="$bin_dir/kustomize"
have="$("$kustomize" version 2>/dev/null || true)"
if [ "$have" = "v$KUSTOMIZE_VERSION" ]; then
  say "kustomize $have already installed at $kustomize: skipping"
else
  say "building kustomize v$KUSTOMIZE_VERSION (sigs.k8s.io/kustomize/kustomize/v5, about a minute)"
  mkdir -p "$bin_dir"
  # The release's version string is stamped the way kustomize's own release build does it.
  GOBIN="$bin_dir" go install \
    -ldflags "-s -w -X sigs.k8s.io/kustomize/api/provenance.version=v$KUSTOMIZE_VERSION" \
    "sigs.k8s.io/kustomize/kustomize/v5@v$KUSTOMIZE_VERSION" \
    || die "could not build kustomize v$KUSTOMIZE_VERSION from the Go module proxy ($(go env GOPROXY))"
  say "installed kustomize $("$kustomize" version) at $kustomize"
fi

crds="$(go env GOMODCACHE)/github.com/dapr/dapr@v$DAPR_RUNTIME_VERSION/charts/dapr/crds"
if [ -s "$crds/components.yaml" ]; then
  say "Dapr $DAPR_RUNTIME_VERSION CRDs in place ($crds)"
else
  say "downloading github.com/dapr/dapr@v$DAPR_RUNTIME_VERSION into the Go module cache (Dapr's CRDs)"
  timeout 300 go mod download "github.com/dapr/dapr@v$DAPR_RUNTIME_VERSION" \
    || die "cannot download github.com/dapr/dapr@v$DAPR_RUNTIME_VERSION from the Go module proxy ($(go env GOPROXY))"
  [ -s "$crds/components.yaml" ] || die "the module has no charts/dapr/crds/components.yaml ($crds)"
fi

gomod="$(go env GOMODCACHE)/github.com/dapr/dapr@v$DAPR_RUNTIME_VERSION/go.mod"
for mod in github.com/dapr/kit github.com/cenkalti/backoff/v4; do
  v="$(awk -v m="$mod" '$1 == m { print $2; exit }' "$gomod")"
  [ -n "$v" ] || die "$gomod requires no $mod"
  if [ ! -d "$(go env GOMODCACHE)/$mod@$v" ]; then
    say "downloading $mod@$v into the Go module cache"
    timeout 300 go mod download "$mod@$v" || die "cannot download $mod@$v from the Go module proxy"
  fi
done
