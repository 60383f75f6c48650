"""`flmplan tune`, `grow-vs-scratch`, `fit-loss` and `eval`: the measurements a plan's choices rest on."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
import typer.core

from flmplan.common import Device, Parametrization, app, check_output_file, check_output_folder, numbers, stderr, stdout


@app.command()
def tune(
    widths: Annotated[str, typer.Option(help="Proxy widths (hidden sizes), comma-separated.")] = "32,64,128,256",
    lrs: Annotated[str, typer.Option(help="Peak learning rates to try, comma-separated.")
                   ] = "0.001,0.003,0.01,0.03,0.1",
    output_mults: Annotated[str, typer.Option(help="µP output multipliers to try, comma-separated.")] = "1",
    parametrization: Annotated[Parametrization, typer.Option(
        case_sensitive=False, help="Train under SP, µP or both (both shows whether the optimum transfers).")
    ] = Parametrization.both,
    base_width: Annotated[int | None, typer.Option(min=1, help="µP's base width (default: the narrowest).")] = None,
    layers: Annotated[int, typer.Option(min=1, help="Blocks of every proxy.")] = 2,
    head_dim: Annotated[int, typer.Option(min=2, help="Head width; heads = width / head_dim.")] = 16,
    seq: Annotated[int, typer.Option(min=2, help="Sequence length.")] = 64,
    batch: Annotated[int, typer.Option(min=1, help="Sequences per step.")] = 8,
    steps: Annotated[int, typer.Option(min=5, help="Optimizer steps per proxy (warm-up, then cosine decay).")] = 100,
    data: Annotated[list[str] | None, typer.Option(help="Prepared corpora (PREFIX, or WEIGHT:PREFIX for a mixture: "
                                                         "the proxies use their tokenizer's vocabulary), or text files "
                                                         "or folders as bytes (default: Python's standard library).")
                    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the init and the data order (the same for every proxy).")] = 1234,
    device: Annotated[Device, typer.Option(case_sensitive=False, help="Where to train the proxies.")] = Device.cpu,
    out: Annotated[Path, typer.Option(help="The folder for tune.json, tune.html and each proxy's run.")
                   ] = Path("runs/tune"),
    as_json: Annotated[bool, typer.Option("--json", help="Print tune.json.")] = False,
) -> None:
    """Tune the learning rate (and µP's output multiplier) on proxies of several widths, under SP and
    µP, with the runtime; print the loss landscape and the best value per width."""
    import torch

    from planner.report import print_tune
    from planner.report_html import tune_chart, write_figure
    from runtime.parallel import usable_cores
    from runtime.tune import ProxyShape
    from runtime.tune import tune as run_grid

    check_output_folder(out, "--out")
    torch.set_num_threads(usable_cores())
    kinds = ["sp", "mup"] if parametrization.value == "both" else [parametrization.value]
    shape = ProxyShape(layers=layers, head_dim=head_dim, seq=seq, batch=batch, steps=steps)
    result = run_grid(numbers(widths, int, "--widths"), numbers(lrs, float, "--lrs"),
                      numbers(output_mults, float, "--output-mults"), kinds, shape, out,
                      data=[str(d) for d in data] if data else None, base_width=base_width, seed=seed,
                      device=device.value, log=(lambda _: None) if as_json else stderr.print)
    chart = write_figure(tune_chart(result), out / "tune.html")
    if as_json:
        print(json.dumps(result, indent=1))
        return
    print_tune(stdout, result)
    stdout.print(f"wrote {out / 'tune.json'} and the chart {chart}; `flmplan fit-loss {out}/runs/mup-*` fits a loss "
                 "law to these runs")


@app.command("grow-vs-scratch")
def grow_vs_scratch(
    hidden: Annotated[int, typer.Option(min=2, help="The target's width.")] = 128,
    layers: Annotated[int, typer.Option(min=2, help="The target's blocks (even: depth growth halves them).")] = 4,
    steps: Annotated[int, typer.Option(min=20, help="Optimizer steps of every run.")] = 300,
    points: Annotated[str, typer.Option(help="When to grow, as shares of the steps, comma-separated.")
                      ] = "0.1,0.25,0.5",
    dims: Annotated[str, typer.Option(help="What grows: depth (×2 parameters), width (×4 in the blocks), both "
                                           "(×8), comma-separated.")] = "depth,width",
    seeds: Annotated[str, typer.Option(help="Seeds of init and data order, comma-separated.")] = "0,1",
    batch: Annotated[int, typer.Option(min=1, help="Sequences per step.")] = 16,
    seq: Annotated[int, typer.Option(min=2, help="Sequence length.")] = 64,
    lr: Annotated[float, typer.Option(min=1e-6, help="Learning rate after warm-up (constant).")] = 3e-3,
    grow_steps: Annotated[int, typer.Option(min=0, help="MSG mask-ramp steps after each growth.")] = 20,
    data: Annotated[list[str] | None, typer.Option(help="Prepared corpora or text files (default: Python's "
                                                        "standard library, as bytes).")] = None,
    out: Annotated[Path, typer.Option(help="The folder for pairs.json and each run's curve.")
                   ] = Path("runs/growth"),
    as_json: Annotated[bool, typer.Option("--json", help="Print pairs.json.")] = False,
) -> None:
    """Train the target from scratch and grown (MSG) from smaller models at several points, on the same
    data and tokens; measure each growth's speed-up and fit what a token after a growth is worth (η), one
    pair held out and predicted. `simulate --token-efficiency OUT/pairs.json` plans with it."""
    from planner.report import print_growth_pairs
    from runtime.growth_pairs import PairShape, run_pairs

    check_output_folder(out, "--out")
    dim_list = [d.strip() for d in dims.split(",") if d.strip()]
    if not dim_list or any(d not in ("depth", "width", "both") for d in dim_list):
        from planner.errors import FlmplanError

        raise FlmplanError(f"--dims takes depth, width and both, comma-separated; got {dims!r}.")
    shape = PairShape(hidden=hidden, layers=layers, steps=steps, batch=batch, seq=seq, lr=lr, grow_steps=grow_steps)
    result = run_pairs(shape, numbers(points, float, "--points"), dim_list, numbers(seeds, int, "--seeds"), out,
                       data=data, log=(lambda _: None) if as_json else stderr.print)
    if as_json:
        print(json.dumps(result, indent=1))
        return
    print_growth_pairs(stdout, result)
    stdout.print(f"wrote {out / 'pairs.json'}; plan with it: flmplan simulate --token-efficiency {out / 'pairs.json'}")


@app.command("fit-loss")
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
    from planner.loss_fit import fit_loss as fit
    from planner.loss_fit import law_file
    from planner.report import print_loss_fit
    from planner.report_html import loss_fit_chart, write_figure

    check_output_file(out, "--out", "loss-law.json")
    chart = chart or out.with_suffix(".html")
    check_output_file(chart, "--chart", "loss-law.html")
    result = fit(runs, holdout=holdout, at_step=at_step)
    law = law_file(result, name)
    out.write_text(json.dumps(law, indent=1))
    write_figure(loss_fit_chart(result), chart)
    if as_json:
        print(json.dumps(law, indent=1))
        return
    print_loss_fit(stdout, result)
    stdout.print(f"wrote {out} (use: flmplan simulate --loss-law {out}) and the chart {chart}")


@app.command("eval")
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
    from planner.report import print_iq
    from planner.report_html import iq_chart, write_figure
    from runtime.iq.evaluate import evaluate

    check_output_folder(out, "--out")
    result = evaluate(target, out, suite=suite, limit=limit, n=items, seed=seed,
                      log=(lambda _: None) if as_json else stderr.print)
    chart = write_figure(iq_chart(result), out / "iq.html")
    if as_json:
        print(json.dumps(result, indent=1))
        return
    print_iq(stdout, result)
    stdout.print(f"wrote {out / 'iq.json'}, lm-eval's results per stage and the chart {chart}")

