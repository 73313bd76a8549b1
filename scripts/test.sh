#!/usr/bin/env bash
# Runs the whole test suite with the project's virtualenv (called by `make test`).
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
# two workers (pytest-xdist): much of the suite waits on processes, sockets and model loads, so a
# second worker fills the idle core; tests/conftest.py groups what must share a worker
exec .venv/bin/python -m pytest tests -n "${GROVE_TEST_WORKERS:-2}" --no-loadscope-reorder --durations=15 "$@"
