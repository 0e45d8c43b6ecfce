#!/usr/bin/env bash
# The README's main command: set-up (idempotent) then the main job on ShapesWorld, offline, on CPU.
# Extra arguments are dotted config overrides, e.g. `bash scripts/demo.sh eval.seeds=[0]`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
instructengine run --config configs/shapes_demo.yaml "$@"
