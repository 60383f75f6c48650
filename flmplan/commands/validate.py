"""`flmplan validate`: hold a run against its plan, stage by stage."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from flmplan.common import (
    VALIDATE_TOLERANCE,
    stdout,
)


def validate(
    run_dir: Annotated[Path, typer.Argument(help="The --out folder of `flmplan run`.")],
    plan: Annotated[Path | None, typer.Option(help="The plan the run executed (default: RUN_DIR/plan.json).")] = None,
    profile: Annotated[Path | None, typer.Option(
        help="Profile of the run's device (default: the built-in one of its GPU; a CPU run needs one).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for programs.")] = False,
    tolerance: Annotated[float, typer.Option(min=0.0, max=10.0,
                                             help="Largest error (0.15 = 15 %) before the exit status is 1.")
                         ] = VALIDATE_TOLERANCE,
) -> None:
    """Hold a run against its plan: per stage, the measured step time, tokens/s, MFU and memory
    beside the planner's prediction for that device; exit 1 when an error passes --tolerance."""
    from planner.cost.device_profile import load_profile, profile_quality
    from planner.plan.validation import validate_run
    from planner.report.terminal import print_validation

    prof = load_profile(profile) if profile is not None else None
    run, prof, checks = validate_run(run_dir, plan, prof)
    failed = [c for c in checks if not c.passes(tolerance)]
    if as_json:
        quality, problems = profile_quality(prof)
        print(json.dumps({"run": str(run_dir), "profile": prof.name, "profile_source": prof.source,
                          "profile_quality": quality, "profile_problems": problems,
                          "tolerance": tolerance, "passed": not failed,
                          "stages": [c.to_json() for c in checks], "checkpoints": run.checkpoints()}, indent=1))
    else:
        print_validation(stdout, run, prof, checks, tolerance)
    if failed:
        raise typer.Exit(1)
