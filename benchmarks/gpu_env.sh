# Sourced by the prepared GPU scripts: the GPU image lacks pydantic (and simpy), which the planner's plan
# files need; benchmarks/fetch_gpu_wheels.sh fetched their wheels here, and wheels are zip files, so they
# are unpacked into a private site folder (no pip or network needed there).
if ! python -c "import pydantic" 2>/dev/null; then
  site="$PWD/.gpu-site"
  mkdir -p "$site"
  for w in benchmarks/wheels/*.whl; do python -m zipfile -e "$w" "$site"; done
  export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
  python -c "import pydantic; print('pydantic', pydantic.VERSION, 'from benchmarks/wheels')"
fi
