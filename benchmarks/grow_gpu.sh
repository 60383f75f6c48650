#!/usr/bin/env bash
# What a GPU hour buys of grow-vs-scratch pairs (one GPU, under 5 minutes): benchmarks/grow_vs_scratch.py
# on cuda at the two proxy sizes of BENCHMARKS.md's CPU table, three seeds, its runs an hour and η per
# operator. Run after runtime_gpu.sh when device time is left.
#   here first:  bash benchmarks/fetch_gpu_wheels.sh
#   on the GPU:  bash benchmarks/grow_gpu.sh          (device tool: carry ["benchmarks/wheels"])
# Results in $OUT (or ./grow-gpu); record them in BENCHMARKS.md with the card and the date.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-grow-gpu}
mkdir -p "$out"
. benchmarks/gpu_env.sh
timeout 280 python benchmarks/grow_vs_scratch.py --device cuda --hidden 64,128 --seeds 0,1,2 \
    --out "$out/runs" --save "$out/grow_vs_scratch.json" 2>&1 | tee "$out/grow_gpu.txt"
