"""What every command shares: the consoles, the options' choices and the
checks of what a command will write."""


from __future__ import annotations

import difflib
import os
from enum import Enum, StrEnum
from pathlib import Path

import typer
import typer.core
from rich.console import Console

stdout = Console()


stderr = Console(stderr=True)


# The choices of the options, declared once so that click checks them at parse time and --help
# lists them.
Device = StrEnum("Device", ["cuda", "cpu"])


Dtype = StrEnum("Dtype", ["bf16", "fp16", "fp32"])


Schedule = StrEnum("Schedule", ["auto", "flm"])


Attention = StrEnum("Attention", ["flash", "unfused"])


IntervalRule = StrEnum("IntervalRule", ["daly", "young"])


GrowthTiming = StrEnum("GrowthTiming", ["search", "gstack"])


Position = StrEnum("Position", ["xpos", "rotary"])


ExportTarget = StrEnum("ExportTarget", ["megatron", "torchtitan", "slurm", "hf"])


Scale = StrEnum("Scale", ["tiny", "full"])


Parametrization = StrEnum("Parametrization", ["both", "mup", "sp"])


def parse_money(value: str | float) -> float:
    """A dollar amount as a person writes it: 100000, 100k, 1.5M, $100,000."""
    if isinstance(value, int | float):
        amount = float(value)
    else:
        text = value.strip().replace(",", "").replace("_", "").lstrip("$")
        scale = {"k": 1e3, "m": 1e6}.get(text[-1:].lower(), 1.0)
        try:
            amount = float(text[:-1] if scale != 1.0 else text) * scale
        except ValueError:
            raise typer.BadParameter(f"{value!r} is not a dollar amount; write 100000, 100k or 1.5M.") from None
    if not amount >= 1:
        raise typer.BadParameter(f"{amount!r} is not in the range x>=1.0.")
    return amount


def one_line_paragraphs(text: str) -> str:
    """A docstring as help: each paragraph on one line, so that --help wraps it to the terminal."""
    return "\n\n".join(" ".join(p.split()) for p in text.strip().split("\n\n"))


def value_of(choice: Enum | None) -> str | None:
    return None if choice is None else choice.value


def load_profile_for(gpu_key: str, path: Path | None, dtype: str = "bf16"):
    """The profile the user gave (checked against the plan's dtype), else the built-in one."""
    from planner.cost.device_profile import ProfileError, builtin_profile, load_profile

    if path is None:
        return builtin_profile(gpu_key)
    from planner.model.specs import gpu_for_device

    profile = load_profile(path)
    if profile.dtype != dtype:
        raise ProfileError(
            f"Profile {path} was measured in {profile.dtype} but the plan trains in {dtype}; "
            f"measure again with `flmplan profile --dtype {dtype}`."
        )
    measured_on = gpu_for_device(profile.device["name"]) if profile.device.get("kind") == "cuda" else None
    if measured_on is not None and measured_on.key != gpu_key and profile.name != gpu_key:
        raise ProfileError(
            f"Profile {path} describes {profile.device['name']} but the plan is for {gpu_key}; "
            f"pass --gpu {measured_on.key} or a profile of {gpu_key}."
        )
    return profile


# The tensor-parallel probe's figures are differences of step times: a looser bound on their spread.
PROBE_SPREAD_TOLERANCE = 0.25

# A run's step time (and, on a GPU, memory) should be this close to its plan's.
VALIDATE_TOLERANCE = 0.15


def numbers(text: str, kind: type, option: str) -> list:
    """A comma-separated list of numbers, or one sentence saying which item is not one."""
    from planner.errors import FlmplanError

    values = []
    for item in filter(None, (t.strip() for t in text.split(","))):
        try:
            values.append(kind(item))
        except ValueError:
            raise FlmplanError(f"{option} takes comma-separated numbers; {item!r} is not one.") from None
    if not values:
        raise FlmplanError(f"{option} is empty; give comma-separated numbers.")
    return values


def prepared_corpus(items: list[str]):
    """--data of simulate: prepared corpora only (a plan records files a cluster can read, not text to
    tokenize), whole and of one tokenizer."""
    from planner.errors import FlmplanError
    from runtime.data.corpus import load_corpus, parse_specs

    specs = parse_specs(items)
    if any(s.prefix is None for s in specs):
        raise FlmplanError("simulate --data takes prepared corpora (PREFIX of PREFIX.bin/.idx); prepare text with "
                           "`flmplan data prepare`.")
    return load_corpus(items)


