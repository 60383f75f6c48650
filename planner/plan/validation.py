"""`flmplan validate`: hold a run against the plan it executed.

A run folder (written by `flmplan run`) holds the plan it ran (`plan.json`) and one record per
optimizer step (`metrics.jsonl`). For each stage this module puts the measured step time,
tokens/s, MFU and peak memory beside what the cost model predicts for that stage's model and
layout on the run's own device and process count, from a profile of that device.

The first logging window of each stage after every (re)start is warm-up (compilation, the
allocator, the optimizer's first state) and is left out, with at least TIMING_WARMUP_STEPS steps.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path

from planner.cost.device import core_sharing
from planner.cost.device_profile import Profile, builtin_profile
from planner.errors import FlmplanError
from planner.plan.plan_file import Plan, load_plan

TIMING_WARMUP_STEPS = 2


class ValidateError(FlmplanError):
    """A run folder, plan or profile that cannot be checked; the message says why."""


@dataclass(frozen=True)
class RunRecord:
    """What a run folder says: its step records and the facts of its (last) start."""

    folder: Path
    steps: list[dict]
    start: dict
    checkpoint_s: tuple[float, ...] = ()     # each checkpoint's write time, as the run logged it

    def checkpoints(self) -> dict | None:
        """How long its checkpoints took: what `flmplan simulate --checkpoint-min` assumes."""
        if not self.checkpoint_s:
            return None
        return {"count": len(self.checkpoint_s), "median_s": statistics.median(self.checkpoint_s),
                "max_s": max(self.checkpoint_s)}


@dataclass(frozen=True)
class StageCheck:
    stage: int                 # the growth stage, numbered from 1 like everywhere
    name: str
    steps: int                 # steady steps compared
    warmup_steps: int          # steps left out as warm-up
    measured_step_s: float
    predicted_step_s: float
    measured_tokens_per_s: float
    predicted_tokens_per_s: float
    measured_mfu: float
    predicted_mfu: float       # against the same peak as the measured MFU (the run's)
    measured_memory_gib: float
    predicted_memory_gib: float
    memory_judged: bool        # False on a CPU: the process's resident set includes the runtime itself
    teacher_steps: int = 0     # of the steady steps, FreeLM teacher batches (same batch and length, counted alike)
    compiled: bool = False     # predicted for compiled blocks (a GPU run with torch.compile; Software.compiled)

    @property
    def step_error(self) -> float:
        return self.predicted_step_s / self.measured_step_s - 1

    @property
    def tokens_error(self) -> float:
        return self.predicted_tokens_per_s / self.measured_tokens_per_s - 1

    @property
    def memory_error(self) -> float:
        return self.predicted_memory_gib / self.measured_memory_gib - 1 if self.measured_memory_gib else 0.0

    def passes(self, tolerance: float) -> bool:
        return abs(self.step_error) <= tolerance and (not self.memory_judged or abs(self.memory_error) <= tolerance)

    def to_json(self) -> dict:
        return {**self.__dict__, "step_error": self.step_error, "tokens_error": self.tokens_error,
                "memory_error": self.memory_error}


def read_run(folder: Path) -> RunRecord:
    if not folder.is_dir():
        raise ValidateError(f"{folder} is not a run folder; pass the --out folder of `flmplan run`.")
    path = folder / "metrics.jsonl"
    if not path.is_file():
        raise ValidateError(f"{folder} has no metrics.jsonl; it is not a run folder, or the run never started.")
    steps, starts, saves = [], [], []
    for i, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            raise ValidateError(f"{path} line {i} is not JSON; the file is damaged.") from None
        if not isinstance(rec, dict):
            raise ValidateError(f"{path} line {i} is not a record; the file is damaged.")
        if rec.get("event") == "start":
            starts.append(rec)
        elif rec.get("event") == "checkpoint" and isinstance(rec.get("seconds"), int | float):
            saves.append(float(rec["seconds"]))
        elif "step" in rec and "step_s" in rec:
            rec["_start"] = len(starts)
            steps.append(rec)
    if not steps:
        raise ValidateError(f"{path} has no step records yet; validate once the run has logged some steps.")
    return RunRecord(folder, steps, starts[-1] if starts else {}, tuple(saves))


def steady_steps(records: list[dict]) -> tuple[list[dict], int]:
    """The records of one stage without warm-up: the first logging window (records that share one
    timing) of each (re)start, and at least TIMING_WARMUP_STEPS steps of it; returns (steady, left out)."""
    steady, dropped = [], 0
    by_start: dict[int, list[dict]] = {}
    for r in records:
        by_start.setdefault(r["_start"], []).append(r)
    for recs in by_start.values():
        i = 0
        while i < len(recs) and (i < TIMING_WARMUP_STEPS or recs[i]["step_s"] == recs[i - 1]["step_s"]):
            i += 1
        steady += recs[i:]
        dropped += i
    return steady, dropped


def run_profile_for(run: RunRecord, plan: Plan, profile: Profile | None) -> Profile:
    """The profile given, checked against the run's device; else the built-in one of its GPU."""
    start = run.start
    kind = start.get("device_kind")
    dtype = start.get("dtype") or run.steps[-1].get("dtype")
    if profile is None:
        if kind == "cpu":
            raise ValidateError("This run was on a CPU, which has no built-in profile; measure this machine with "
                                "`flmplan profile --device cpu --out cpu-profile.json` and pass it with --profile.")
        gpu = start.get("gpu") or plan.cluster.gpu
        return builtin_profile(gpu)
    if kind and profile.device.get("kind") != kind:
        raise ValidateError(f"The profile describes a {profile.device.get('kind')} device but the run was on "
                            f"{kind}; pass a profile of the run's device.")
    if dtype and profile.dtype != dtype:
        raise ValidateError(f"The profile was measured in {profile.dtype} but the run trained in {dtype}; "
                            f"measure again with `flmplan profile --dtype {dtype}`.")
    return profile


