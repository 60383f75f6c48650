"""The `flmplan` command line: a thin layer over library calls.

Imports are lazy so that `flmplan profile` runs on GPU images that have only torch, numpy,
typer and rich, and `flmplan simulate` starts without torch. Every user-facing problem is a
FlmplanError (ProfileError is one) or a refusal of click's parser (choices and ranges are
declared on the options, so they are checked before any work and listed in --help): both are
printed as one sentence on stderr, exit code 2 (_OneErrorStyle).
"""

from __future__ import annotations

import json
import os
import sys
from enum import Enum, StrEnum
from pathlib import Path
from typing import Annotated

import typer
import typer.core
from rich.console import Console

# typer ≥ 0.26 carries its own copy of click; its exception classes are reached through typer's.
_ClickException = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")


class _OneErrorStyle(typer.core.TyperGroup):
    """Every refusal the same way, caught once: a bad option (click's parser) or a bad input found
    later (a FlmplanError) is one line on stderr, `Error: <sentence>`, exit code 2, no traceback."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        from planner.errors import FlmplanError

        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except _ClickException as err:
            if type(err).__name__ == "NoArgsIsHelpError":     # typer has printed the help
                code = err.exit_code
            else:
                ctx = getattr(err, "ctx", None)
                hint = f" See '{ctx.command_path} --help'." if ctx is not None else ""
                message = err.format_message().rstrip()
                _print_error(message + ("" if message.endswith(".") else ".") + hint)
                code = err.exit_code
        except FlmplanError as err:
            _print_error(str(err))
            code = 2
        except typer.Abort:
            stderr.print("Aborted.")
            code = 1
        code = code if isinstance(code, int) else 0
        if standalone_mode:
            sys.exit(code)
        return code


def _print_error(sentence: str) -> None:
    from rich.markup import escape

    stderr.print(f"[bold red]Error:[/] {escape(sentence)}", highlight=False, soft_wrap=True)


app = typer.Typer(
    cls=_OneErrorStyle,
    add_completion=False,
    no_args_is_help=True,
    help="flmplan: plan, simulate and run LLM pretraining by growth (the FLM-101B recipe) on a budget.",
)
stdout = Console()
stderr = Console(stderr=True)


# The choices of the options, declared once so that click checks them at parse time and --help
# lists them.
Device = StrEnum("Device", ["cuda", "cpu"])
Dtype = StrEnum("Dtype", ["bf16", "fp16", "fp32"])
Schedule = StrEnum("Schedule", ["auto", "flm"])
Attention = StrEnum("Attention", ["flash", "unfused"])
IntervalRule = StrEnum("IntervalRule", ["daly", "young"])
ExportTarget = StrEnum("ExportTarget", ["megatron", "torchtitan", "slurm", "hf"])
Scale = StrEnum("Scale", ["tiny", "full"])
Parametrization = StrEnum("Parametrization", ["both", "mup", "sp"])


def _value(choice: Enum | None) -> str | None:
    return None if choice is None else choice.value


@app.callback()
def _root() -> None:
    """flmplan: plan, simulate and run LLM pretraining by growth on a budget."""


def _load_profile_for(gpu_key: str, path: Path | None, dtype: str = "bf16"):
    """The profile the user gave (checked against the plan's dtype), else the built-in one."""
    from profiles.schema import ProfileError, builtin_profile, load_profile

    if path is None:
        return builtin_profile(gpu_key)
    from planner.specs import gpu_for_device

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


# The same layer measured twice in one sweep should agree this closely on a quiet device.
REPEAT_TOLERANCE = 0.03
# The tensor-parallel probe's figures are differences of step times: a looser bound on their spread.
PROBE_SPREAD_TOLERANCE = 0.25
# A run's step time (and, on a GPU, memory) should be this close to its plan's.
VALIDATE_TOLERANCE = 0.15


@app.command()
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
) -> None:
    """Measure the decoder core on this machine's device and write a profile (or, with --refit,
    fit an existing profile to measured runs)."""
    from profiles.run import run_profile
    from profiles.schema import ProfileError, save_profile

    if out is not None:
        _check_output_file(out, "--out", "profile.json")
    if refit:
        _refit(refit, holdout or [], base, out)
        return
    if holdout or base:
        raise ProfileError("--holdout and --profile go with --refit.")

    prof = run_profile(device_kind=device.value, dtype=_value(dtype), quick=quick, nproc=nproc, console=stderr,
                       threads=threads)
    path = save_profile(prof, out or Path("profiles") / f"{prof.name}.json")
    repeat = prof.timing["repeat"]
    if abs(repeat["difference"]) > REPEAT_TOLERANCE:
        stderr.print(f"[yellow]Warning:[/] the layer {repeat['layer']} measured {repeat['difference']:+.1%} apart at "
                     "the start and the end of the sweep (points' median spread "
                     f"{prof.timing['median_spread']:.1%}): the device was not quiet; measure again when it is.")
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
    from planner.validate import ValidateError, read_run, refit_profile, rms_error
    from profiles.schema import builtin_profile, load_profile, save_profile

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


