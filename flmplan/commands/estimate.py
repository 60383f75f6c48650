"""`flmplan estimate`: step time, throughput and memory of a layout; null layout fields are searched."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from flmplan.common import (
    Dtype,
    load_profile_for,
    stdout,
)


def estimate(
    case_files: Annotated[list[Path], typer.Argument(
        help="Case file(s) (JSON: model, cluster, layout; see examples/); several give one table.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON (a list for several files).")] = False,
    profile: Annotated[Path | None, typer.Option(help="Profile JSON (default: built-in one of the GPU).")] = None,
    dtype: Annotated[Dtype, typer.Option(case_sensitive=False,
                                         help="Training dtype; a --profile must have been measured in it.")
                     ] = Dtype.bf16,
) -> None:
    """Step time, throughput and memory of a layout; null layout fields are searched."""
    from planner.layout.case import load_case
    from planner.layout.search import estimate_case
    from planner.report.terminal import estimate_json, print_estimate, print_estimates

    cases = [load_case(f) for f in case_files]         # every file read and checked before any costing
    for case in cases:
        case.cluster_spec()
    rows = []
    for case in cases:
        prof = load_profile_for(case.cluster.gpu, profile, dtype.value)
        result = estimate_case(case, prof)
        costliest = estimate_case(case, prof, costliest=True) if case.software.unstated_costliest else None
        rows.append((case, result, costliest))
    if as_json:
        out = [estimate_json(*row) for row in rows]
        print(json.dumps(out[0] if len(out) == 1 else out, indent=1))
    elif len(rows) == 1:
        print_estimate(stdout, *rows[0])
    else:
        print_estimates(stdout, rows)
