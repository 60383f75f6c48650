"""`flmplan eval`: the IQ suite on the last checkpoint of every stage of a run (or on one
checkpoint), through lm-evaluation-harness, with per-family accuracy, its 95 % interval and the
chance level."""

from __future__ import annotations

import json
import math
from pathlib import Path

from planner.errors import FlmplanError

SUITES = ("iq",)


def wilson(correct: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """95 % interval of a proportion (Wilson 1927): honest at 0 %, 100 % and small n."""
    if n == 0:
        return 0.0, 1.0
    p = correct / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def evaluate(target: Path, out: Path, suite: str = "iq", limit: int | None = None, n: int = 100,
             seed: int = 0, log=print) -> dict:
    """Score every stage's checkpoint on the suite; write lm-eval's results per stage and return the
    table (stage × family: accuracy, interval, chance)."""
    if suite not in SUITES:
        raise FlmplanError(f"Unknown suite {suite!r}; the suites are: {', '.join(SUITES)}.")
    from runtime.checkpoint import load_whole, stage_checkpoints

    stages, plan_path = stage_checkpoints(target)
    try:
        from lm_eval import simple_evaluate
        from lm_eval.tasks import TaskManager

        from runtime.evaluation.harness import FlmplanLM, write_tasks
    except ImportError:
        raise FlmplanError("flmplan eval runs on lm-evaluation-harness: pip install -e '.[eval]'.") from None
    from runtime.evaluation.iq_tasks import TASKS

    parametrizations = {}
    if plan_path is not None:
        from planner.plan.plan_file import load_plan

        plan = load_plan(plan_path)
        parametrizations = {k + 1: st.parametrization.model_dump() for k, st in enumerate(plan.stages)}
    from runtime.data.corpus import run_codec

    codec = run_codec(plan_path.parent if plan_path is not None else stages[0][1].parent.parent)
    names = write_tasks(out / "tasks", n=n, seed=seed)
    items = {t: [json.loads(line) for line in (out / "tasks" / f"{t}.jsonl").read_text().splitlines()][:limit]
             for t in TASKS}
    manager = TaskManager(include_path=str(out / "tasks"), include_defaults=False)   # only ours: no index of all
    rows = []
    for stage, ckpt in stages:
        log(f"stage {stage}: scoring {ckpt.name}")
        model = load_whole(ckpt, parametrizations.get(stage), verified=True)
        res = simple_evaluate(model=FlmplanLM(model, codec=codec), tasks=names, task_manager=manager, limit=limit,
                              log_samples=False, bootstrap_iters=0, verbosity="ERROR")
        (out / f"stage{stage}-lm-eval-results.json").write_text(json.dumps(res, indent=1, default=str))
        families: dict[str, dict] = {}
        for t in TASKS.values():
            r = res["results"][f"iq_{t.name}"]
            score = r.get("acc,none", r.get("exact_match,none"))
            k = len(items[t.name])
            f = families.setdefault(t.family, {"correct": 0.0, "n": 0, "chance": 0.0})
            f["correct"] += float(score) * k
            f["n"] += k
            f["chance"] += t.chance(items[t.name]) * k
        for family, f in sorted(families.items()):
            lo, hi = wilson(f["correct"], f["n"])
            rows.append({"stage": stage, "checkpoint": str(ckpt), "family": family, "accuracy": f["correct"] / f["n"],
                         "low": lo, "high": hi, "chance": f["chance"] / f["n"], "items": f["n"]})
    result = {"target": str(target), "suite": suite, "items_per_task": limit or n, "seed": seed, "rows": rows}
    (out / "iq.json").write_text(json.dumps(result, indent=1))
    return result
