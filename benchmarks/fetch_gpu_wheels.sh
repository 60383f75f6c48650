#!/usr/bin/env bash
# Run here (with network to PyPI) before a GPU session: the GPU image (Python 3.12, torch, numpy,
# typer, rich) lacks pydantic, which the runtime's plan loader needs. This puts pydantic and its
# four dependencies (pydantic-core, annotated-types, typing-extensions, typing-inspection; about
# 2.8 MB) for CPython 3.12 on x86-64 Linux into benchmarks/wheels/ (git-ignored); pass that path in
# the device tool's `carry` and benchmarks/runtime_gpu.sh unpacks them there.
set -euo pipefail
cd "$(dirname "$0")"
rm -rf wheels && mkdir -p wheels
python -m pip download -q --only-binary=:all: --python-version 3.12 --implementation cp --abi cp312 \
  --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 -d wheels pydantic
ls wheels
