"""Sharded growth: each rank's peak memory while it grows the previous stage into its shards.

    python benchmarks/growth_memory.py [--nproc 4] [--layers 6 12] [--hidden 512 1024] [--json]

A two-stage plan (FSDP, zero 3, on N gloo processes) grows width and depth. The first launch
runs both stages and logs the loss of a fixed batch just before and just after the growth. A
second launch starts from a copy of only the first stage's final checkpoint, so its process
does nothing but start up and grow: its growth peak (VmHWM − VmRSS just before the growth, the
high-water mark reset there) is not hidden by memory an earlier stage left to the allocator.
Each rank's peak is set against its own share of the new stage's weights and Adam state
(fp32 parameters, m and v of its shards).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def plan_for(layers: tuple[int, int], hidden: tuple[int, int], nproc: int) -> dict:
    plan = json.loads((ROOT / "examples/plans/tiny_two_stage.json").read_text())
    plan["name"] = "growth memory benchmark"
    plan["cluster"]["gpus"] = nproc
    for k, st in enumerate(plan["stages"]):
        h = hidden[k]
        st["model"] = {"layers": layers[k], "hidden": h, "heads": h // 64, "ffn": 4 * h, "vocab": 256, "seq": 64}
        st["layout"] = {"tp": 1, "pp": 1, "dp": nproc, "micro_batch": 1, "global_batch": nproc, "zero": 3}
        st["steps"] = 2
        st["tokens"] = float(2 * nproc * 64)
        if k:
            dims = {"layers": list(layers), "hidden": list(hidden), "ffn": [4 * hidden[0], 4 * hidden[1]],
                    "heads": [hidden[0] // 64, hidden[1] // 64]}
            st["growth"] = {**st["growth"], "dims": {d: v for d, v in dims.items() if v[0] != v[1]},
                            "grow_steps": 2, "lr_rewarm_steps": 1}
    return plan


def launch(plan_path: Path, out: Path, nproc: int) -> None:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", "-m",
           "runtime.train", "--plan", str(plan_path), "--out", str(out), "--log-every", "1"]
    env = {**os.environ, "TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1", "OMP_NUM_THREADS": "1"}
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)
    if r.returncode != 0:
        raise SystemExit(f"run failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")


def events(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if '"event"' in x]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--nproc", type=int, default=4)
    ap.add_argument("--layers", type=int, nargs=2, default=(6, 12))
    ap.add_argument("--hidden", type=int, nargs=2, default=(512, 1024))
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    plan = plan_for(tuple(args.layers), tuple(args.hidden), args.nproc)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        plan_path = tmp / "plan.json"
        plan_path.write_text(json.dumps(plan))
        first = tmp / "both"
        launch(plan_path, first, args.nproc)
        ev = events(first)
        before = next(e["loss"] for e in ev if e["event"] == "before_growth")
        after = next(e["loss"] for e in ev if e["event"] == "after_growth")
        # Only the first stage's checkpoints: the second launch starts with the growth.
        second = tmp / "grow-only"
        (second / "checkpoints").mkdir(parents=True)
        for ck in (first / "checkpoints").iterdir():
            if ck.name.startswith("stage0-"):
                shutil.copytree(ck, second / "checkpoints" / ck.name)
        launch(plan_path, second, args.nproc)
        ev2 = events(second)
        memory = next(e for e in ev2 if e["event"] == "growth_memory")
        after2 = next(e["loss"] for e in ev2 if e["event"] == "after_growth")
    from planner.model.specs import ModelSpec

    params = [ModelSpec(**st["model"]).params() for st in plan["stages"]]
    if args.json:
        print(json.dumps({"nproc": args.nproc, "layers": args.layers, "hidden": args.hidden, "params": params,
                          "loss_before": before, "loss_after": after, "loss_after_fresh_process": after2,
                          "new_state_bytes": 12 * params[1], "memory": memory}, indent=1))
        return
    print(f"{args.nproc} processes, FSDP zero 3: {params[0] / 1e6:.1f}M → {params[1] / 1e6:.1f}M parameters "
          f"({args.layers[0]}×{args.hidden[0]} → {args.layers[1]}×{args.hidden[1]}); new stage's weights + Adam "
          f"state {12 * params[1] / 2**20:,.0f} MiB in all")
    print(f"fixed-batch loss: before growth {before:.6f}, after {after:.6f} (fresh process: {after2:.6f})")
    print(f"{'rank':>4} {'share MiB':>10} {'peak MiB':>9} {'peak/share':>10} {'model/share':>11}")
    for rank, row in enumerate(memory["ranks"]):
        share, peak = row["share_bytes"], row["peak_bytes"]
        print(f"{rank:4d} {share / 2**20:10.1f} {peak / 2**20:9.1f} {peak / share:10.2f} "
              f"{12 * params[1] / share:11.1f}")
    print(f"(peak: {memory['how']})")


if __name__ == "__main__":
    main()
