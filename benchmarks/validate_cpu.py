"""The closed loop on this CPU: every layout of runtime_layouts.py and each stage of the tiny
FLM-101B plan, run for real (gloo, fp32), then held against the cost model's prediction with
`flmplan validate` and a profile of this machine (all its cores); then
`flmplan profile --refit` on half of the runs, checked on the other half.

    python benchmarks/validate_cpu.py [--runs DIR] [--steps 24] [--repeats 2] [--json]

DIR keeps the run folders and profiles (a second call reuses them); default a temporary folder.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from runtime_layouts import LAYOUTS, run  # noqa: E402

from flmplan.cli import VALIDATE_TOLERANCE  # noqa: E402  (issue 11's target for a CPU run)
from planner.cost.device_profile import load_profile  # noqa: E402
from planner.plan.validation import ValidateError, refit_profile, rms, rms_error, validate_run  # noqa: E402
from runtime.parallel.cores import usable_cores  # noqa: E402


def flmplan(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "flmplan.cli", *args], cwd=ROOT, check=True, capture_output=True,
                   timeout=1800)


def profile_for(threads: int, folder: Path) -> Path:
    path = folder / f"cpu-{threads}-threads.json"
    if not path.exists():
        flmplan("profile", "--device", "cpu", "--quick", "--threads", str(threads), "--out", str(path))
    return path


# The runs held out of the refit: each beside a run of its kind that is fitted (tp=2 and
# tp=2 + sp, pp=2 and its interleaved schedule, tp=2 and tp=2 × pp=2, FSDP on 2 and on 4).
HELD_OUT = ("tp=2 + sequence parallel", "pipeline pp=2 interleaved", "tp=2 × pp=2", "FSDP dp=4")


def runs(folder: Path, steps: int, repeats: int) -> list[tuple[str, list[Path]]]:
    """Every run `repeats` times, round after round (this machine's speed drifts over tens of
    seconds: a run's repeat comes minutes later, not right after it); each run's folders."""
    out: dict[str, list[Path]] = {}
    for r in range(repeats):
        tail = f".{r}" if r else ""
        for i, (name, (nproc, layout)) in enumerate(LAYOUTS.items()):
            f = folder / f"layout-{i}{tail}"
            if not (f / "run" / "DONE.json").exists():
                f.mkdir(parents=True, exist_ok=True)
                run(layout, nproc, steps, f, "fp32", log_every=2)
            out.setdefault(f"{name} ({nproc} proc)", []).append(f / "run")
        flm = folder / f"flm-tiny{tail}"
        if not (flm / "DONE.json").exists():
            flmplan("run", str(ROOT / "examples/plans/flm101b_plan.json"), "--scale", "tiny", "--nproc", "2",
                    "--steps", str(steps), "--out", str(flm), "--log-every", "2")
        out.setdefault("FLM-101B tiny plan (2 proc)", []).append(flm)
    return list(out.items())


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=Path, default=None)
    # 24 steps: 11 timing windows of 2 steps after the warm-up, where 14 gave 6 (BENCHMARKS.md#cpu-runs-24-steps)
    ap.add_argument("--steps", type=int, default=24)
    ap.add_argument("--repeats", type=int, default=2, help="runs of each layout, round after round")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    say = (lambda *a, **k: None) if args.json else print
    folder = args.runs or Path(tempfile.mkdtemp(prefix="flmplan-validate-"))
    folder.mkdir(parents=True, exist_ok=True)
    cores = usable_cores()
    all_runs = runs(folder, args.steps, args.repeats)
    profile = load_profile(profile_for(cores, folder))
    say(f"{'run':42} {'stage':>5} {'step s measured (each repeat)':>30} {'predicted':>10} {'errors':>16} "
        f"{'error of the median':>20}")
    errors, rows = [], []      # errors: of the median of each run's repeats, per stage
    for name, paths in all_runs:
        try:
            checks = [validate_run(path, None, profile)[2] for path in paths]
        except ValidateError as err:
            say(f"{name:42} {err}")
            rows.append({"run": name, "refused": str(err)})
            continue
        for stage in zip(*checks, strict=True):
            measured = [c.measured_step_s for c in stage]
            predicted = stage[0].predicted_step_s
            errors.append(predicted / statistics.median(measured) - 1)
            rows.append({"run": name, "stage": stage[0].stage, "measured_step_s": measured,
                         "predicted_step_s": predicted, "errors": [c.step_error for c in stage],
                         "error_of_median": errors[-1]})
            say(f"{name:42} {stage[0].stage:5d} {' '.join(f'{m:.3f}' for m in measured):>30} {predicted:10.3f} "
                f"{' '.join(f'{c.step_error:+.1%}' for c in stage):>16} {errors[-1]:+20.1%}")
    within = sum(abs(e) <= VALIDATE_TOLERANCE for e in errors)
    say(f"error of the median: rms {rms(errors):.1%}, {within} of {len(errors)} within {VALIDATE_TOLERANCE:.0%}")
    say(f"(this machine: {cores} cores; profile measured with {profile.software['threads']} threads; "
        f"{args.repeats} runs of each, warm-up steps left out)")

    # Refit on half the runs, the rest held out: one of each kind on either side, so that every
    # time factor a held-out run leans on is one the fitted runs constrain (the two sharded data-
    # parallel runs, which alone lean on the collectives, must not both be held out).
    fit = [p for name, paths in all_runs if not name.startswith(HELD_OUT) for p in paths]
    held = [p for name, paths in all_runs if name.startswith(HELD_OUT) for p in paths]
    result = refit_profile(profile, fit, held)
    factors = result.profile.calibration["time_factors"]
    say(f"\nrefit on {len(fit)} runs ({', '.join(f'{k} ×{v:.3g}' for k, v in factors.items())}): fitted rms "
        f"{rms_error(result.fitted):.1%}; held-out {len(held)} runs rms {rms_error(result.before):.1%} → "
        f"{rms_error(result.after):.1%}")
    held_rows = []
    for (f, b), (_, a) in zip(result.before, result.after, strict=True):
        run_name = f.parent.name if f.name == "run" else f.name
        held_rows.append({"run": run_name, "stage": b.stage, "error_before": b.step_error, "error_after": a.step_error})
        say(f"  held out {run_name} stage {b.stage}: {b.step_error:+.1%} → {a.step_error:+.1%}")
    if args.json:
        print(json.dumps({"cores": cores, "steps": args.steps, "repeats": args.repeats, "rows": rows,
                          "rms": rms(errors), "within": within, "tolerance": VALIDATE_TOLERANCE,
                          "refit": {"time_factors": factors, "fitted_rms": rms_error(result.fitted),
                                    "held_out_rms_before": rms_error(result.before),
                                    "held_out_rms_after": rms_error(result.after), "held_out": held_rows}},
                         indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