def shared_cores(run: RunRecord, profile: Profile) -> Profile:
    """A CPU run's ranks split the machine's cores: a rank with T threads, of P ranks on C cores,
    computes on min(T, C / P) cores, and each kind of the profile's times scales as
    planner/cost/device.py core_sharing says."""
    start = run.start
    if start.get("device_kind") != "cpu":
        return profile
    cores, processes = max(1, start.get("cores", 1)), max(1, start.get("processes", 1))
    scaled = core_sharing(profile, min(start.get("threads", cores), cores / processes), cores)
    factors = {k: v * scaled[k] for k, v in profile.time_factors().items()}
    # Who computes when is the cost model's to say (a pipeline's fill and drain leave ranks idle): it
    # gives an idle rank's cores to the busy ones (planner/cost/device.py busy_speedup). What was scaled
    # is kept: the profiler's probe ran on its own cores (planner/cost/step.py probe_residuals).
    device = {**profile.device, "shared_cores": {"cores": cores, "processes": processes,
                                                 "threads": start.get("threads", cores), "scaled": scaled}}
    return replace(profile, calibration={**profile.calibration, "time_factors": factors}, device=device)


def check_run(run: RunRecord, plan: Plan, profile: Profile) -> list[StageCheck]:
    from planner.cost.step import estimate_step
    from planner.model.specs import ClusterSpec, Software, get_gpu

    processes = run.start.get("processes")
    profile = shared_cores(run, profile)
    checks = []
    for k, stage in enumerate(plan.stages):
        records = [r for r in run.steps if r.get("stage") == k + 1]
        if not records:
            continue
        if records[0].get("stage_name") != stage.name:
            raise ValidateError(f"The run's stage {k + 1} is {records[0].get('stage_name')!r} but the plan's is "
                                f"{stage.name!r}: the plan does not match the run; pass the plan it ran with --plan.")
        layout, model = stage.layout, stage.model
        tokens_per_step = layout.global_batch * model.seq
        logged = records[-1]["tokens_per_s"] * records[-1]["step_s"]
        if abs(logged / tokens_per_step - 1) > 1e-6:
            raise ValidateError(f"The run's stage {k + 1} trained {logged:,.0f} tokens a step but the plan's "
                                f"{tokens_per_step:,}: the plan does not match the run; pass the plan it ran "
                                "with --plan.")
        if processes is not None and layout.gpus != processes:
            raise ValidateError(f"The run had {processes} processes but the plan's stage {k + 1} lays out "
                                f"{layout.gpus}: the plan does not match the run; pass the plan it ran with --plan.")
        steady, dropped = steady_steps(records)
        if not steady:
            continue
        # A GPU run's blocks under torch.compile fuse their element-wise ops; on a CPU inductor's
        # kernels were no faster than eager (BENCHMARKS.md#gpu-image-host-time), and the run is costed as eager.
        compiled = run.start.get("device_kind") == "cuda" and bool(steady[-1].get("compile"))
        est = estimate_step(model, ClusterSpec.on(get_gpu(plan.cluster.gpu), layout.gpus), layout, profile,
                            software=Software(compiled=compiled))
        step_s = statistics.median(r["step_s"] for r in steady)
        mfu = statistics.median(r["mfu"] for r in steady)
        measured_tps = tokens_per_step / step_s
        checks.append(StageCheck(
            stage=k + 1, name=stage.name, steps=len(steady), warmup_steps=dropped,
            measured_step_s=step_s, predicted_step_s=est.iteration_s,
            measured_tokens_per_s=measured_tps, predicted_tokens_per_s=est.tokens_per_s,
            measured_mfu=mfu, predicted_mfu=mfu * est.tokens_per_s / measured_tps,
            measured_memory_gib=max(r["memory_gib_per_gpu"] for r in steady),
            predicted_memory_gib=est.memory.total_gib,
            memory_judged=run.start.get("device_kind") == "cuda",
            teacher_steps=sum(r.get("signal") == "teacher" for r in steady),
            compiled=compiled,
        ))
    if not checks:
        raise ValidateError(f"The run in {run.folder} has only warm-up steps so far (the first logging window of "
                            "each stage); validate once it has logged more.")
    return checks


