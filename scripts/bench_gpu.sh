#!/usr/bin/env bash
# One prepared GPU run (< 5 min on one H200): install CPU-free deps, then scripts/bench_gpu.py.
# On the device machine: bash scripts/bench_gpu.sh  (writes $OUT/bench_gpu.jsonl if OUT is set)
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv-gpu
.venv-gpu/bin/pip install --quiet --upgrade pip
.venv-gpu/bin/pip install --quiet torch   # the device's CUDA build
.venv-gpu/bin/pip install --quiet -e .
out="${OUT:-.}/bench_gpu.jsonl"
timeout 270 .venv-gpu/bin/python scripts/bench_gpu.py "$@" | tee "$out"