def with_data(plan, corpus):
    """The plan with its corpus: every stage's vocabulary holds the tokenizer, and how often the plan
    reads each source."""
    from planner.plan.plan_file import plan_from_dict
    from runtime.data.corpus import check_corpus

    check_corpus(corpus, plan)
    seq = plan.stages[0].model.seq
    sequences = plan.language_sequences()
    raw = plan.to_json()
    rec = corpus.record()
    raw["data"] = {"sources": [{"prefix": s["prefix"], "weight": s["weight"], "tokens": s["tokens"],
                                "documents": s["documents"]} for s in rec["sources"]],
                   "tokenizer": rec["tokenizer"], "tokens": sum(s["tokens"] for s in rec["sources"]),
                   "epochs": max(corpus.epochs(seq, sequences))}
    return plan_from_dict(raw)


def check_teacher_data(path: Path, teacher_every: int) -> None:
    """A teacher file is only meaningful with a teacher schedule, and must read as propositions."""
    from planner.errors import FlmplanError
    from runtime.objectives.freelm import IQ_SOURCE, read_teacher_file

    if not teacher_every:
        raise FlmplanError("--teacher-data needs --teacher-every K (every K-th step a teacher batch).")
    if str(path) != IQ_SOURCE:
        read_teacher_file(path)


def check_output_file(path: Path, option: str, example: str) -> None:
    """A file the command will write: not a folder, and in a folder that exists or can be made."""
    from planner.errors import FlmplanError

    if path.is_dir():
        raise FlmplanError(f"{option} {path} is a folder; give a file name, like {path / example}.")
    check_writable(path.parent, path, option)


def check_output_folder(path: Path, option: str) -> None:
    """A folder the command will write into: not a file, and itself or its nearest existing
    parent writable, so that a bad --out is refused before any work (nothing is created yet)."""
    from planner.errors import FlmplanError

    if path.exists() and not path.is_dir():
        raise FlmplanError(f"{option} {path} is a file; give a folder.")
    check_writable(path, path, option)


def check_writable(where: Path, path: Path, option: str) -> None:
    """`where`, or the nearest folder above it that exists, can be written into."""
    from planner.errors import FlmplanError

    while not where.exists():
        where = where.parent
    if not where.is_dir() or not os.access(where, os.W_OK):
        raise FlmplanError(f"{option} {path} cannot be written: {where} is not a writable folder.")



def settings_file(ctx: typer.Context, param, path: Path | None) -> Path | None:
    """--config: a TOML file whose keys are the command's options (underscores), read before the other
    options so that they become their defaults and flags on the command line override them (click's
    default_map; torchtitan's job config and its command-line overrides work the same way)."""
    if path is None:
        return None
    import tomllib

    from planner.errors import FlmplanError

    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise FlmplanError(f"--config {path} does not exist.") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError, IsADirectoryError) as err:
        raise FlmplanError(f"--config {path} is not a TOML file ({err}).") from None
    known = {p.name for p in ctx.command.params if p.name != "config"}
    unknown = sorted(set(raw) - known)
    if unknown:
        near = {k: difflib.get_close_matches(k, known, n=1, cutoff=0.6) for k in unknown}
        hints = "; ".join(f"did you mean {near[k][0]}?" for k in unknown if near[k])
        raise FlmplanError(f"--config {path} sets {', '.join(unknown)}, which `{ctx.info_name}` does not have"
                           + (f" ({hints})" if hints else f"; `flmplan {ctx.info_name} --help` lists its settings "
                              "(the options' names with underscores)") + ".")
    ctx.default_map = {**(ctx.default_map or {}), **raw}
    return path


def recorded_settings(params: dict) -> dict:
    """Every setting a command ran with, as the plan records it (paths and choices as text)."""
    out = {}
    for key, value in params.items():
        if isinstance(value, Enum):
            value = value.value
        elif isinstance(value, Path):
            value = str(value)
        elif isinstance(value, list | tuple):
            value = [str(v) for v in value]
        out[key] = value
    return out