@app.command()
def estimate(
    case_files: Annotated[list[Path], typer.Argument(
        help="Case file(s) (JSON: model, cluster, layout; see examples/); several give one table.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON (a list for several files).")] = False,
    profile: Annotated[Path | None, typer.Option(help="Profile JSON (default: built-in one of the GPU).")] = None,
    dtype: Annotated[Dtype, typer.Option(case_sensitive=False,
                                         help="Training dtype; a --profile must have been measured in it.")
                     ] = Dtype.bf16,
) -> None:
    """Step time, throughput and memory of a layout; null layout fields are searched."""
    from planner.case import load_case
    from planner.report import estimate_json, print_estimate, print_estimates
    from planner.search import estimate_case

    cases = [load_case(f) for f in case_files]         # every file read and checked before any costing
    for case in cases:
        case.cluster_spec()
    rows = []
    for case in cases:
        prof = _load_profile_for(case.cluster.gpu, profile, dtype.value)
        result = estimate_case(case, prof)
        costliest = estimate_case(case, prof, costliest=True) if case.software.unstated_costliest else None
        rows.append((case, result, costliest))
    if as_json:
        out = [estimate_json(*row) for row in rows]
        print(json.dumps(out[0] if len(out) == 1 else out, indent=1))
    elif len(rows) == 1:
        print_estimate(stdout, *rows[0])
    else:
        print_estimates(stdout, rows)


