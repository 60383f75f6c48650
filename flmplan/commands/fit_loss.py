"""`flmplan fit-loss`: fit a loss law to runs, for `flmplan simulate --loss-law`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from flmplan.common import check_output_file, stdout


def fit_loss(
    runs: Annotated[list[Path], typer.Argument(help="Run folders: proxies of `flmplan tune`, or one-stage runs "
                                                    "of `flmplan run`.")],
    holdout: Annotated[int, typer.Option(min=0, help="The largest models µScaling predicts instead of fitting.")
                       ] = 1,
    at_step: Annotated[int | None, typer.Option(min=0, help="The step µScaling compares (default: the last).")
                       ] = None,
    name: Annotated[str, typer.Option(help="The fitted law's name.")] = "fitted",
    out: Annotated[Path, typer.Option(help="The loss-law file to write (for `simulate --loss-law`).")
                   ] = Path("loss-law.json"),
    chart: Annotated[Path | None, typer.Option(help="The chart to write (default: beside --out, .html).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the loss-law file.")] = False,
) -> None:
    """Fit the loss law of runs: µScaling's L(N) = a·N^b + c at one step (predicting the held-out
    largest), and L(N, D) = E + A/N^α + B/D^β over the curves, for `flmplan simulate --loss-law`."""
    from planner.growth.loss_fit import fit_loss as fit
    from planner.growth.loss_fit import law_file
    from planner.plan.run_curves import read_curves
    from planner.report.html_report import loss_fit_chart, write_figure
    from planner.report.terminal import print_loss_fit

    check_output_file(out, "--out", "loss-law.json")
    chart = chart or out.with_suffix(".html")
    check_output_file(chart, "--chart", "loss-law.html")
    result = fit(read_curves(runs), holdout=holdout, at_step=at_step)
    law = law_file(result, name)
    out.write_text(json.dumps(law, indent=1))
    write_figure(loss_fit_chart(result), chart)
    if as_json:
        print(json.dumps(law, indent=1))
        return
    print_loss_fit(stdout, result)
    stdout.print(f"wrote {out} (use: flmplan simulate --loss-law {out}) and the chart {chart}")
