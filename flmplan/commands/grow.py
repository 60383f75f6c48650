"""`flmplan grow`: a grown stage's first weights for another tool (Megatron-LM, torchtitan), from its
previous stage's checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from flmplan.common import check_output_folder, stdout


def grow(
    checkpoint: Annotated[Path, typer.Argument(help="The previous stage's checkpoint, written by the tool (e.g. "
                                                    "torchtitan's outputs/checkpoint/step-N, or Megatron-LM's "
                                                    "--save folder checkpoints/stageN).")],
    plan_file: Annotated[Path, typer.Option("--plan", help="The plan the export was made from.")],
    stage: Annotated[int, typer.Option(help="The grown stage to write the first weights of (1-based).")],
    to: Annotated[str, typer.Option("--to", help="The tool whose checkpoint format to read and write: torchtitan "
                                                 "or megatron.")] = "torchtitan",
    out: Annotated[Path, typer.Option(help="The checkpoint folder to write: the export's initial load path (e.g. "
                                           "outputs/checkpoint/stage2-grown for torchtitan, checkpoints/stage2-grown "
                                           "for Megatron-LM).")] = Path("grown"),
    seed: Annotated[int, typer.Option(help="Seed of the new units' weights.")] = 0,
) -> None:
    """Write a grown stage's first weights from the previous stage's checkpoint of another tool, grown
    without masks and function-preserving (zero-initialised output projections; new hidden dimensions zero
    under RMSNorm, the old ones' mean under LayerNorm, with the gains rescaled)."""
    from planner.plan.plan_file import load_plan
    from runtime.growth.targets import grow_checkpoint

    check_output_folder(out, "--out")
    record = grow_checkpoint(checkpoint, load_plan(plan_file), stage, to, out, seed=seed)
    o, n = record["old"], record["new"]
    stdout.print(f"wrote {out}: stage {stage}'s first weights for {to}, {record['parameters']:,} parameters "
                 f"({o['layers']} × {o['dim']} → {n['layers']} × {n['dim']}, heads {o['heads']} → {n['heads']}, "
                 f"MLP {o['ffn']} → {n['ffn']}); {record['load']}")
