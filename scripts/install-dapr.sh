#!/usr/bin/env bash
# Install the real Dapr runtime (daprd, placement, scheduler) and the dapr CLI,
# built from the Go module proxy, where the Dapr CLI expects them:
#   ${DAPR_RUNTIME_PATH:-$HOME}/.dapr/bin/{daprd,placement,scheduler,dapr}
# plus ~/.dapr/config.yaml and ~/.dapr/components.
#
# Idempotent: skips every binary already present at the pinned version, and never
# touches an install it did not make (e.g. one from `dapr init`).
#
# Environment:
#   DAPR_RUNTIME_VERSION  runtime to build (default from scripts/versions.env)
#   DAPR_CLI_VERSION      CLI to build     (default from scripts/versions.env)
#   DAPR_RUNTIME_PATH     base folder; binaries go to $DAPR_RUNTIME_PATH/.dapr/bin
#   DAPR_BUILD_DIR        scratch module for the build (default ~/.cache/dapr-workflow-worker)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=versions.env
source "$here/versions.env"

base="${DAPR_RUNTIME_PATH:-$HOME}"
bin_dir="$base/.dapr/bin"
marker="$bin_dir/.built-by-dapr-workflow-worker"
build_dir="${DAPR_BUILD_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/dapr-workflow-worker}"

say() { printf '[install-dapr] %s\n' "$*"; }
die() { printf '[install-dapr] ERROR: %s\n' "$*" >&2; exit 1; }

version_of() {  # prints the version of an installed binary, or nothing
  local name="$1" exe="$bin_dir/$1"
  [ -x "$exe" ] || return 0
  case "$name" in
    daprd) "$exe" --version 2>/dev/null | head -n1 | tr -d '[:space:]' ;;
    dapr) "$exe" version --output json 2>/dev/null | sed -n 's/.*"Cli version": *"\([^"]*\)".*/\1/p' ;;
    *)  # placement and scheduler have no --version: trust our record, else daprd's
      if [ -f "$marker" ]; then sed -n "s/^$name=//p" "$marker"; else version_of daprd; fi ;;
  esac
}

record_version() {  # $1 = binary, $2 = version
  touch "$marker"
  sed -i "/^$1=/d" "$marker"
  echo "$1=$2" >>"$marker"
}

needs_build() {  # $1 = binary name, $2 = wanted version; 0 when it must be (re)built
  local exe="$bin_dir/$1" have
  have="$(version_of "$1")"
  if [ "$have" = "$2" ]; then
    say "$1 $2 already installed at $exe: skipping"
    return 1
  fi
  if [ -e "$exe" ] && [ ! -e "$marker" ]; then
    die "$exe exists (version '${have:-unknown}', wanted $2) and was not installed by this script.
  It is left alone. Either install Dapr $2 there yourself, or put this project's
  build beside it:  DAPR_RUNTIME_PATH=\$HOME/dapr-$2 $0  (and export the same
  DAPR_RUNTIME_PATH when you run the worker and the tests)."
  fi
  return 0
}

check_go() {
  command -v go >/dev/null 2>&1 || die "Go is not installed (needed to build Dapr).
  Install Go >= $DAPR_GO_MIN (e.g. 'apt-get install golang' or a release from go.dev), then re-run."
  local have
  have="$(go env GOVERSION | sed 's/^go//')"
  if [ "$(printf '%s\n%s\n' "$DAPR_GO_MIN" "$have" | sort -V | head -n1)" != "$DAPR_GO_MIN" ]; then
    say "Go $have is older than the $DAPR_GO_MIN Dapr $DAPR_RUNTIME_VERSION needs: letting GOTOOLCHAIN=auto fetch it"
    export GOTOOLCHAIN=auto
  fi
}

check_proxy() {  # $1 = module@version
  local out
  if ! out="$(timeout 120 go mod download -json "$1" 2>&1)"; then
    die "cannot download $1 from the Go module proxy ($(go env GOPROXY)).
  $(printf '%s' "$out" | grep -m1 -iE 'error|forbidden|not found|timeout|dial' || true)
  Check network access to the proxy (GOPROXY), or install Dapr yourself and point
  DAPR_RUNTIME_PATH at it."
  fi
  printf '%s' "$out" | sed -n 's/.*"Dir": *"\([^"]*\)".*/\1/p'
}

heartbeat() {  # prints progress while a build runs; $1 = what, $2 = log file
  local start=$SECONDS
  while sleep 30; do
    say "  ... still building $1: $(( (SECONDS - start) / 60 ))m$(( (SECONDS - start) % 60 ))s, $(wc -l <"$2") packages compiled so far"
  done
}

