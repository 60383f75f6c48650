#!/usr/bin/env bash
# The prepared GPU check of the runtime (one H100/H200, under 8 minutes): a plain PyTorch loop and
# `flmplan run` on the same single-GPU shapes (≈0.35B, 0.75B, 1.3B, 2.7B at seq 2048; eager, and
# compiled at 1.3B; about 5–6 minutes), with tokens/s, MFU, peak memory and the planner's prediction.
#   here first:  bash benchmarks/fetch_gpu_wheels.sh
#   on the GPU:  bash benchmarks/runtime_gpu.sh       (device tool: carry ["benchmarks/wheels"])
# Results in $OUT (or ./runtime-gpu); record them in BENCHMARKS.md with the card and the date.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-runtime-gpu}
mkdir -p "$out"
. benchmarks/gpu_env.sh
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,driver_version --format=csv > "$out/nvidia-smi.csv" || true
export TORCHINDUCTOR_COMPILE_THREADS=${TORCHINDUCTOR_COMPILE_THREADS:-8}
timeout 470 python benchmarks/runtime_gpu.py "$@" 2>&1 | tee "$out/runtime_gpu.txt"
