"""`flmplan tune`: µTransfer's learning-rate search on small proxies, under SP and µP."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from flmplan.common import Device, Parametrization, check_output_folder, numbers, stderr, stdout


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

    from planner.report.html_report import tune_chart, write_figure
    from planner.report.terminal import print_tune
    from runtime.parallel.cores import usable_cores
    from runtime.training.lr_sweep import ProxyShape
    from runtime.training.lr_sweep import tune as run_grid

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
