"""Write a plan's export into a folder: the target's files and a record of what was exported, so that
a folder of another export or of other files is never overwritten by mistake."""

from __future__ import annotations

import json
from pathlib import Path

from planner.errors import FlmplanError
from planner.export.megatron import megatron_args
from planner.export.slurm import slurm_script
from planner.export.stage_facts import TARGETS, every_stage
from planner.export.torchtitan import TORCHTITAN_MODULE, torchtitan_module
from planner.plan.plan_file import Plan

# What an export writes beside its files, and the names its files have.
EXPORT_RECORD = "flmplan-export.json"
EXPORT_PATTERNS = {"megatron": "stage*.megatron.args", "torchtitan": f"{TORCHTITAN_MODULE}.py",
                   "slurm": "flmplan.sbatch"}


def export_plan(plan: Plan, target: str, out_dir: Path, plan_path: str = "plan.json",
                nearest: bool = False, time_limit: str = "2-00:00:00") -> list[Path]:
    """Every file is made (or refused) before any is written."""
    if target not in TARGETS:
        raise FlmplanError(f"--to must be one of {', '.join(TARGETS)}, got {target!r}.")
    if target == "slurm":
        files = {"flmplan.sbatch": slurm_script(plan, plan_path, time_limit)}
    elif target == "megatron":
        files = {f"stage{k + 1}.megatron.args": text
                 for k, text in enumerate(every_stage(plan, lambda k: megatron_args(plan, k, nearest)))}
    else:
        files = {f"{TORCHTITAN_MODULE}.py": torchtitan_module(plan, nearest)}
    out_dir.mkdir(parents=True, exist_ok=True)
    # An export replaces the one before it to the same target in the folder: the files of that one that
    # this one does not write go (those the folder's record lists, and any named as that target names
    # its files), so no stale stage is left behind; other files stay.
    record_path = out_dir / EXPORT_RECORD
    record: dict = {}
    if record_path.is_file():
        try:
            record = dict(json.loads(record_path.read_text()))
        except (json.JSONDecodeError, UnicodeDecodeError, TypeError, ValueError):
            record = {}
    previous = set(record.get(target, {}).get("files", [])) if isinstance(record.get(target), dict) else set()
    previous |= {f.name for f in out_dir.glob(EXPORT_PATTERNS[target])}
    for name in sorted(previous - set(files)):
        if "/" not in name and (out_dir / name).is_file():
            (out_dir / name).unlink()
    written = []
    for name, text in files.items():
        path = out_dir / name
        path.write_text(text)
        written.append(path)
    record[target] = {"plan": plan_path, "files": sorted(files)}
    record_path.write_text(json.dumps(record, indent=1) + "\n")
    return written
