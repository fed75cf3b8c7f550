#!/usr/bin/env bash
# The project's one test command (README "Run the tests"; .ci/run runs exactly this).
# Creates .venv if needed, installs the package with its test extra, then lints,
# type-checks and runs the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test]'
.venv/bin/ruff check .
.venv/bin/mypy
.venv/bin/pytest -q "$@"