def load_run(folder: Path, plan_path: Path | None = None) -> tuple[RunRecord, Plan]:
    """The run's records and the plan it ran (its own plan.json unless another is given)."""
    run = read_run(folder)
    plan_path = plan_path or folder / "plan.json"
    if not plan_path.is_file():
        raise ValidateError(f"{folder} has no plan.json, the plan the run executed (`flmplan run` writes it "
                            "there); `flmplan validate` takes it with --plan.")
    return run, load_plan(plan_path)


def validate_run(folder: Path, plan_path: Path | None = None, profile: Profile | None = None
                 ) -> tuple[RunRecord, Profile, list[StageCheck]]:
    """Read the run (and its plan) before any costing, then compare every stage."""
    run, plan = load_run(folder, plan_path)
    prof = run_profile_for(run, plan, profile)
    return run, prof, check_run(run, plan, prof)


# A weak pull of each log factor towards 1 (as measured), so kinds of work the runs cannot tell
# apart stay where the profile measured them instead of drifting.
REFIT_PRIOR = 0.05
# Factors stay within these; a launch may cost far more in a real step than a bare kernel's (the
# framework's dispatch: autograd, DTensor, hooks), so its bound is wider.
REFIT_BOUNDS = {"launch": (0.1, 100.0)}
DEFAULT_BOUNDS = (0.1, 10.0)


@dataclass(frozen=True)
class Refit:
    profile: Profile
    fitted: list[tuple[Path, StageCheck]]          # the fitted runs' stages, with the refit profile
    before: list[tuple[Path, StageCheck]]          # the held-out runs' stages, with the base profile
    after: list[tuple[Path, StageCheck]]           # and with the refit profile


