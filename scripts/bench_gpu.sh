#!/usr/bin/env bash
# One prepared GPU run (< 5 min on one H200) of scripts/bench_gpu.py, for the lent device.
# The device has python3 with torch/transformers/safetensors but no network and no omegaconf;
# carry omegaconf's wheels in .whl/ (fetch them here first):
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 -d .whl \
#       omegaconf==2.3.0 antlr4-python3-runtime==4.9.3 PyYAML   # PyYAML is on the device already
# then: run(command="bash scripts/bench_gpu.sh", carry=[".whl"]). Results: $OUT/bench_gpu.jsonl.
set -euo pipefail
cd "$(dirname "$0")/.."
if compgen -G ".whl/*.whl" > /dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
    export PYTHONPATH="/tmp/site:${PYTHONPATH:-}"
fi
export PYTHONPATH="$PWD:${PYTHONPATH:-}" PYTHONUNBUFFERED=1
out="${OUT:-.}/bench_gpu.jsonl"
timeout 280 python3 scripts/bench_gpu.py "$@" | tee "$out"
