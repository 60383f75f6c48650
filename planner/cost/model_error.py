"""The cost model's own error, as a plan draws it: measured step time / predicted step time on runs the
model was not fitted to.

By default these are the published production runs of planner/data/cases.json (the factors are written
with the fitted values by `python -m profiles.derived --fit` into profiles/data/calibration/derived.json).
A profile refitted to the user's own runs (`flmplan profile --refit`) carries its own factors: the runs
it held out, or, without any, the runs it was fitted to (in sample, so narrower than the truth). Each
Monte Carlo trial of a whole run draws one factor (planner/sim/whole_run.py): a run at random, each run
counting once however many rows it has, then one of its rows.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from importlib import resources

from planner.cost.device_profile import Profile


@dataclass(frozen=True)
class ModelError:
    """Step-time factors (measured / predicted) of the runs they come from, and where they come from."""

    source: str
    factors: tuple[tuple[str, str, float], ...]          # (run, row, measured / predicted step time)

    @property
    def runs(self) -> list[str]:
        return sorted({run for run, _, _ in self.factors})

    def draw(self, rng: random.Random) -> float:
        run = rng.choice(self.runs)
        return rng.choice([f for r, _, f in self.factors if r == run])

    def mean(self) -> float:
        """The mean factor, each run weighted once (what the draws average to)."""
        runs = self.runs
        return sum(sum(f for r, _, f in self.factors if r == run) / sum(r == run for r, _, _ in self.factors)
                   for run in runs) / len(runs)

    def to_json(self) -> dict:
        values = [f for _, _, f in self.factors]
        return {"source": self.source, "runs": len(self.runs), "rows": len(self.factors),
                "mean_factor": round(self.mean(), 4), "min_factor": round(min(values), 4),
                "max_factor": round(max(values), 4),
                "factors": {row: round(f, 4) for _, row, f in self.factors}}


def production_error() -> ModelError:
    """The built-in error: the production rows, each predicted out of sample (no fit uses them)."""
    record = json.loads(resources.files("profiles").joinpath("data/calibration/derived.json").read_text())
    rows = record["production"]
    return ModelError(
        source="the cost model's out-of-sample error on published production runs (planner/data/cases.json)",
        factors=tuple((r["run"], r["case"], r["step_factor"]) for r in rows))


def model_error_for(profile: Profile) -> ModelError:
    """The error a plan made with `profile` draws: the user's own runs where the profile was refitted to
    them, the production runs otherwise."""
    own = profile.calibration.get("step_factors")
    if own:
        where = "held out of the refit" if profile.calibration.get("held_out") else "fitted (in sample)"
        return ModelError(source=f"your own runs, {where}, measured by `flmplan profile --refit`",
                          factors=tuple((r["run"], r["row"], r["factor"]) for r in own))
    return production_error()
