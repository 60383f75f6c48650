"""`flmplan grow-vs-scratch`: measure what a token after a growth is worth, on pairs of proxy runs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from flmplan.common import check_output_folder, numbers, stderr, stdout


def grow_vs_scratch(
    hidden: Annotated[int, typer.Option(min=2, help="The target's width.")] = 128,
    layers: Annotated[int, typer.Option(min=2, help="The target's blocks (even: depth growth halves them).")] = 4,
    steps: Annotated[int, typer.Option(min=20, help="Optimizer steps of every run.")] = 300,
    points: Annotated[str, typer.Option(help="When to grow, as shares of the steps, comma-separated.")
                      ] = "0.1,0.25,0.5",
    dims: Annotated[str, typer.Option(help="What grows, comma-separated: depth (×2 parameters), width (×4 in the "
                                           "blocks), both (×8), all by MSG; stack, depth by G_stack (the control).")
                    ] = "depth,width",
    seeds: Annotated[str, typer.Option(help="Seeds of init and data order, comma-separated; η's error is their "
                                            "scatter.")] = "0,1,2",
    batch: Annotated[int, typer.Option(min=1, help="Sequences per step.")] = 16,
    seq: Annotated[int, typer.Option(min=2, help="Sequence length.")] = 64,
    lr: Annotated[float, typer.Option(min=1e-6, help="Learning rate of the target after warm-up (µP scales it for "
                                                     "a narrower model).")] = 3e-3,
    cooldown: Annotated[float, typer.Option(min=0.0, max=0.9, help="Share of the steps the rate decays over, "
                                                                   "linearly to 0 (warm-up, stable, decay).")] = 0.2,
    eval_sequences: Annotated[int, typer.Option(min=8, help="Held-out sequences per evaluation.")] = 128,
    device: Annotated[str, typer.Option(help="cpu, or cuda (one GPU).")] = "cpu",
    grow_steps: Annotated[int, typer.Option(min=0, help="MSG mask-ramp steps after each growth.")] = 20,
    data: Annotated[list[str] | None, typer.Option(help="Prepared corpora or text files (default: Python's "
                                                        "standard library, as bytes).")] = None,
    out: Annotated[Path, typer.Option(help="The folder for pairs.json and each run's curve.")
                   ] = Path("runs/growth"),
    as_json: Annotated[bool, typer.Option("--json", help="Print pairs.json.")] = False,
) -> None:
    """Train the target from scratch and grown (MSG; G_stack as a control) from smaller models at several
    points, on the same data and tokens; measure each growth's speed-up and fit what a token after a
    growth is worth (η) per operator, its error from the seeds' scatter, one MSG pair held out and predicted.
    `simulate --token-efficiency OUT/pairs.json` plans with it."""
    from planner.report.terminal import print_growth_pairs
    from runtime.growth.proxy_pairs import DIMS, PairShape, run_pairs

    check_output_folder(out, "--out")
    dim_list = [d.strip() for d in dims.split(",") if d.strip()]
    from planner.errors import FlmplanError

    if not dim_list or any(d not in DIMS for d in dim_list):
        raise FlmplanError(f"--dims takes depth, width, both and stack, comma-separated; got {dims!r}.")
    if device not in ("cpu", "cuda"):
        raise FlmplanError(f"--device takes cpu or cuda; got {device!r}.")
    shape = PairShape(hidden=hidden, layers=layers, steps=steps, batch=batch, seq=seq, lr=lr, grow_steps=grow_steps,
                      cooldown=cooldown, eval_sequences=eval_sequences, device=device)
    result = run_pairs(shape, numbers(points, float, "--points"), dim_list, numbers(seeds, int, "--seeds"), out,
                       data=data, log=(lambda _: None) if as_json else stderr.print)
    if as_json:
        print(json.dumps(result, indent=1))
        return
    print_growth_pairs(stdout, result)
    stdout.print(f"wrote {out / 'pairs.json'}; plan with it: flmplan simulate --token-efficiency {out / 'pairs.json'}")
