#!/usr/bin/env bash
# The test command: set up the tested package set, lint, then run the tests (GPU tests are skipped
# where there is no GPU; run them with `.venv/bin/python -m pytest -m gpu`).
set -euo pipefail
cd "$(dirname "$0")/.."
CONSTRAINTS=${CONSTRAINTS:-env/tested-cpu.txt} SKIP_DEMO=1 bash env/setup.sh --dev
.venv/bin/ruff check .
.venv/bin/ruff format --check .
exec .venv/bin/python -m pytest "$@"
