#!/usr/bin/env bash
# The README's test command: set-up (idempotent) then the default test suite (no slow/gpu tests).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh >/dev/null
. .venv/bin/activate
python -m pytest -q "$@"
