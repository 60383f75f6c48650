"""`flmplan export`: hand a plan to Megatron-LM, torchtitan or SLURM, or a run's checkpoint to Hugging Face."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from flmplan.common import ExportTarget, check_output_folder, stderr, stdout


def export(
    plan_file: Annotated[Path, typer.Argument(
        help="A plan written by `flmplan simulate --out`; for --to hf, a run folder (`flmplan run --out`) or a "
             "checkpoint in it.")],
    to: Annotated[ExportTarget, typer.Option("--to", case_sensitive=False, help=(
        "The tool to hand the plan to, or hf: the trained model as a Hugging Face model folder (safetensors, "
        "config.json and the run's tokenizer) for transformers' GPT-NeoX."))] = ExportTarget.megatron,
    out_dir: Annotated[Path, typer.Option(
        "--out", "--out-dir", help="The folder to write the exported files into (--out-dir is the old name).")
    ] = Path("export"),
    nearest: Annotated[bool, typer.Option(
        "--nearest", "--rope-for-xpos",
        help="Where the tool lacks a feature of the plan's model, export the nearest it has and say so in the "
             "file: rotary for xPos; for torchtitan also SwiGLU of equal parameters for GeLU, and untied "
             "embeddings under pipeline parallelism; for hf, rotary for xPos, with the measured logit difference "
             "(--rope-for-xpos is the old name).")] = False,
    time_limit: Annotated[str, typer.Option(
        "--time", help="SLURM: the job's time limit per piece (D-HH:MM:SS); before it runs out the job saves and "
                       "requeues itself.")] = "2-00:00:00",
) -> None:
    """Write the plan as Megatron-LM arguments per stage, a torchtitan config module or a SLURM script;
    or a trained run's model in Hugging Face's format."""
    import re

    from planner.errors import FlmplanError
    from planner.export.export_plan import export_plan
    from planner.plan.plan_file import load_plan

    check_output_folder(out_dir, "--out")
    if to == ExportTarget.hf:
        _export_hf(plan_file, out_dir, nearest)
        return
    if not re.fullmatch(r"(\d+-)?\d{1,2}:\d{2}:\d{2}", time_limit):
        raise FlmplanError(f"--time {time_limit!r} is not a SLURM time limit; give D-HH:MM:SS or HH:MM:SS.")
    plan = load_plan(plan_file)
    for path in export_plan(plan, to.value, out_dir, plan_path=str(plan_file.resolve()), nearest=nearest,
                            time_limit=time_limit):
        stdout.print(f"wrote {path}")


def _export_hf(run: Path, out_dir: Path, nearest: bool) -> None:
    from planner.errors import FlmplanError
    from runtime.export.hf import export_hf

    if run.is_file():
        raise FlmplanError(f"{run} is a file; --to hf exports a trained run: give its folder (flmplan run --out) "
                           "or a checkpoint folder in it.")
    record = export_hf(run, out_dir, nearest=nearest, log=stderr.print)
    check = record["check"]
    stdout.print(f"wrote {out_dir}: {record['architecture']} from stage {record['stage']} step {record['step']} "
                 f"({'the stage finished' if record['stage_done'] else 'the stage had not finished'})")
    if check["verified"]:
        stdout.print(f"transformers {check['transformers']} loads it offline: max |Δlogit| "
                     f"{check['max_abs_logit']:.2g} against the runtime on {check['sequences']} × {check['tokens']} "
                     "tokens")
    else:
        stdout.print(f"not checked: {check['why']}")
    for item in record["left_out"]:
        stdout.print(f"left out: {item}")
