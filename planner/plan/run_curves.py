"""A run folder's loss curve, for `flmplan fit-loss` (planner/growth/loss_fit.py fits it): the run's
metrics and the model it trained, from `proxy.json` (`flmplan tune`) or the one-stage plan of `flmplan run`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from planner.errors import FlmplanError
from planner.growth.loss_fit import Curve
from planner.plan.plan_file import load_plan


def read_curve(folder: Path) -> Curve:
    """A run folder's curve; one plain sentence for whatever is missing or wrong."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FlmplanError(f"{folder} is not a run folder.")
    metrics = folder / "metrics.jsonl"
    if not metrics.exists():
        raise FlmplanError(f"{folder} has no metrics.jsonl: it is not a run, or it never started.")
    records, data = {}, None
    for n, line in enumerate(metrics.read_text().splitlines(), 1):
        try:
            r = json.loads(line)
        except json.JSONDecodeError:
            raise FlmplanError(f"{metrics}, line {n}, is not JSON.") from None
        if r.get("event") == "start":
            data = r.get("data", data)
        elif "event" not in r and "loss" in r and "step" in r:
            records[(r.get("stage", 1), r["step"])] = r          # a resumed run logs steps again: keep the last
    if (folder / "proxy.json").exists():
        proxy = json.loads((folder / "proxy.json").read_text())
        params, width, kind = proxy["params"], proxy["width"], proxy["parametrization"]
        per_step, data = proxy["tokens_per_step"], proxy.get("data", data)
        final = proxy.get("final_loss")
    elif (folder / "plan.json").exists():
        plan = load_plan(folder / "plan.json")
        if len(plan.stages) > 1:
            raise FlmplanError(f"{folder} is a run of {len(plan.stages)} stages; a loss law is fitted to "
                               "one model's curve, so give one-stage runs.")
        st = plan.stages[0]
        params, width, kind = st.model.params(), st.model.hidden, st.parametrization.kind
        per_step = st.layout.global_batch * st.model.seq
        final = None
        done = folder / "DONE.json"
        if done.exists():
            data = json.loads(done.read_text()).get("data", data)
    else:
        raise FlmplanError(f"{folder} has neither proxy.json (flmplan tune) nor plan.json (flmplan run).")
    steps = sorted(s for (stage, s) in records if stage == 1)
    losses = np.array([records[(1, s)]["loss"] for s in steps], dtype=float)
    if len(steps) < 2:
        raise FlmplanError(f"{folder} has {len(steps)} training step(s) in metrics.jsonl; a curve needs more.")
    if not np.all(np.isfinite(losses)):
        raise FlmplanError(f"{folder} diverged (a loss is not finite); leave it out of the fit.")
    tokens = (np.array(steps, dtype=float) + 1) * per_step
    return Curve(run=str(folder), params=float(params), width=int(width), parametrization=kind,
                 data=str(data), tokens=tokens, loss=losses, final=final)


def read_curves(folders: list[Path]) -> list[Curve]:
    if not folders:
        raise FlmplanError("fit-loss needs run folders (from `flmplan tune` or `flmplan run`).")
    curves = [read_curve(f) for f in folders]
    datas = {c.data for c in curves}
    if len(datas) > 1:
        raise FlmplanError(f"The runs were trained on different data ({'; '.join(sorted(datas))}); a loss law "
                           "holds for one kind of data.")
    if len({c.params for c in curves}) < 2:
        raise FlmplanError("The runs are all of one size; a loss law needs runs of at least two widths.")
    return curves