@app.command()
def simulate(
    budget: Annotated[float, typer.Option(min=1.0, help="Budget in US dollars.")] = 100_000,
    gpu: Annotated[str, typer.Option(help="GPU type (catalog key).")] = "a800-80gb",
    price: Annotated[float | None, typer.Option(
        min=0.001, help="USD per GPU-hour (default: the catalog's dated price; for a800-80gb $1.00, the price "
                        "FLM-101B's figures imply).")] = None,
    max_gpus: Annotated[int, typer.Option(min=1, help="Largest cluster to rent, in GPUs (whole nodes).")] = 192,
    target_size: Annotated[str, typer.Option(help="Smallest final model, e.g. 101B.")] = "101B",
    schedule: Annotated[Schedule, typer.Option(
        case_sensitive=False, help="auto searches; flm is FLM-101B's own 16B→51B→101B.")] = Schedule.auto,
    max_days: Annotated[float, typer.Option(min=0.01, help="Deadline for the whole run, in days.")] = 60.0,
    global_batch: Annotated[int, typer.Option(min=1, help="Sequences per optimizer step.")] = 2304,
    grow_steps: Annotated[int, typer.Option(min=0, help="MSG mask-ramp steps after each growth.")] = 5000,
    loss_law: Annotated[str, typer.Option(help="chinchilla, besiroglu, or a JSON file of constants.")] = "chinchilla",
    carryover: Annotated[float, typer.Option(
        min=0.01, max=1.0, help="Equal-loss carry-over efficiency across a growth.")] = 1.0,
    ramp_efficiency: Annotated[float, typer.Option(
        min=0.0, max=1.0, help="Share of mask-ramp tokens that count.")] = 0.5,
    token_efficiency: Annotated[str, typer.Option(
        help="Tokens of a model trained from scratch that each token after a growth is worth: a number (1: "
             "equal-loss continuation alone, assumed), published (fitted on Du et al. 2024's G_stack 7B: "
             "benchmarks/growth_cases.py), or the pairs.json of `flmplan grow-vs-scratch` (measured).")] = "1",
    attention: Annotated[Attention, typer.Option(
        case_sensitive=False, help="The attention kernel (FLM-101B's run used flash).")] = Attention.flash,
    profile: Annotated[Path | None, typer.Option(help="Profile JSON (default: built-in one of the GPU).")] = None,
    out: Annotated[Path | None, typer.Option(help="The plan file to write (JSON, e.g. plan.json).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the plan as JSON.")] = False,
    report: Annotated[Path | None, typer.Option(help="The HTML report file to write (plotly charts, tables).")
                      ] = None,
    confidence: Annotated[float, typer.Option(
        min=0.5, max=0.99, help="The budget must hold at this quantile of the simulated cost, failures counted."
    )] = 0.9,
    max_growth_factor: Annotated[float, typer.Option(
        min=1.0, help="Largest parameter ratio of one growth (default 4: published growth operators measured ×2–4).")
    ] = 4.0,
    growth_timing: Annotated[str, typer.Option(
        help="When the plan grows first: search (where the loss model predicts the lowest final loss) or gstack "
             "(Du et al. 2024's fitted guideline for the compute spent; the advice compares the two).")] = "search",
    failure_rate: Annotated[float, typer.Option(min=0.0, help="Node failures per 1000 node-days.")] = 5.0,
    restart_min: Annotated[float, typer.Option(
        min=0.0, help="Detection + restart time after a failure, minutes.")] = 10.0,
    checkpoint_min: Annotated[float, typer.Option(min=0.0, help="Time to write a checkpoint, minutes.")] = 5.0,
    checkpoint_interval_min: Annotated[float | None, typer.Option(
        min=0.01, help="Minutes between checkpoints (default: the --checkpoint-rule's optimum).")] = None,
    checkpoint_rule: Annotated[IntervalRule, typer.Option(
        case_sensitive=False, help="Optimal checkpoint interval, when none is given.")] = IntervalRule.daly,
    spare_fraction: Annotated[float, typer.Option(
        min=0.0, max=1.0, help="Spare nodes as a fraction of the nodes.")] = 0.05,
    spot_per_day: Annotated[float, typer.Option(min=0.0, help="Spot preemptions per day (0: on-demand).")] = 0.0,
    spot_notice_min: Annotated[float, typer.Option(min=0.0, help="Preemption notice, minutes.")] = 2.0,
    trials: Annotated[int, typer.Option(min=1, help="Monte Carlo trials of the run.")] = 1000,
    seed: Annotated[int, typer.Option(help="Seed of the run simulation.")] = 0,
    teacher_every: Annotated[int, typer.Option(
        min=0, help="FreeLM's objective: every K-th step a teacher batch of propositions (0: off; K ≥ 2); the "
                    "plan pays for those steps on top of the language tokens.")] = 0,
    teacher_data: Annotated[Path | None, typer.Option(
        help="The teacher signal's propositions (JSON lines: text, proposition, label; or iq: the IQ "
             "generators' train split), written into the plan.")
    ] = None,
    data: Annotated[list[str] | None, typer.Option(
        help="The corpus the plan trains on (repeat for a mixture, WEIGHT:PREFIX): prepared corpora "
             "(`flmplan data prepare`), checked and recorded in the plan with their tokenizer; the plan says how "
             "many times it reads them.")] = None,
) -> None:
    """Plan growth stages, layouts and cluster for a budget; simulate the run with failures."""
    from planner.loss import GrowthLossModel, load_law
    from planner.plan import save_plan
    from planner.report import print_plan
    from planner.schedule import Settings
    from planner.sim.run import FailureModel
    from planner.simulate import parse_size, plan_budget
    from planner.specs import get_gpu

    # Everything that can be checked without planning is checked first: planning takes seconds.
    for path, option, example in ((out, "--out", "plan.json"), (report, "--report", "report.html")):
        if path is not None:
            _check_output_file(path, option, example)
    spec = get_gpu(gpu)
    source = None
    if teacher_data is not None:
        from runtime.freelm import teacher_source

        _check_teacher_data(teacher_data, teacher_every)
        source = teacher_source(teacher_data)
    corpus = _prepared_corpus(data) if data else None
    settings = Settings(gpu=spec, price_per_gpu_hour=spec.price.usd_per_gpu_hour if price is None else price,
                        max_gpus=max_gpus, target_params=parse_size(target_size), budget_usd=budget,
                        global_batch=global_batch, grow_steps=grow_steps, max_days=max_days, attention=attention.value,
                        max_growth_factor=max_growth_factor, growth_timing=growth_timing, teacher_every=teacher_every,
                        teacher_data=source)
    from planner.loss import load_token_efficiency

    eta, eta_error, evidence = load_token_efficiency(token_efficiency)
    loss_model = GrowthLossModel(law=load_law(loss_law), carryover=carryover, ramp_efficiency=ramp_efficiency,
                                 token_efficiency=eta, evidence=evidence, token_efficiency_error=eta_error)
    failures = FailureModel(
        failures_per_1000_node_days=failure_rate, restart_min=restart_min, checkpoint_min=checkpoint_min,
        checkpoint_interval_min=checkpoint_interval_min, interval_rule=checkpoint_rule.value,
        spare_fraction=spare_fraction,
        spot_preemptions_per_day=spot_per_day, spot_notice_min=spot_notice_min)
    prof = _load_profile_for(spec.key, profile)
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(), TextColumn("ETA"),
                  TimeRemainingColumn(), console=stderr, transient=True, disable=as_json) as bar:
        task = bar.add_task("searching growth schedules", total=1.0)

        def progress(what: str, share: float) -> None:
            bar.update(task, description=what, completed=share)

        result = plan_budget(settings, prof, loss_model, schedule.value, failures=failures, trials=trials, seed=seed,
                             confidence=confidence, gantt=report is not None, progress=progress)
    if corpus is not None:
        result.plan = _with_data(result.plan, corpus)
    if out:
        save_plan(result.plan, out)
    if report:
        from planner.report_html import write_report

        write_report(result, report)
    if as_json:
        print(json.dumps(result.plan.to_json(), indent=1))
        return
    print_plan(stdout, result.plan, searched=len(result.searched))
    if result.plan.data:
        d = result.plan.data
        stdout.print(f"Data: {d.tokens:,} tokens in {len(d.sources)} source{'s' if len(d.sources) > 1 else ''} "
                     f"({d.tokenizer['kind']} tokenizer, {d.tokenizer['vocab']:,} entries); the plan reads "
                     + (f"its most-read source {d.epochs:.2f} times (each epoch in a new order)." if d.epochs > 1
                        else f"{d.epochs:.0%} of it."))
    for path, what in ((out, "plan"), (report, "report")):
        if path:
            stdout.print(f"wrote {what} {path}")


