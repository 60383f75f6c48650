"""The runtime on this machine: tokens/s and MFU of the tiny plan, and each layout's overhead
against a single process on the same model, batch and data (fp32, gloo).

    python benchmarks/runtime_layouts.py [--steps 12] [--dtype fp32|bf16] [--json]

MFU is relative to the device's own measured matmul rate in the run's dtype (runtime/train.py). On a
2-core CPU, processes share the cores: a layout's "overhead" is its step time over the
single process's, for the same total work, so it shows the cost of the collectives and the
pipeline bubble, not a speed-up.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LAYOUTS = {
    "single process": (1, {}),
    "FSDP dp=2 (zero 3)": (2, {"dp": 2, "zero": 3}),
    "tensor parallel tp=2": (2, {"tp": 2}),
    "tp=2 + sequence parallel": (2, {"tp": 2, "sequence_parallel": True}),
    # Pipelines hold whole (unsharded) stages: zero 3 is not combined with pp > 1.
    "pipeline pp=2 (1F1B)": (2, {"pp": 2, "zero": 1}),
    "pipeline pp=2 interleaved v=2": (2, {"pp": 2, "interleave": 2, "zero": 1}),
    "tp=2 × pp=2": (4, {"tp": 2, "pp": 2, "zero": 1}),
    "FSDP dp=4": (4, {"dp": 4}),
}


def run(layout: dict, nproc: int, steps: int, folder: Path, dtype: str, log_every: int = 1) -> list[dict]:
    plan = json.loads((ROOT / "examples/plans/tiny_one_stage.json").read_text())
    st = plan["stages"][0]
    st["model"].update(layers=4, hidden=256, heads=8, ffn=1024, seq=128)
    st["layout"].update(micro_batch=4, global_batch=16, **layout)
    plan["cluster"]["gpus"] = nproc
    st["steps"] = steps
    path = folder / "plan.json"
    path.write_text(json.dumps(plan))
    out = folder / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", "-m",
           "runtime.train", "--plan", str(path), "--out", str(out), "--checkpoint-every", str(10 * steps),
           "--log-every", str(log_every), "--dtype", dtype]
    env = {**os.environ, "TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1", "OMP_NUM_THREADS": "1"}
    subprocess.run(cmd, cwd=ROOT, env=env, check=True, capture_output=True, timeout=900)
    return [r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "step_s" in r]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--dtype", default="fp32", help="the runtime's dtype policy (bf16 is slow on CPUs)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    base, out = None, []
    if not args.json:
        print(f"{'layout':32} {'procs':>5} {'step s':>8} {'tokens/s':>9} {'MFU':>6} {'overhead':>9} {'final loss':>10}")
    for name, (nproc, layout) in LAYOUTS.items():
        with tempfile.TemporaryDirectory() as tmp:
            rows = run(layout, nproc, args.steps, Path(tmp), args.dtype)
        steady = rows[2:]   # skip warm-up steps
        step_s = statistics.median(r["step_s"] for r in steady)
        base = base or step_s
        row = {"layout": name, "processes": nproc, "step_s": step_s,
               "tokens_per_s": statistics.median(r["tokens_per_s"] for r in steady),
               "mfu": statistics.median(r["mfu"] for r in steady), "overhead": step_s / base,
               "final_loss": rows[-1]["loss"]}
        out.append(row)
        if not args.json:
            print(f"{name:32} {nproc:5d} {step_s:8.3f} {row['tokens_per_s']:9,.0f} {row['mfu']:6.1%} "
                  f"{row['overhead']:8.2f}× {row['final_loss']:10.4f}", flush=True)
    if args.json:
        print(json.dumps({"steps": args.steps, "dtype": args.dtype, "rows": out}, indent=1))


if __name__ == "__main__":
    main()
