#!/usr/bin/env bash
# README "Try the demo": installs into .venv if needed and runs the embedded demo
# (an apiserver simulator seeded with the ServiceGrid example, and the wrapper as node bj-1).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check -e .
exec .venv/bin/application-grid-wrapper demo "$@"
