#!/usr/bin/env bash
# Serve the documentation site locally, rebuilt on every change (mkdocs serve, strict):
#   scripts/docs.sh            on a free port (printed)
#   scripts/docs.sh 8000       on port 8000
# It needs only the Python packages (.venv, as scripts/setup.sh installs them), not the Dapr
# stack. After a change to the settings, wfctl, the models or the console's API, regenerate
# the reference pages: .venv/bin/python -m scripts.docs_reference
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
usage="usage: scripts/docs.sh [PORT]"
case "${1:-}" in -h | --help) echo "$usage"; exit 0 ;; esac
if [ $# -gt 1 ] || [[ $# -eq 1 && ! "$1" =~ ^[0-9]+$ ]]; then
  echo "[docs] not a port: $*; $usage" >&2
  exit 2
fi
# SCRIPT_CHECK_ARGS=1: only check the arguments (the docs' examples are tested so), serve nothing.
if [ -n "${SCRIPT_CHECK_ARGS:-}" ]; then echo "[docs] port ${1:-free}"; exit 0; fi

if [ ! -x .venv/bin/mkdocs ]; then
  echo "[docs] installing the Python packages into .venv"
  [ -x .venv/bin/python ] || "${PYTHON:-python3}" -m venv .venv
  .venv/bin/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[dev]'
fi
port="${1:-$(.venv/bin/python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}"
echo "[docs] http://127.0.0.1:$port/"
NO_MKDOCS_2_WARNING=1 exec .venv/bin/mkdocs serve --strict --dev-addr "127.0.0.1:$port"
