"""`flmplan profile`: measure this device, or refit a profile to runs."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from flmplan.common import (
    PROBE_SPREAD_TOLERANCE,
    Device,
    Dtype,
    check_output_file,
    stderr,
    stdout,
    value_of,
)


def profile(
    device: Annotated[Device, typer.Option(case_sensitive=False, help="The device to measure.")] = Device.cpu,
    dtype: Annotated[Dtype | None, typer.Option(case_sensitive=False,
                                                help="Default: bf16 on cuda, fp32 on cpu.")] = None,
    quick: Annotated[bool, typer.Option("--quick", help="A small sweep (under 2 minutes on a 2-core CPU).")] = False,
    out: Annotated[Path | None, typer.Option(
        help="The profile file to write (JSON; default: profiles/NAME.json).")] = None,
    nproc: Annotated[int, typer.Option(min=1, help="CPU processes for the gloo collectives (1 = none).")] = 2,
    threads: Annotated[int | None, typer.Option(
        min=1, help="CPU threads per process (default: torch's); a CPU run's ranks each use cores ÷ processes.")
    ] = None,
    refit: Annotated[list[Path] | None, typer.Option(
        help="Instead of measuring: fit the profile's time factors to this run folder (repeat for more).")] = None,
    holdout: Annotated[list[Path] | None, typer.Option(
        help="With --refit: a run folder left out of the fit, to show the error before and after.")] = None,
    base: Annotated[Path | None, typer.Option(
        "--profile", help="With --refit: the profile to refit (default: the built-in one of the runs' GPU).")] = None,
    accept_noisy: Annotated[bool, typer.Option(
        "--accept-noisy", help="Write the profile even when the sweep was disturbed (its repeated layer disagrees, "
                               "or a fitted overhead is not physical); by default such a profile is refused.")] = False,
) -> None:
    """Measure the decoder core on this machine's device and write a profile (or, with --refit,
    fit an existing profile to measured runs)."""
    from planner.cost.device_profile import ProfileError, profile_quality, save_profile
    from profiles.measure import SweepStopped, run_profile

    if out is not None:
        check_output_file(out, "--out", "profile.json")
    if refit:
        _refit(refit, holdout or [], base, out)
        return
    if holdout or base:
        raise ProfileError("--holdout and --profile go with --refit.")

    try:
        prof = run_profile(device_kind=device.value, dtype=value_of(dtype), quick=quick, nproc=nproc,
                           console=stderr, threads=threads)
    except SweepStopped as stopped:
        stderr.print(f"{stopped}")
        raise typer.Exit(130) from None
    target = out or Path("profiles") / f"{prof.name}.json"
    line, problems = profile_quality(prof)
    if problems and not accept_noisy:
        # Never written silently: a disturbed sweep would make every plan and validation with it wrong.
        raise ProfileError(f"Not written: {'; '.join(problems)}. Measure again when the device is quiet, or pass "
                           f"--accept-noisy to write it anyway ({line}).")
    path = save_profile(prof, target)
    for problem in problems:
        stderr.print(f"[yellow]Warning:[/] written with --accept-noisy although {problem}.")
    probe = prof.collectives.get("tensor_parallel", {}).get("probe", {})
    failed = probe.get("plain", {}).get("error")
    if failed:
        stderr.print(f"[yellow]Warning:[/] the tensor-parallel probe failed ({failed}); this profile charges no "
                     "host time around tensor parallelism.")
    spreads = [v for kind in ("plain", "sequence_parallel") for k, v in probe.get(kind, {}).items()
               if k.endswith("_spread")]
    if spreads and max(spreads) > PROBE_SPREAD_TOLERANCE:
        stderr.print(f"[yellow]Warning:[/] the tensor-parallel probe's figures spread by up to {max(spreads):.0%} "
                     "over its rounds (interquartile range / median): the device was not quiet; measure again "
                     "when it is.")
    g = prof.gemm
    stdout.print(
        f"wrote {path}: {prof.device['name']}, {prof.dtype}; GEMM best {prof.device['measured_gemm_max_tflops']:.3g} "
        f"TFLOP/s (e_max {g['e_max']:.2f} of {prof.peak_tflops:.3g}), memory-bound "
        f"{prof.memory_bound['bandwidth_gbps']:.1f} GB/s, {len(prof.layers)} whole layers measured"
    )


def _refit(runs: list[Path], holdout: list[Path], base_path: Path | None, out: Path | None) -> None:
    from planner.cost.device_profile import builtin_profile, load_profile, save_profile
    from planner.plan.validation import ValidateError, read_run, refit_profile, rms_error

    if base_path is not None:
        base = load_profile(base_path)
    else:
        start = read_run(runs[0]).start
        if start.get("device_kind") != "cuda" or not start.get("gpu"):
            raise ValidateError(f"{runs[0]} did not run on a catalog GPU; pass the profile to refit with --profile.")
        base = builtin_profile(start["gpu"])
    result = refit_profile(base, runs, holdout)
    path = save_profile(result.profile, out or Path("profiles") / f"{result.profile.name}.json")
    cal = result.profile.calibration
    factors = ", ".join(f"{k} ×{v:.3g}" for k, v in cal["time_factors"].items())
    stdout.print(f"wrote {path}: time factors {factors}; step-time error (rms) on the {len(runs)} fitted runs "
                 f"{cal['rms_fitted_before']:.1%} → {cal['rms_fitted_after']:.1%}")
    if holdout:
        stdout.print(f"on the {len(holdout)} held-out runs: {rms_error(result.before):.1%} → "
                     f"{rms_error(result.after):.1%}")
        for (folder, b), (_, a) in zip(result.before, result.after, strict=True):
            stdout.print(f"  {folder} stage {b.stage}: {b.step_error:+.1%} → {a.step_error:+.1%}")

