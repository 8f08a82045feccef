#!/usr/bin/env bash
# Run the worker with its sidecar: set-up, placement + scheduler (+ the profile's backends),
# then `dapr run -f .`.
#   scripts/run.sh                            embedded default (SQLite state, in-memory pub/sub)
#   scripts/run.sh --redis                    shared profile (starts redis-server on REDIS_PORT,
#                                             default 6379); the same as --profile redis
#   scripts/run.sh --profile postgres-kafka   PostgreSQL state, Kafka pub/sub: starts both on
#                                             loopback, on free ports (POSTGRES_PORT, KAFKA_PORT
#                                             choose them), data in .data/{postgres,kafka}-data
#   scripts/run.sh --profile postgres-rabbitmq PostgreSQL state, RabbitMQ pub/sub: the same, with
#                                             RabbitMQ (RABBITMQ_PORT) in .data/rabbitmq
# Ports: PLACEMENT_PORT (50005), SCHEDULER_PORT (50006). Ctrl+C stops everything.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
project="$(pwd)"

usage="usage: scripts/run.sh [--redis | --profile default|redis|postgres-kafka|postgres-rabbitmq]"
profile=default
case "${1:-}" in
  "") ;;
  --redis) profile=redis; shift ;;
  --profile | --profile=*)
    if [ "$1" = --profile ]; then profile="${2:-}"; shift $(( $# > 1 ? 2 : 1 )); else profile="${1#--profile=}"; shift; fi
    [ -n "$profile" ] && [ -d "components/$profile" ] && [ "$profile" != client ] \
      || { echo "[run] --profile takes one of: default redis postgres-kafka postgres-rabbitmq" >&2; exit 2; } ;;
  -h | --help) echo "$usage"; exit 0 ;;
  *) echo "[run] unknown option $1; $usage" >&2; exit 2 ;;
esac
[ $# -eq 0 ] || { echo "[run] unexpected argument $1; $usage" >&2; exit 2; }
# SCRIPT_CHECK_ARGS=1: only check the arguments (the docs' examples are tested so), start nothing.
if [ -n "${SCRIPT_CHECK_ARGS:-}" ]; then echo "[run] profile $profile"; exit 0; fi
export PLACEMENT_PORT="${PLACEMENT_PORT:-50005}" SCHEDULER_PORT="${SCHEDULER_PORT:-50006}"
export REDIS_PORT="${REDIS_PORT:-6379}"

bash scripts/setup.sh
# shellcheck source=versions.env
source scripts/versions.env
export PATH="${DAPR_RUNTIME_PATH:-$HOME}/.dapr/bin:$PATH"

mkdir -p .data
ready=.data/devstack.ready
rm -f "$ready"
.venv/bin/python scripts/devstack.py up --ready-file "$ready" --profile "$profile" &
stack_pid=$!
dapr_pid=""
cleanup() {
  if [ -n "$dapr_pid" ]; then kill -INT "$dapr_pid" 2>/dev/null || true; wait "$dapr_pid" 2>/dev/null || true; fi
  kill -TERM "$stack_pid" 2>/dev/null || true
  wait "$stack_pid" 2>/dev/null || true
}
trap cleanup EXIT
trap 'exit 130' INT TERM

for _ in $(seq 1 1200); do
  [ -e "$ready" ] && break
  kill -0 "$stack_pid" 2>/dev/null || { echo "[run] placement/scheduler/backends did not start" >&2; exit 1; }
  sleep 0.1
done
[ -e "$ready" ] || { echo "[run] placement/scheduler/backends not ready after 120s" >&2; exit 1; }
# The ports the stack took (KEY=port lines): the backends' ones go into the components.
# shellcheck disable=SC1090
source "$ready"

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
    sed -e "s#localhost:6379#localhost:$REDIS_PORT#" \
        -e "s#localhost:5432#localhost:${POSTGRES_PORT:-5432}#" \
        -e "s#localhost:9092#localhost:${KAFKA_PORT:-9092}#" \
        -e "s#localhost:5672#localhost:${RABBITMQ_PORT:-5672}#" \
        "$f" >".data/components-$profile/$(basename "$f")"
  done
  dapr run -f .data/dapr.yaml &
fi
dapr_pid=$!
wait "$dapr_pid"
