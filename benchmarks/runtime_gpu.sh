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
if ! python -c "import pydantic" 2>/dev/null; then
  # Wheels are zip files: unpack them into a private site folder (no pip or network needed).
  site="$PWD/.gpu-site"
  mkdir -p "$site"
  for w in benchmarks/wheels/*.whl; do python -m zipfile -e "$w" "$site"; done
  export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
  python -c "import pydantic; print('pydantic', pydantic.VERSION, 'from benchmarks/wheels')"
fi
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,driver_version --format=csv > "$out/nvidia-smi.csv" || true
export TORCHINDUCTOR_COMPILE_THREADS=${TORCHINDUCTOR_COMPILE_THREADS:-8}
timeout 470 python benchmarks/runtime_gpu.py "$@" 2>&1 | tee "$out/runtime_gpu.txt"
