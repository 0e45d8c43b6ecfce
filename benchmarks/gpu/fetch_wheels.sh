#!/usr/bin/env bash
# Wheels the GPU benchmark needs on a machine that has torch, transformers, accelerate and peft but not
# diffusers or pydantic, and no package registry. Run this where pip reaches a registry; then carry
# benchmarks/gpu/wheels to the GPU machine (docs/performance.md). About 16 MB: diffusers (pure Python),
# pydantic + its pure-Python dependencies, pydantic-core built for CPython 3.10-3.13 on x86-64 Linux.
# run_gpu_bench.py unpacks only the wheels of packages that are missing there.
set -euo pipefail
cd "$(dirname "$0")"
PIP="${PIP:-python -m pip}"
mkdir -p wheels
DIFFUSERS="$(python -c 'import diffusers; print(diffusers.__version__)' 2>/dev/null || echo 0.42.1)"
PYDANTIC="$(python -c 'import pydantic; print(pydantic.VERSION)' 2>/dev/null || echo 2.14.4)"
$PIP download "diffusers==$DIFFUSERS" "pydantic==$PYDANTIC" annotated-types typing-inspection typing-extensions \
  --no-deps -d wheels
CORE="$(unzip -p wheels/pydantic-"$PYDANTIC"-py3-none-any.whl "pydantic-$PYDANTIC.dist-info/METADATA" \
  | sed -n 's/^Requires-Dist: pydantic-core==\([0-9.]*\).*/\1/p')"
for v in 3.10 3.11 3.12 3.13; do
  $PIP download "pydantic-core==$CORE" --no-deps --only-binary=:all: --python-version "$v" \
    --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 -d wheels
done
du -sh wheels && ls wheels
