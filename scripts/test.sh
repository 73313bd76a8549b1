#!/usr/bin/env bash
# Runs the whole test suite with the project's virtualenv (called by `make test`).
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
exec .venv/bin/python -m pytest tests --durations=15 "$@"
