"""The IQ suite on a tiny grown model on this machine (issue 16): trained on the generators' train
split, does a model score above chance on the eval split, does an untrained one score at chance,
and does accuracy survive each growth?

    python benchmarks/iq_tiny.py [--out DIR] [--steps 3000] [--train-items 9000] [--items 100] [--json]

1. The train split of every task as text (runtime/evaluation/iq_tasks.py `training_text`: prompt and
   answer, items apart by a blank line; `--train-items` per task) is the run's only --data.
2. `flmplan run examples/plans/flm101b_plan.json --scale tiny --nproc 1 --steps S`: FLM-101B's three
   stages at CPU size (final stage 4 × 128, sequence 64 bytes), grown by MSG twice.
3. `flmplan eval` of the run (the last checkpoint of each stage) and of an untrained model of the
   final stage's shape, on `--items` eval-split items per task.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from runtime.evaluation.iq_tasks import training_text  # noqa: E402


def flmplan(*args: str) -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "flmplan.cli", *args], cwd=ROOT, check=True, timeout=7200,
                   stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def tiny_run_on_iq(out: Path, steps: int, train_items: int) -> tuple[Path, Path, float]:
    """FLM-101B's schedule at CPU size (`flmplan run --scale tiny`) trained on the IQ suite's train split as
    text: (the text file, the run folder, seconds)."""
    data = out / "iq_train.txt"
    data.write_text(training_text(train_items, seed=1))
    run = out / "run"
    seconds = flmplan("run", "examples/plans/flm101b_plan.json", "--scale", "tiny", "--nproc", "1", "--steps",
                      str(steps), "--data", str(data), "--out", str(run))
    return data, run, seconds


def untrained(run: Path, folder: Path) -> Path:
    """A one-checkpoint run folder: the final stage's shape, initialised as the runtime does, not trained."""
    import torch
    import torch.distributed as dist

    from planner.plan.plan_file import load_plan
    from runtime import checkpoint
    from runtime.model.decoder import Decoder
    from runtime.training.trainer import config_of

    st = load_plan(run / "plan.json").stages[-1]
    if not dist.is_initialized():                # DCP saves through a process group: this process alone
        dist.init_process_group("gloo", init_method=f"file://{folder.parent / 'pg-store'}", rank=0, world_size=1)
    torch.manual_seed(0)
    model = Decoder(config_of(st.model, st.parametrization))
    checkpoint.save(folder / "checkpoints", "stage1-step0000000", [model], [torch.optim.AdamW(model.parameters())],
                    {"stage": 1, "stage_numbering": 1, "step": 0, "stage_done": True, "global_step": 0,
                     "data_position": 0, "model": st.model.to_dict()})
    return folder


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "iq-tiny")
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--items", type=int, default=100)
    ap.add_argument("--train-items", type=int, default=9000)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    data, run, train_s = tiny_run_on_iq(args.out, args.steps, args.train_items)
    eval_s = flmplan("eval", str(run), "--items", str(args.items), "--out", str(args.out / "eval"))
    blank = args.out / "untrained"
    if not (blank / "checkpoints").exists():
        untrained(run, blank)
    flmplan("eval", str(blank), "--items", str(args.items), "--out", str(args.out / "eval-untrained"))
    rows = [("untrained (final shape)", r) for r in json.loads((args.out / "eval-untrained" / "iq.json").read_text())
            ["rows"]]
    rows += [(f"stage {r['stage']}", r) for r in json.loads((args.out / "eval" / "iq.json").read_text())["rows"]]
    if args.json:
        print(json.dumps({"steps": args.steps, "items": args.items, "train_bytes": data.stat().st_size,
                          "train_s": train_s, "eval_s": eval_s, "rows": [{"model": n, **r} for n, r in rows]},
                         indent=1))
        return
    print(f"train split: {data.stat().st_size / 1e6:.1f} MB; run {train_s / 60:.1f} min; `flmplan eval` of the "
          f"3-stage run {eval_s / 60:.1f} min\n")
    print("| model | family | accuracy | 95 % interval | chance |")
    print("|---|---|---:|---|---:|")
    for name, r in rows:
        mark = " **above chance**" if r["low"] > r["chance"] else ""
        print(f"| {name} | {r['family'].replace('_', ' ')} | {r['accuracy']:.1%}{mark} | "
              f"{r['low']:.1%}–{r['high']:.1%} | {r['chance']:.1%} |")


if __name__ == "__main__":
    main()
