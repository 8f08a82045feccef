#!/usr/bin/env bash
# Run the worker with its sidecar: set-up, placement + scheduler, then `dapr run -f .`.
#   scripts/run.sh            embedded default (SQLite state, in-memory pub/sub)
#   scripts/run.sh --redis    shared profile (starts redis-server on REDIS_PORT, default 6379)
# Ports: PLACEMENT_PORT (50005), SCHEDULER_PORT (50006). Ctrl+C stops everything.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
project="$(pwd)"

profile=default
[ "${1:-}" = "--redis" ] && profile=redis
export PLACEMENT_PORT="${PLACEMENT_PORT:-50005}" SCHEDULER_PORT="${SCHEDULER_PORT:-50006}"
export REDIS_PORT="${REDIS_PORT:-6379}"

bash scripts/setup.sh
# shellcheck source=versions.env
source scripts/versions.env
export PATH="${DAPR_RUNTIME_PATH:-$HOME}/.dapr/bin:$PATH"

mkdir -p .data
ready=.data/devstack.ready
rm -f "$ready"
stack_args=(up --ready-file "$ready")
[ "$profile" = redis ] && stack_args+=(--redis)
.venv/bin/python scripts/devstack.py "${stack_args[@]}" &
stack_pid=$!
dapr_pid=""
cleanup() {
  if [ -n "$dapr_pid" ]; then kill -INT "$dapr_pid" 2>/dev/null || true; wait "$dapr_pid" 2>/dev/null || true; fi
  kill -TERM "$stack_pid" 2>/dev/null || true
  wait "$stack_pid" 2>/dev/null || true
}
trap cleanup EXIT
trap 'exit 130' INT TERM

for _ in $(seq 1 600); do
  [ -e "$ready" ] && break
  kill -0 "$stack_pid" 2>/dev/null || { echo "[run] placement/scheduler did not start" >&2; exit 1; }
  sleep 0.1
done
[ -e "$ready" ] || { echo "[run] placement/scheduler not ready after 60s" >&2; exit 1; }

# The CLI runs in the background so that a signal reaches the trap above at once.
if [ "$profile" = default ] && [ "$PLACEMENT_PORT" = 50005 ] && [ "$SCHEDULER_PORT" = 50006 ]; then
  dapr run -f . &
else
  # Same run file, other ports or profile: a generated copy with absolute paths.
  sed -e "s#localhost:50005#localhost:$PLACEMENT_PORT#; s#localhost:50006#localhost:$SCHEDULER_PORT#" \
      -e "s#resourcesPath: ./components/default#resourcesPath: $project/.data/components-$profile#" \
      -e "s#appDirPath: .\$#appDirPath: $project#" dapr.yaml >.data/dapr.yaml
  mkdir -p ".data/components-$profile"
  for f in components/"$profile"/*.yaml; do
    sed "s#localhost:6379#localhost:$REDIS_PORT#" "$f" >".data/components-$profile/$(basename "$f")"
  done
  dapr run -f .data/dapr.yaml &
fi
dapr_pid=$!
wait "$dapr_pid"
