#!/usr/bin/env bash
# One-time set-up on a fresh machine: a venv with the CPU build of PyTorch and the package.
# Idempotent: a second run only checks what is there.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [[ ! -x .venv/bin/python ]]; then
  "$PY" -m venv .venv
fi
. .venv/bin/activate
python -m pip install -q --upgrade pip
# torch 2.13.0 is the CPU build that lies on this machine's disk (~1 GB venv). A plain `torch` would pull
# a CUDA build of several GB; torchvision is not used (PyPI's wheel does not import beside this build).
python -m pip install -q "torch==2.13.0"
python -m pip install -q -e ".[test]"
# Chromium for the browser test of the human-review page (Debian's package; Playwright drives it).
if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [[ $(id -u) -eq 0 ]]; then
  (apt-get update -qq && apt-get install -y -qq chromium >/dev/null) || echo "setup: chromium not installed; the browser test will be skipped" >&2
fi
python -c "import torch, instructengine; print('instructengine ready: torch', torch.__version__)"
