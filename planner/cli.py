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
def profile(
    device: Annotated[str, typer.Option(help="cuda or cpu.")] = "cpu",
    dtype: Annotated[str | None, typer.Option(help="bf16, fp16 or fp32 (default: bf16 on cuda, fp32 on cpu).")] = None,
    quick: Annotated[bool, typer.Option("--quick", help="A small sweep (under 2 minutes on a 2-core CPU).")] = False,
    out: Annotated[Path | None, typer.Option(help="Where to write the profile JSON.")] = None,
    nproc: Annotated[int, typer.Option(help="CPU processes for the gloo collectives (1 = none).")] = 2,
) -> None:
    """Measure the decoder core on this machine's device and write a profile."""
    from profiles.run import run_profile
    from profiles.schema import ProfileError, save_profile

    if device not in ("cuda", "cpu"):
        raise ProfileError(f"--device must be cuda or cpu, got {device!r}.")
    if nproc < 1:
        raise ProfileError(f"--nproc must be at least 1, got {nproc}.")
    prof = run_profile(device_kind=device, dtype=dtype, quick=quick, nproc=nproc, console=stderr)
    path = save_profile(prof, out or Path("profiles") / f"{prof.name}.json")
    g = prof.gemm
    stdout.print(
        f"wrote {path}: {prof.device['name']}, {prof.dtype}; GEMM best {prof.device['measured_gemm_max_tflops']:.3g} "
        f"TFLOP/s (e_max {g['e_max']:.2f} of {prof.peak_tflops:.3g}), memory-bound "
        f"{prof.memory_bound['bandwidth_gbps']:.1f} GB/s, {len(prof.layers)} whole layers measured"
    )


@app.command()
@_user_errors
def estimate(
    case_file: Annotated[Path, typer.Argument(help="Case file (DESIGN.md schema): model, cluster, layout.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for programs.")] = False,
    profile: Annotated[Path | None, typer.Option(help="Profile JSON (default: built-in one of the GPU).")] = None,
    dtype: Annotated[str, typer.Option(help="Training dtype; a --profile must have been measured in it.")] = "bf16",
) -> None:
    """Step time, throughput and memory of one layout; null layout fields are searched."""
    from planner.case import load_case
    from planner.report import estimate_json, print_estimate
    from planner.search import estimate_case

    case = load_case(case_file)
    case.cluster_spec()
    prof = _load_profile_for(case.cluster.gpu, profile, dtype)
    result = estimate_case(case, prof)
    if as_json:
        print(json.dumps(estimate_json(case, result), indent=1))
    else:
        print_estimate(stdout, case, result)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
