#!/usr/bin/env bash
# The test command: set up the tested package set, lint, then run the tests (GPU tests are skipped
# where there is no GPU; run them with `.venv/bin/python -m pytest -m gpu`).
set -euo pipefail
cd "$(dirname "$0")/.."
CONSTRAINTS=${CONSTRAINTS:-env/tested-cpu.txt} SKIP_DEMO=1 bash env/setup.sh --dev
# The browser tests drive Debian's Chromium (Playwright's own browser download cannot work offline), with CJK and
# emoji fonts so that the screenshots they save are readable.
if [ ! -x /usr/bin/chromium ] && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    chromium fonts-noto-cjk fonts-noto-color-emoji >/dev/null
fi
export GPTQ_CHAT_SETUP_RAN=1  # tests/test_setup.py runs the same set-up again: it must change nothing
.venv/bin/python -m ruff check .
.venv/bin/python -m ruff format --check .
exec .venv/bin/python -m pytest "$@"