run_build() {  # $1 = scratch module, $2 = label, rest = go build arguments
  local module="$1" label="$2"; shift 2
  local log="$build_dir/$label.log" hb
  say "building $label (a cold build takes 15-30 minutes on 2 cores; progress every 30 s)"
  heartbeat "$label" "$log" & hb=$!
  if ! (cd "$build_dir/$module" && GOFLAGS=-mod=mod go build -v "$@") >"$log" 2>&1; then
    kill "$hb" 2>/dev/null || true
    tail -n 30 "$log" >&2
    if grep -q '403 Forbidden' "$log"; then
      die "the Go module proxy refused modules needed to build $label:
$(grep '403' "$log" | grep -oE '[A-Za-z0-9./_-]+@v[^: ]+: reading' | sed 's/: reading//' | sort -u | sed 's/^/    /')
  Pick a Dapr version whose dependencies the proxy serves (DAPR_RUNTIME_VERSION); full log: $log"
    fi
    die "building $label failed; full log: $log"
  fi
  kill "$hb" 2>/dev/null || true
}

scratch_module() {  # $1 = dir, $2 = module path, $3 = version, $4 = its source dir
  # A module of our own with the upstream module's requirements and replace directives,
  # so every dependency resolves to exactly the version upstream was released with.
  local dir="$1" mod="$2" v="$3" src="$4"
  mkdir -p "$dir"
  sed "s#^module $mod\$#module dapr-workflow-worker/build#" "$src/go.mod" >"$dir/go.mod"
  cp "$src/go.sum" "$dir/go.sum"
  chmod u+w "$dir/go.mod" "$dir/go.sum"
  (cd "$dir" && go mod edit -require="$mod@v$v")
}

build_runtime() {  # $1 = dapr source dir, rest = commands to build
  local src="$1" v="$DAPR_RUNTIME_VERSION"
  shift
  local ldflags="-s -w -X github.com/dapr/dapr/pkg/buildinfo.version=$v -X github.com/dapr/dapr/pkg/buildinfo.gitversion=v$v -X github.com/dapr/dapr/pkg/buildinfo.gitcommit=v$v"
  scratch_module "$build_dir/runtime" github.com/dapr/dapr "$v" "$src"
  for cmd in "$@"; do
    local tags=()
    [ "$cmd" = daprd ] && tags=(-tags stablecomponents)
    run_build runtime "$cmd" "${tags[@]}" -ldflags "$ldflags" -o "$build_dir/out/$cmd" "github.com/dapr/dapr/cmd/$cmd"
    install -m 0755 "$build_dir/out/$cmd" "$bin_dir/$cmd" && rm -f "$build_dir/out/$cmd"
    record_version "$cmd" "$v"
    say "installed $cmd $v at $bin_dir/$cmd"
  done
}

build_cli() {  # $1 = dapr CLI source dir
  local v="$DAPR_CLI_VERSION"
  scratch_module "$build_dir/cli" github.com/dapr/cli "$v" "$1"
  # The CLI pins components-contrib v1.16.3, which the Go module proxy does not serve;
  # v1.16.5 is a later patch release of the same line.
  (cd "$build_dir/cli" && go mod edit -require="github.com/dapr/components-contrib@v$DAPR_CLI_CONTRIB_VERSION")
  run_build cli dapr -ldflags "-s -w -X main.version=$v -X main.apiVersion=1.0" -o "$build_dir/out/dapr" github.com/dapr/cli
  install -m 0755 "$build_dir/out/dapr" "$bin_dir/dapr" && rm -f "$build_dir/out/dapr"
  record_version dapr "$v"
  say "installed dapr CLI $(version_of dapr) at $bin_dir/dapr"
}

write_defaults() {
  # What `dapr init --slim` would leave: a config and an (empty) components folder.
  mkdir -p "$HOME/.dapr/components"
  if [ ! -e "$HOME/.dapr/config.yaml" ]; then
    cat >"$HOME/.dapr/config.yaml" <<'YAML'
apiVersion: dapr.io/v1alpha1
kind: Configuration
metadata:
  name: daprConfig
spec: {}
YAML
    say "wrote $HOME/.dapr/config.yaml"
  fi
}

main() {
  mkdir -p "$bin_dir" "$build_dir/out"
  write_defaults
  local runtime_todo=()
  for cmd in daprd placement scheduler; do
    if needs_build "$cmd" "$DAPR_RUNTIME_VERSION"; then runtime_todo+=("$cmd"); fi
  done
  local cli_todo=0
  if needs_build dapr "$DAPR_CLI_VERSION"; then cli_todo=1; fi
  if [ ${#runtime_todo[@]} -eq 0 ] && [ $cli_todo -eq 0 ]; then
    say "Dapr runtime $DAPR_RUNTIME_VERSION and CLI $DAPR_CLI_VERSION are in place ($bin_dir)"
    return 0
  fi
  check_go
  local started=$SECONDS
  if [ ${#runtime_todo[@]} -gt 0 ]; then
    local src
    src="$(check_proxy "github.com/dapr/dapr@v$DAPR_RUNTIME_VERSION")"
    build_runtime "$src" "${runtime_todo[@]}"
  fi
  if [ $cli_todo -eq 1 ]; then
    build_cli "$(check_proxy "github.com/dapr/cli@v$DAPR_CLI_VERSION")"
  fi
  say "done in $(( (SECONDS - started) / 60 ))m$(( (SECONDS - started) % 60 ))s; binaries in $bin_dir"
}

main "$@"
