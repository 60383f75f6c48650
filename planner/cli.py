"""The `flmplan` command line: a thin layer over library calls.

Imports are lazy so that `flmplan profile` runs on GPU images that have only torch, numpy,
typer and rich, and `flmplan simulate` starts without torch. Every user-facing problem is a
FlmplanError or ProfileError: it is printed as one sentence on stderr, exit code 2.
"""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="flmplan: plan, simulate and run LLM pretraining by growth (the FLM-101B recipe) on a budget.",
)
stdout = Console()
stderr = Console(stderr=True)


@app.callback()
def _root() -> None:
    """flmplan: plan, simulate and run LLM pretraining by growth on a budget."""


def _user_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn the project's own exceptions into one line on stderr and exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from planner.errors import FlmplanError
        from profiles.schema import ProfileError

        try:
            return fn(*args, **kwargs)
        except (FlmplanError, ProfileError) as err:
            stderr.print(f"[bold red]Error:[/] {err}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None

    return wrapper


def _load_profile_for(gpu_key: str, path: Path | None, dtype: str = "bf16"):
    """The profile the user gave (checked against the plan's dtype), else the built-in one."""
    from profiles.schema import ProfileError, builtin_profile, load_profile

    if path is None:
        return builtin_profile(gpu_key)
    profile = load_profile(path)
    if profile.dtype != dtype:
        raise ProfileError(
            f"Profile {path} was measured in {profile.dtype} but the plan trains in {dtype}; "
            f"measure again with `flmplan profile --dtype {dtype}`."
        )
    return profile


@app.command()
@_user_errors
def estimate(
    case_file: Annotated[Path, typer.Argument(help="Case file (DESIGN.md schema): model, cluster, layout.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for programs.")] = False,
    profile: Annotated[Path | None, typer.Option(help="Profile JSON (default: built-in one of the GPU).")] = None,
) -> None:
    """Step time, throughput and memory of one layout; null layout fields are searched."""
    from planner.case import load_case
    from planner.report import estimate_json, print_estimate
    from planner.search import estimate_case

    case = load_case(case_file)
    case.cluster_spec()
    prof = _load_profile_for(case.cluster.gpu, profile)
    result = estimate_case(case, prof)
    if as_json:
        print(json.dumps(estimate_json(case, result), indent=1))
    else:
        print_estimate(stdout, case, result)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
