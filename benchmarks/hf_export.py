"""The Hugging Face export of a real grown run (issue 37): FLM-101B's three stages at CPU size, trained
by `flmplan run` on the IQ suite's train split, exported with `flmplan export RUN --to hf`, loaded by
transformers, and scored on the IQ suite by lm-eval's own `hf` model beside `flmplan eval`.

    python benchmarks/hf_export.py [--out DIR] [--steps 600] [--items 50] [--json]

FLM-101B uses xPos, which no transformers architecture computes: the export is `--nearest` (rotary
alone), and the table shows what that costs on the same checkpoint — the logit difference the export
measures, and the IQ accuracy of the exported model against the run's own.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from iq_tiny import flmplan, tiny_run_on_iq  # noqa: E402  (this folder's runner of flmplan commands, timed)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "hf-export")
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--items", type=int, default=50)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    from runtime.evaluation.iq_tasks import TASKS

    args.out.mkdir(parents=True, exist_ok=True)
    _, run, train_s = tiny_run_on_iq(args.out, args.steps, train_items=3000)
    hf = args.out / "hf"
    export_s = flmplan("export", str(run), "--to", "hf", "--nearest", "--out", str(hf))
    flmplan("eval", str(run), "--items", str(args.items), "--out", str(args.out / "eval"))
    record = json.loads((hf / "flmplan-hf.json").read_text())
    stage = record["stage"]
    flm = json.loads((args.out / "eval" / f"stage{stage}-lm-eval-results.json").read_text())["results"]

    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_path=str(args.out / "eval" / "tasks"), include_defaults=False)
    got = simple_evaluate(model=HFLM(pretrained=str(hf), dtype="float32", device="cpu"), tasks=["iq"],
                          task_manager=manager, bootstrap_iters=0, verbosity="ERROR")["results"]
    rows = []
    for name in sorted(TASKS):
        task = f"iq_{name}"
        key = "acc,none" if "acc,none" in flm[task] else "exact_match,none"
        rows.append({"task": name, "metric": key.split(",")[0], "flmplan": flm[task][key], "hf": got[task][key]})
    result = {"steps": args.steps, "items": args.items, "train_s": train_s, "export_s": export_s,
              "stage": stage, "check": record["check"], "differences": record["differences"], "rows": rows}
    if args.json:
        print(json.dumps(result, indent=1))
        return
    diff, = record["differences"] or [{}]
    print(f"run {train_s / 60:.1f} min, export {export_s:.1f} s; stage {stage} step {record['step']}")
    print(f"export against transformers: max |Δlogit| {record['check'].get('max_abs_logit', float('nan')):.2g}")
    if diff:
        print(f"xPos → rotary on the same weights: max |Δlogit| {diff['max_abs_logit']:.3g}, "
              f"max |Δ log p| {diff['max_abs_logprob']:.3g}, next-token agreement {diff['argmax_agreement']:.1%}\n")
    print("| task | metric | flmplan eval (xPos) | lm-eval hf on the export (rotary) |")
    print("|---|---|---:|---:|")
    for r in rows:
        print(f"| {r['task']} | {r['metric']} | {r['flmplan']:.1%} | {r['hf']:.1%} |")


if __name__ == "__main__":
    main()
