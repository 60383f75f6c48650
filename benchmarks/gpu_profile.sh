#!/usr/bin/env bash
# The one prepared script for a lent GPU machine (Python 3.12, torch ≥ 2.11, numpy, typer, rich):
# measure the GPU's profile, then check the cost model against the whole layers it measured.
#   bash benchmarks/gpu_profile.sh            (results in $OUT, or ./gpu-profile)
# Commit the profile under profiles/data/measured/ with its source line and record the GEMM ceiling
# (device.measured_gemm_max_tflops against the 989 TFLOP/s peak) and the layer errors in BENCHMARKS.md.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-gpu-profile}
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv > "$out/nvidia-smi.csv" || true
timeout 420 python -m flmplan.cli profile --device cuda --quick --accept-noisy --out "$out/profile.json" 2> "$out/profile.log"
PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" python benchmarks/layer_fidelity.py "$out/profile.json" > "$out/layer_fidelity.txt"
python - "$out/profile.json" <<'PY'
import json, sys
p = json.load(open(sys.argv[1]))
d = p["device"]
print(f"{d['name']}: best bf16 GEMM {d['measured_gemm_max_tflops']:.0f} TFLOP/s of {d['peak_tflops']:.0f} peak "
      f"({d['measured_gemm_max_tflops'] / d['peak_tflops']:.1%}); fitted e_max {p['gemm']['e_max']:.3f}")
a = p["attention"]
print(f"attention: matmuls at {a['fwd_eff']:.2f} / {a['bwd_eff']:.2f} of peak (fwd / bwd), "
      f"{a.get('fwd_score_ps', 0):.3g} / {a.get('bwd_score_ps', 0):.3g} ps a score, "
      f"{a.get('fwd_row_ps', 0):.3g} / {a.get('bwd_row_ps', 0):.3g} ps a query row")
if "issue_probe" in d:
    i = d["issue_probe"]
    print(f"issue: {d['issue_us_per_kernel']:.1f} us a kernel (the runtime's layer at h{i['layer']['hidden']}: "
          f"{i['layer']['host_s'] * 1e3:.2f} ms to issue {i['kernels']} kernels); a lone kernel's launch "
          f"{p['memory_bound']['overhead_us']:.1f} us")
t = p["timing"]
print(f"stability: median spread {t['median_spread']:.1%}, worst {t['max_spread']:.1%}; layer {t['repeat']['layer']} "
      f"measured again at the end {t['repeat']['difference']:+.1%} (target within 3 %)")
for layer in p["layers"]:
    step = layer["forward_s"] + layer["backward_s"]
    print(f"  h{layer['hidden']}: fwd+bwd {step * 1e3:.2f} ms, host issue {layer['host_s'] * 1e3:.2f} ms "
          f"({'host-bound' if layer['host_s'] > 0.8 * step else 'device-bound'}), spread {layer['spread']:.1%}")
PY
cat "$out/layer_fidelity.txt"
