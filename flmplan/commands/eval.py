"""`flmplan eval`: score a run's checkpoints on the IQ tests through lm-evaluation-harness."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from flmplan.common import check_output_folder, stderr, stdout


def eval_iq(
    target: Annotated[Path, typer.Argument(help="A run folder (flmplan run --out): the last checkpoint of every "
                                                "stage; or one checkpoint folder.")],
    suite: Annotated[str, typer.Option(help="The suite to score (iq: FLM-101B's four tests of intelligence).")
                     ] = "iq",
    limit: Annotated[int | None, typer.Option(min=1, help="Items per task (default: all --items).")] = None,
    items: Annotated[int, typer.Option(min=1, help="Items generated per task (eval split).")] = 100,
    seed: Annotated[int, typer.Option(help="Seed of the generated items.")] = 0,
    out: Annotated[Path, typer.Option(help="The folder for lm-eval's results, iq.json and iq.html.")
                   ] = Path("runs/eval"),
    as_json: Annotated[bool, typer.Option("--json", help="Print iq.json.")] = False,
) -> None:
    """Score checkpoints on FLM-101B's IQ tests (symbolic mapping, rule understanding, pattern mining,
    anti-interference) with lm-evaluation-harness: accuracy per stage and family, its 95 % interval
    and the chance level."""
    from planner.report.html_report import iq_chart, write_figure
    from planner.report.terminal import print_iq
    from runtime.evaluation.evaluate import evaluate

    check_output_folder(out, "--out")
    result = evaluate(target, out, suite=suite, limit=limit, n=items, seed=seed,
                      log=(lambda _: None) if as_json else stderr.print)
    chart = write_figure(iq_chart(result), out / "iq.html")
    if as_json:
        print(json.dumps(result, indent=1))
        return
    print_iq(stdout, result)
    stdout.print(f"wrote {out / 'iq.json'}, lm-eval's results per stage and the chart {chart}")
