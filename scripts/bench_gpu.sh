#!/usr/bin/env bash
# One prepared GPU run (< 5 min on one H200) of scripts/bench_gpu.py, for the lent device.
# The device has python3 with torch/transformers/safetensors but no network and no omegaconf;
# carry omegaconf's wheels in .whl/ (fetch them here first):
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 -d .whl \
#       omegaconf==2.3.0 antlr4-python3-runtime==4.9.3 PyYAML   # PyYAML is on the device already
# The LLM case (scripts/bench_gpu_llm.py: Qwen2-0.5B shape, LoRA r 16) also needs peft and what
# it imports beyond torch/transformers: add `peft==0.21.2 accelerate psutil` to that download.
# then: run(command="bash scripts/bench_gpu.sh [bert|llm|all]", carry=[".whl"]) (default all).
# Results: $OUT/bench_gpu.jsonl (bert) and $OUT/bench_gpu_llm.jsonl (llm).
set -euo pipefail
cd "$(dirname "$0")/.."
if compgen -G ".whl/*.whl" > /dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
    export PYTHONPATH="/tmp/site:${PYTHONPATH:-}"
fi
export PYTHONPATH="$PWD:${PYTHONPATH:-}" PYTHONUNBUFFERED=1
case="${1:-all}"
if [[ "$case" == bert || "$case" == all ]]; then
    timeout 280 python3 scripts/bench_gpu.py | tee "${OUT:-.}/bench_gpu.jsonl"
fi
if [[ "$case" == llm || "$case" == all ]]; then
    timeout 280 python3 scripts/bench_gpu_llm.py | tee "${OUT:-.}/bench_gpu_llm.jsonl"
fi