def _checks(runs: list[tuple[RunRecord, Plan]], profile: Profile) -> list[tuple[Path, StageCheck]]:
    out = []
    for run, plan in runs:
        out += [(run.folder, c) for c in check_run(run, plan, run_profile_for(run, plan, profile))]
    return out


def rms(errors: Iterable[float]) -> float:
    """Root mean square of relative errors; 0 for none."""
    values = list(errors)
    return (sum(e * e for e in values) / len(values)) ** 0.5 if values else 0.0


def rms_error(checks: list[tuple[Path, StageCheck]]) -> float:
    return rms(c.step_error for _, c in checks)


def refit_profile(base: Profile, fit_dirs: list[Path], holdout_dirs: list[Path]) -> Refit:
    """Fit the profile's time factors (CALIBRATED_KINDS) to the step times of measured runs by
    least squares on log(predicted / measured), and check the result on runs left out of the fit."""
    import math

    import numpy as np
    from scipy.optimize import least_squares

    from planner.cost.device_profile import CALIBRATED_KINDS

    fit_runs = [load_run(f) for f in fit_dirs]
    holdout_runs = [load_run(f) for f in holdout_dirs]
    for run, plan in fit_runs + holdout_runs:
        run_profile_for(run, plan, base)            # every run must suit the profile, before fitting

    def calibrated(x: np.ndarray) -> Profile:
        given = base.time_factors()
        factors = {k: given[k] * math.exp(v) for k, v in zip(CALIBRATED_KINDS, x, strict=True)}
        return replace(base, calibration={**base.calibration, "time_factors": factors})

    def residuals(x: np.ndarray) -> np.ndarray:
        errs = [math.log(c.predicted_step_s / c.measured_step_s) for _, c in _checks(fit_runs, calibrated(x))]
        return np.array(errs + [REFIT_PRIOR * v for v in x])

    bounds = [REFIT_BOUNDS.get(k, DEFAULT_BOUNDS) for k in CALIBRATED_KINDS]
    lo, hi = ([math.log(b[i]) for b in bounds] for i in (0, 1))
    sol = least_squares(residuals, np.zeros(len(CALIBRATED_KINDS)), bounds=(lo, hi), diff_step=1e-3)
    fitted_profile = calibrated(sol.x)
    fitted = _checks(fit_runs, fitted_profile)
    before = _checks(holdout_runs, base)
    after = _checks(holdout_runs, fitted_profile)
    calibration = {
        **fitted_profile.calibration,
        "time_factors": {k: round(v, 4) for k, v in fitted_profile.time_factors().items()},
        "fitted_to": [str(f) for f in fit_dirs],
        "method": "scipy least_squares on log(predicted / measured step time) of every stage's steady steps, "
                  f"log factors pulled to 0 with weight {REFIT_PRIOR}",
        "rms_fitted_before": round(rms_error(_checks(fit_runs, base)), 4),
        "rms_fitted_after": round(rms_error(fitted), 4),
    }
    if holdout_dirs:
        calibration.update(held_out=[str(f) for f in holdout_dirs], rms_held_out_before=round(rms_error(before), 4),
                           rms_held_out_after=round(rms_error(after), 4))
    # The refit model's own error on these runs, which a plan made with this profile draws
    # (planner/cost/model_error.py): the held-out runs', or without any the fitted runs' (in sample).
    calibration["step_factors"] = [{"run": str(folder), "row": f"{folder}:{c.name}",
                                    "factor": round(c.measured_step_s / c.predicted_step_s, 4)}
                                   for folder, c in (after if holdout_dirs else fitted)]
    profile = replace(fitted_profile, source="refit", name=f"{base.name}-refit", calibration=calibration,
                      notes=f"{base.notes} Refit by `flmplan profile --refit` to the runs in calibration.fitted_to.")
    return Refit(profile, fitted, before, after)
