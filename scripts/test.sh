#!/usr/bin/env bash
# Every check and test: set-up, ruff, mypy, then pytest (unit + integration against the real
# Dapr stack, which the fixtures start on free ports). Extra arguments go to pytest, e.g.
#   scripts/test.sh -m "not integration"     unit tests only
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
exec .venv/bin/pytest "$@"
