#!/usr/bin/env bash
# The workflow-management tutorial as messages, with `dapr publish`, against a worker started
# by scripts/run.sh (app-id workflow-worker). Each step prints what it sends; watch the
# worker's log, or `dapr workflow list -a workflow-worker -c .dapr-state.db`.
#   scripts/tutorial.sh            the whole scenario
#   scripts/tutorial.sh STEP       one step: start query suspend resume approve reject
#                                  terminate purge bulk-purge
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export PATH="${DAPR_RUNTIME_PATH:-$HOME}/.dapr/bin:$PATH"
APP_ID="${APP_ID:-workflow-worker}"
run_id="${RUN_ID:-$(date +%s)}"

send() {  # topic json
  printf '\n$ dapr publish --topic %s --data %s\n' "$1" "$2"
  dapr publish --publish-app-id "$APP_ID" --pubsub pubsub --topic "$1" --data "$2"
}
list() { sleep "${1:-1}"; dapr workflow list -a "$APP_ID" -c .dapr-state.db || true; }

counter="counter-$run_id" big="order-big-$run_id" small="order-small-$run_id" no="order-no-$run_id"

step_start() {
  send workflow.start "{\"workflow\":\"counter_workflow\",\"instance_id\":\"$counter\"}"
  send workflow.start "{\"workflow\":\"approval_workflow\",\"instance_id\":\"$big\",\"input\":{\"order_id\":\"$big\",\"amount\":5000,\"approval_timeout_seconds\":600}}"
  send workflow.start "{\"workflow\":\"approval_workflow\",\"instance_id\":\"$no\",\"input\":{\"order_id\":\"$no\",\"amount\":9000,\"approval_timeout_seconds\":600}}"
  send workflow.start "{\"workflow\":\"approval_workflow\",\"instance_id\":\"$small\",\"input\":{\"order_id\":\"$small\",\"amount\":20}}"
  list 2
}
step_query() { send workflow.control "{\"action\":\"query\",\"instance_id\":\"$counter\"}"; }
step_suspend() { send workflow.control "{\"action\":\"suspend\",\"instance_id\":\"$counter\",\"reason\":\"tutorial\"}"; list; }
step_resume() { send workflow.control "{\"action\":\"resume\",\"instance_id\":\"$counter\"}"; list; }
step_approve() { send workflow.approval "{\"instance_id\":\"$big\",\"data\":{\"approved\":true,\"approver\":\"ana\"}}"; list; }
step_reject() { send workflow.approval "{\"instance_id\":\"$no\",\"data\":false}"; list; }
step_terminate() { send workflow.control "{\"action\":\"terminate\",\"instance_id\":\"$counter\",\"reason\":\"tutorial over\"}"; list; }
step_purge() { send workflow.control "{\"action\":\"purge\",\"instance_id\":\"$counter\"}"; list; }
step_bulk-purge() { send workflow.control '{"action":"purge","older_than":"1s","statuses":["COMPLETED"]}'; list 2; }

steps="start query suspend resume approve reject terminate purge bulk-purge"
if [ $# -gt 1 ] || { [ $# -eq 1 ] && [[ " $steps " != *" $1 "* ]]; }; then
  echo "usage: scripts/tutorial.sh [STEP], a STEP of: $steps" >&2
  exit 2
fi
# SCRIPT_CHECK_ARGS=1: only check the arguments (the docs' examples are tested so), send nothing.
if [ -n "${SCRIPT_CHECK_ARGS:-}" ]; then echo "[tutorial] ${1:-every step}"; exit 0; fi
if [ $# -gt 0 ]; then
  "step_$1"
else
  for s in $steps; do "step_$s"; done
fi