@app.command()
def validate(
    run_dir: Annotated[Path, typer.Argument(help="The --out folder of `flmplan run`.")],
    plan: Annotated[Path | None, typer.Option(help="The plan the run executed (default: RUN_DIR/plan.json).")] = None,
    profile: Annotated[Path | None, typer.Option(
        help="Profile of the run's device (default: the built-in one of its GPU; a CPU run needs one).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for programs.")] = False,
    tolerance: Annotated[float, typer.Option(min=0.0, max=10.0,
                                             help="Largest error (0.15 = 15 %) before the exit status is 1.")
                         ] = VALIDATE_TOLERANCE,
) -> None:
    """Hold a run against its plan: per stage, the measured step time, tokens/s, MFU and memory
    beside the planner's prediction for that device; exit 1 when an error passes --tolerance."""
    from planner.report import print_validation
    from planner.validate import validate_run
    from profiles.schema import load_profile

    prof = load_profile(profile) if profile is not None else None
    run, prof, checks = validate_run(run_dir, plan, prof)
    failed = [c for c in checks if not c.passes(tolerance)]
    if as_json:
        print(json.dumps({"run": str(run_dir), "profile": prof.name, "profile_source": prof.source,
                          "tolerance": tolerance, "passed": not failed,
                          "stages": [c.to_json() for c in checks], "checkpoints": run.checkpoints()}, indent=1))
    else:
        print_validation(stdout, run, prof, checks, tolerance)
    if failed:
        raise typer.Exit(1)


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

    _check_output_folder(out, "--out")
    torch.set_num_threads(usable_cores())
    kinds = ["sp", "mup"] if parametrization.value == "both" else [parametrization.value]
    shape = ProxyShape(layers=layers, head_dim=head_dim, seq=seq, batch=batch, steps=steps)
    result = run_grid(_numbers(widths, int, "--widths"), _numbers(lrs, float, "--lrs"),
                      _numbers(output_mults, float, "--output-mults"), kinds, shape, out,
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

    _check_output_folder(out, "--out")
    dim_list = [d.strip() for d in dims.split(",") if d.strip()]
    if not dim_list or any(d not in ("depth", "width", "both") for d in dim_list):
        from planner.errors import FlmplanError

        raise FlmplanError(f"--dims takes depth, width and both, comma-separated; got {dims!r}.")
    shape = PairShape(hidden=hidden, layers=layers, steps=steps, batch=batch, seq=seq, lr=lr, grow_steps=grow_steps)
    result = run_pairs(shape, _numbers(points, float, "--points"), dim_list, _numbers(seeds, int, "--seeds"), out,
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

    _check_output_file(out, "--out", "loss-law.json")
    chart = chart or out.with_suffix(".html")
    _check_output_file(chart, "--chart", "loss-law.html")
    result = fit(runs, holdout=holdout, at_step=at_step)
    law = law_file(result, name)
    out.write_text(json.dumps(law, indent=1))
    write_figure(loss_fit_chart(result), chart)
    if as_json:
        print(json.dumps(law, indent=1))
        return
    print_loss_fit(stdout, result)
    stdout.print(f"wrote {out} (use: flmplan simulate --loss-law {out}) and the chart {chart}")


def _numbers(text: str, kind: type, option: str) -> list:
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

    _check_output_folder(out, "--out")
    result = evaluate(target, out, suite=suite, limit=limit, n=items, seed=seed,
                      log=(lambda _: None) if as_json else stderr.print)
    chart = write_figure(iq_chart(result), out / "iq.html")
    if as_json:
        print(json.dumps(result, indent=1))
        return
    print_iq(stdout, result)
    stdout.print(f"wrote {out / 'iq.json'}, lm-eval's results per stage and the chart {chart}")


@app.command()
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
    from planner.export import export_plan
    from planner.plan import load_plan

    _check_output_folder(out_dir, "--out")
    if to == ExportTarget.hf:
        _export_hf(plan_file, out_dir, nearest)
        return
    if not re.fullmatch(r"(\d+-)?\d{1,2}:\d{2}:\d{2}", time_limit):
        raise FlmplanError(f"--time {time_limit!r} is not a SLURM time limit; give D-HH:MM:SS or HH:MM:SS.")
    plan = load_plan(plan_file)
    for path in export_plan(plan, to.value, out_dir, plan_path=str(plan_file.resolve()), nearest=nearest,
                            time_limit=time_limit):
        stdout.print(f"wrote {path}")


@app.command()
def grow(
    checkpoint: Annotated[Path, typer.Argument(help="The previous stage's checkpoint, written by the tool (e.g. "
                                                    "torchtitan's outputs/checkpoint/step-N).")],
    plan_file: Annotated[Path, typer.Option("--plan", help="The plan the export was made from.")],
    stage: Annotated[int, typer.Option(help="The grown stage to write the first weights of (1-based).")],
    to: Annotated[str, typer.Option("--to", help="The tool whose checkpoint format to read and write: torchtitan.")
                  ] = "torchtitan",
    out: Annotated[Path, typer.Option(help="The checkpoint folder to write (the export's initial load path, e.g. "
                                           "outputs/checkpoint/stage2-grown).")] = Path("grown"),
    seed: Annotated[int, typer.Option(help="Seed of the new units' weights.")] = 0,
) -> None:
    """Write a grown stage's first weights from the previous stage's checkpoint of another tool, grown
    without masks and function-preserving (zero-initialised output projections; RMSNorm gains rescaled)."""
    from planner.plan import load_plan
    from runtime.grow_targets import grow_checkpoint

    _check_output_folder(out, "--out")
    record = grow_checkpoint(checkpoint, load_plan(plan_file), stage, to, out, seed=seed)
    o, n = record["old"], record["new"]
    stdout.print(f"wrote {out}: stage {stage}'s first weights for {to}, {record['parameters']:,} parameters "
                 f"({o['layers']} × {o['dim']} → {n['layers']} × {n['dim']}, heads {o['heads']} → {n['heads']}, "
                 f"MLP {o['ffn']} → {n['ffn']}); load it with checkpoint.initial_load_path and "
                 "initial_load_model_only")


def _export_hf(run: Path, out_dir: Path, nearest: bool) -> None:
    from planner.errors import FlmplanError
    from runtime.hf import export_hf

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


data_app = typer.Typer(cls=typer.core.TyperGroup, no_args_is_help=True,
                       help="Prepare corpora: tokenize once into Megatron-LM indexed datasets.")
app.add_typer(data_app, name="data")
TextUnit = StrEnum("TextUnit", ["document", "paragraph", "line"])


@data_app.command("prepare")
def data_prepare(
    inputs: Annotated[list[Path], typer.Argument(
        help="Text files (.txt, .md), JSON lines (.jsonl, .json), parquet files, folders of them, or a dataset "
             "folder saved with datasets' save_to_disk.")],
    out: Annotated[Path, typer.Option(help="The corpus prefix: writes PREFIX.bin, PREFIX.idx (Megatron-LM's "
                                           "indexed dataset), PREFIX.manifest.json and the tokenizer.")],
    tokenizer: Annotated[Path | None, typer.Option(
        help="A Hugging Face tokenizer.json, or a folder with one (default: UTF-8 bytes).")] = None,
    train_tokenizer: Annotated[int | None, typer.Option(
        min=257, help="Train a byte-level BPE of this many entries on the corpus itself (tokenizers' trainer).")
    ] = None,
    field: Annotated[str, typer.Option(help="The text field of JSON lines, parquet and datasets.")] = "text",
    text_unit: Annotated[TextUnit, typer.Option(
        case_sensitive=False, help="What one document of a text file is (paragraph: blocks between blank lines).")
    ] = TextUnit.paragraph,
    eod_token: Annotated[str | None, typer.Option(
        help="The tokenizer's end-of-document token (default: the first of <|endoftext|>, </s>, ... it has).")
    ] = None,
    batch_docs: Annotated[int, typer.Option(min=1, help="Documents per encode_batch call.")] = 512,
    as_json: Annotated[bool, typer.Option("--json", help="Print the manifest as JSON.")] = False,
) -> None:
    """Tokenize a corpus once, on all cores, into what `flmplan run --data` and Megatron-LM read (resumable)."""
    from runtime.prepare import prepare

    _check_output_file(out, "--out", "corpus")
    record = prepare(inputs, out, tokenizer=tokenizer, train_vocab=train_tokenizer, field=field,
                     unit=text_unit.value, eod_token=eod_token, batch_docs=batch_docs,
                     log=(lambda _: None) if as_json else stderr.print, progress=not as_json)
    if as_json:
        print(json.dumps(record, indent=1))
        return
    tok = record["tokenizer"]
    stdout.print(f"wrote {out}.bin and {out}.idx: {record['documents']:,} documents, {record['tokens']:,} tokens "
                 f"({record['dtype']}), {tok['kind']} tokenizer of {tok['vocab']:,} entries, "
                 f"{record['tokens'] / max(record['tokenizing_s'], 1e-9):,.0f} tokens/s; "
                 f"train on it with `flmplan run PLAN --data {out}`")


@app.command()
def run(
    plan_file: Annotated[Path, typer.Argument(help="A plan (flmplan simulate --out), or runtime/data/*.json.")],
    nproc: Annotated[int, typer.Option(min=1, help="Processes on this machine (torchrun --nproc-per-node).")] = 4,
    scale: Annotated[Scale, typer.Option(case_sensitive=False, help="tiny maps every stage to a CPU-sized model "
                                         "with the same growth steps; full runs the plan as written.")] = Scale.full,
    out: Annotated[Path, typer.Option(
        help="The run folder (checkpoints, metrics.jsonl); the same folder resumes the run.")] = Path("runs/latest"),
    data: Annotated[list[str] | None, typer.Option(help="Prepared corpora (`flmplan data prepare`: PREFIX of "
                                                        "PREFIX.bin/.idx), each as WEIGHT:PREFIX for a mixture; or "
                                                        "text files or folders, as bytes (default: the Python standard "
                                                        "library's sources).")] = None,
    steps: Annotated[int, typer.Option(min=1, help="With --scale tiny: optimizer steps per stage.")] = 40,
    max_restarts: Annotated[int, typer.Option(min=0, help="torchrun restarts after a failure (resumes from the "
                                                   "newest good checkpoint).")] = 0,
    dtype: Annotated[Dtype | None, typer.Option(case_sensitive=False, help="Instead of the plan's dtype (default: "
                                                "the plan's on GPUs, fp32 on CPUs).")] = None,
    compile: Annotated[bool | None, typer.Option("--compile/--no-compile", help="torch.compile each block "
                                                 "(default: on with GPUs, off on CPUs).")] = None,
    from_scratch: Annotated[bool, typer.Option("--from-scratch", help="Start over when no checkpoint in --out "
                                               "is usable (by default the run stops and says so).")] = False,
    teacher_data: Annotated[Path | None, typer.Option(
        help="Propositions for the plan's FreeLM stages (JSON lines: text, proposition, label; or iq: the IQ "
             "generators' train split), instead of the plan's teacher_data.")] = None,
    log_every: Annotated[int, typer.Option(min=1, help="Steps between metrics lines: the timing window "
                                           "`flmplan validate` takes medians over.")] = 10,
    pin_cores: Annotated[bool, typer.Option("--pin-cores/--no-pin-cores", help="On a CPU, keep each process's "
                                            "computing thread on its own share of the cores.")] = True,
) -> None:
    """Execute a plan with torch.distributed under torchrun --standalone (see the README for clusters)."""

    from planner.errors import FlmplanError
    from planner.plan import load_plan

    plan = load_plan(plan_file)
    _check_output_folder(out, "--out")
    # The data, before any process starts: it exists, is whole (or UTF-8 text), and fits the plan.
    from runtime.data import check_corpus, load_corpus

    corpus = load_corpus(data or (plan.data.specs() if plan.data else None))
    if scale is Scale.tiny:
        from planner.plan import plan_from_dict
        from runtime.scale import tiny_plan

        plan = plan_from_dict(tiny_plan(plan.to_json(), nproc, steps, vocab=corpus.vocab),
                              origin=f"Plan {plan_file} at --scale tiny")
    from runtime.model import check_trainable

    for k, st in enumerate(plan.stages):
        check_trainable(st.model, f"Stage {k + 1}'s model")
        lay = st.layout
        if lay.gpus != nproc:
            raise FlmplanError(
                f"Stage {k + 1} needs tp·pp·dp = {lay.tp}·{lay.pp}·{lay.dp} = {lay.gpus} processes but --nproc "
                f"is {nproc}; use --scale tiny to map the plan onto this machine, or run it on its cluster with "
                "the torchrun line in the README."
            )
    check_corpus(corpus, plan)
    plan = _with_teacher_data(plan, teacher_data, corpus)
    out.mkdir(parents=True, exist_ok=True)
    if _finished(out, plan):
        return
    lock = _lock_run_folder(out)
    try:
        _launch(plan.to_json(), out, nproc, max_restarts, data, _value(dtype), compile, from_scratch, log_every,
                pin_cores)
    finally:
        lock.unlink(missing_ok=True)
    _validate_after_run(out)


def _prepared_corpus(items: list[str]):
    """--data of simulate: prepared corpora only (a plan records files a cluster can read, not text to
    tokenize), whole and of one tokenizer."""
    from planner.errors import FlmplanError
    from runtime.data import load_corpus, parse_specs

    specs = parse_specs(items)
    if any(s.prefix is None for s in specs):
        raise FlmplanError("simulate --data takes prepared corpora (PREFIX of PREFIX.bin/.idx); prepare text with "
                           "`flmplan data prepare`.")
    return load_corpus(items)


def _with_data(plan, corpus):
    """The plan with its corpus: every stage's vocabulary holds the tokenizer, and how often the plan
    reads each source."""
    from planner.plan import plan_from_dict
    from runtime.data import check_corpus

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


def _with_teacher_data(plan, teacher_data: Path | None, corpus):
    """The plan with --teacher-data in its FreeLM stages (as an absolute path, so the run folder's copy
    of the plan resumes from anywhere), each stage's teacher file checked before any process starts."""
    from planner.errors import FlmplanError
    from planner.plan import plan_from_dict
    from runtime.freelm import teacher_source
    from runtime.train import teacher_samplers

    if teacher_data is not None and not plan.freelm_stages():
        raise FlmplanError("--teacher-data is for plans with a FreeLM objective; this plan trains language only "
                           "(plan one with `flmplan simulate --teacher-every K`).")
    raw = plan.to_json()
    for k in plan.freelm_stages():
        given = teacher_data or raw["stages"][k]["objective"].get("teacher_data")
        raw["stages"][k]["objective"]["teacher_data"] = teacher_source(given)
    plan = plan_from_dict(raw)
    teacher_samplers(plan, seed=0, corpus=corpus)
    return plan


def _finished(out: Path, plan) -> bool:
    """A run folder that already finished this plan: say so instead of starting it again."""
    from planner.plan import plan_fingerprint

    done = out / "DONE.json"
    if not done.is_file():
        return False
    try:
        record = json.loads(done.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        return False
    if not isinstance(record, dict) or record.get("plan_fingerprint") != plan_fingerprint(plan):
        return False
    n = record.get("stages")
    stdout.print(f"Run complete: {n} stage{'' if n == 1 else 's'} in {out} — nothing to do (metrics in "
                 f"{out / 'metrics.jsonl'}; `flmplan validate {out}` holds it against the plan; a new --out "
                 "starts another run).")
    return True


def _validate_after_run(out: Path) -> None:
    """Every finished run is held against its plan: on a GPU with the built-in profile; on a CPU,
    which has none, the command that does it."""
    from planner.validate import ValidateError, check_run, load_run, run_profile_for

    run, plan = load_run(out)
    if run.start.get("device_kind") == "cpu":
        stdout.print(f"Check the run against its plan: flmplan validate {out} --profile CPU_PROFILE.json "
                     "(measure this machine with `flmplan profile --device cpu --out CPU_PROFILE.json`)")
        return
    try:
        prof = run_profile_for(run, plan, None)
        checks = check_run(run, plan, prof)
    except ValidateError as err:
        stdout.print(f"Not validated: {err}")
        return
    from planner.report import print_validation

    print_validation(stdout, run, prof, checks, VALIDATE_TOLERANCE)


def _check_teacher_data(path: Path, teacher_every: int) -> None:
    """A teacher file is only meaningful with a teacher schedule, and must read as propositions."""
    from planner.errors import FlmplanError
    from runtime.freelm import IQ_SOURCE, read_teacher_file

    if not teacher_every:
        raise FlmplanError("--teacher-data needs --teacher-every K (every K-th step a teacher batch).")
    if str(path) != IQ_SOURCE:
        read_teacher_file(path)


def _check_output_file(path: Path, option: str, example: str) -> None:
    """A file the command will write: not a folder, and in a folder that exists or can be made."""
    from planner.errors import FlmplanError

    if path.is_dir():
        raise FlmplanError(f"{option} {path} is a folder; give a file name, like {path / example}.")
    _check_writable(path.parent, path, option)


def _check_output_folder(path: Path, option: str) -> None:
    """A folder the command will write into: not a file, and itself or its nearest existing
    parent writable, so that a bad --out is refused before any work (nothing is created yet)."""
    from planner.errors import FlmplanError

    if path.exists() and not path.is_dir():
        raise FlmplanError(f"{option} {path} is a file; give a folder.")
    _check_writable(path, path, option)


def _check_writable(where: Path, path: Path, option: str) -> None:
    """`where`, or the nearest folder above it that exists, can be written into."""
    from planner.errors import FlmplanError

    while not where.exists():
        where = where.parent
    if not where.is_dir() or not os.access(where, os.W_OK):
        raise FlmplanError(f"{option} {path} cannot be written: {where} is not a writable folder.")


def _lock_run_folder(out: Path) -> Path:
    """One live run per folder: a second `flmplan run` into the same --out is refused (a lock
    left by a run that died is taken over)."""
    from planner.errors import FlmplanError

    lock = out / "RUNNING.lock"
    try:
        pid = int(lock.read_text().split()[0])
        os.kill(pid, 0)
    except (OSError, ValueError, IndexError):
        pass                                   # no lock, or its run is gone
    else:
        raise FlmplanError(f"Another flmplan run (process {pid}) is writing to {out}; wait for it to finish "
                           "or choose another --out.")
    lock.write_text(f"{os.getpid()}\n")
    return lock


def _launch(raw: dict, out: Path, nproc: int, max_restarts: int, data, dtype, compile, from_scratch,
            log_every: int, pin_cores: bool) -> None:
    import signal
    import subprocess

    from planner.errors import FlmplanError
    from runtime.train import ERROR_FILE

    (out / ERROR_FILE).unlink(missing_ok=True)
    run_plan = out / "plan.json"
    run_plan.write_text(json.dumps(raw, indent=1))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           f"--max-restarts={max_restarts}", "-m", "runtime.train", "--plan", str(run_plan), "--out", str(out),
           "--log-every", str(log_every)]
    if data:
        cmd += ["--data", *map(str, data)]
    if dtype:
        cmd += ["--dtype", dtype]
    if compile is not None:
        cmd += ["--compile" if compile else "--no-compile"]
    if from_scratch:
        cmd += ["--from-scratch"]
    if not pin_cores:
        cmd += ["--no-pin-cores"]
    env = {**os.environ, "TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1", "OMP_NUM_THREADS": "1",
           "TORCHINDUCTOR_COMPILE_THREADS": "1"}
    stdout.print(f"[bold]{raw['name']}[/]: {len(raw['stages'])} stages on {nproc} processes → {out}")
    child = subprocess.Popen(cmd, env=env)
    # A scheduler's SIGTERM (or Ctrl-C) goes to torchrun, which passes it to every worker: they
    # finish the step in flight, save, and exit; this command then exits as the scheduler expects.
    received: list[int] = []

    def forward(signum, frame) -> None:
        received.append(signum)
        child.send_signal(signum)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        code = child.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if received:
        stdout.print(f"Stopped by signal {received[0]}; start the same command again to resume from "
                     f"{out / 'checkpoints'}.")
        raise typer.Exit(128 + received[0])
    error = out / ERROR_FILE
    if error.exists():
        raise FlmplanError(error.read_text().strip())
    if code != 0 or not (out / "DONE.json").exists():
        raise FlmplanError(f"The run stopped (exit code {code}) before finishing; start the same command again "
                           f"to resume from the newest good checkpoint in {out / 'checkpoints'}.")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
