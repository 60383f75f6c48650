"""FreeLM's teacher signal on a tiny run on this machine (issue 17): does the held-out teacher
accuracy rise above chance while the language loss keeps falling, and what does the teacher
signal cost the language loss?

    python benchmarks/freelm_tiny.py [--out DIR] [--steps 600] [--every 2] [--json]

Three `flmplan run`s of the same one-stage tiny model (4 × 128, byte tokens of Python's standard
library, batch 16 × 64, one process, fp32):
- freelm: every `--every`-th step a teacher batch of synthetic propositions (runtime/objectives/freelm.py:
  retrieval, comparison, capitals; a tenth held out), `--steps` steps in all;
- lm, same compute: language modelling only, the same number of steps;
- lm, same language tokens: language modelling only, as many steps as freelm's language steps.
The held-out accuracy is the runtime's own `teacher_eval` at every checkpoint (each quarter of the run).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from runtime.objectives.freelm import synthetic_propositions, write_teacher_file  # noqa: E402


def plan(steps: int, objective: dict | None) -> dict:
    p = json.loads((ROOT / "examples/plans/tiny_one_stage.json").read_text())
    st = p["stages"][0]
    st["model"].update(hidden=128, heads=8, ffn=512, layers=4)
    st["layout"].update(micro_batch=16, global_batch=16)
    st.update(steps=steps, tokens=float(steps * 16 * 64), lr=3e-3)
    if objective:
        st["objective"] = objective
    return p


def run(name: str, p: dict, out: Path) -> list[dict]:
    """One `flmplan run` (reused when its folder is done); its metrics.jsonl records."""
    folder = out / name
    if not (folder / "DONE.json").exists():
        (out / f"{name}.plan.json").write_text(json.dumps(p))
        subprocess.run([sys.executable, "-m", "flmplan.cli", "run", str(out / f"{name}.plan.json"), "--nproc", "1",
                        "--out", str(folder)], cwd=ROOT, check=True, capture_output=True, timeout=7200)
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


def language_tail(rows: list[dict], share: float = 0.1) -> float:
    losses = [r["loss"] for r in rows if "loss" in r and "event" not in r]
    n = max(1, int(len(losses) * share))
    return float(np.mean(losses[-n:]))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "freelm-tiny")
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--every", type=int, default=2)
    ap.add_argument("--propositions", type=int, default=3000)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    teacher = write_teacher_file(synthetic_propositions(args.propositions, seed=0), args.out / "teacher.jsonl")
    language_steps = args.steps - args.steps // args.every
    objective = {"kind": "freelm", "teacher_every": args.every, "teacher_data": str(teacher)}
    runs = {"freelm": run("freelm", plan(args.steps, objective), args.out),
            "lm-same-compute": run("lm-same-compute", plan(args.steps, None), args.out),
            "lm-same-language-tokens": run("lm-same-tokens", plan(language_steps, None), args.out)}

    evals = [r for r in runs["freelm"] if r.get("event") == "teacher_eval"]
    tasks = sorted(evals[0].get("tasks", {}))
    for e in evals:
        lang = [r["loss"] for r in runs["freelm"] if "loss" in r and "event" not in r and r["step"] < e["step"]]
        e["language_loss_last_10"] = float(np.mean(lang[-10:]))
    ends = []
    for name, rows in runs.items():
        steps = [r for r in rows if "step" in r and "event" not in r]
        ends.append({"run": name, "steps": len(steps), "language_steps": sum("loss" in r for r in steps),
                     "language_loss": language_tail(rows)})
    if args.json:
        print(json.dumps({"steps": args.steps, "teacher_every": args.every, "teacher_evals": evals, "ends": ends},
                         indent=1))
        return
    print("## Held-out teacher accuracy (chance 50 %) during the freelm run\n")
    print("| step | accuracy | " + " | ".join(tasks) + " | teacher loss | language loss (last 10 steps) |")
    print("|---:|---:|" + "---:|" * len(tasks) + "---:|---:|")
    for e in evals:
        per_task = " | ".join(f"{e['tasks'][t]['accuracy']:.1%}" for t in tasks)
        print(f"| {e['step']} | {e['accuracy']:.1%} | {per_task} | {e['loss']:.3f} | "
              f"{e['language_loss_last_10']:.3f} |")
    print(f"\n({evals[-1]['propositions']} held-out propositions; batches of 16 filled by repeating each task's.)")

    print("\n## Language loss at the end (mean of the last 10 % of language steps)\n")
    print("| run | steps | language steps | language loss |")
    print("|---|---:|---:|---:|")
    for e in ends:
        print(f"| {e['run']} | {e['steps']} | {e['language_steps']} | {e['language_loss']:.4f} |")


if __name__ == "__main__":
    main()
