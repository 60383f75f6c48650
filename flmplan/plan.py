"""`flmplan estimate`, `simulate` and `validate`: cost layouts, plan for a budget, hold a run against its plan."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
import typer.core

from flmplan.common import (
    VALIDATE_TOLERANCE,
    Attention,
    Dtype,
    IntervalRule,
    Schedule,
    app,
    check_output_file,
    check_teacher_data,
    load_profile_for,
    prepared_corpus,
    recorded_settings,
    settings_file,
    stderr,
    stdout,
    with_data,
)


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
        prof = load_profile_for(case.cluster.gpu, profile, dtype.value)
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
    ctx: typer.Context,
    config: Annotated[Path | None, typer.Option(
        "--config", is_eager=True, callback=settings_file,
        help="A TOML file of simulate's settings (option names with underscores, e.g. max_gpus = 96); flags given "
             "on the command line override it. The plan records every setting it was made with.")] = None,
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
            check_output_file(path, option, example)
    spec = get_gpu(gpu)
    source = None
    if teacher_data is not None:
        from runtime.freelm import teacher_source

        check_teacher_data(teacher_data, teacher_every)
        source = teacher_source(teacher_data)
    corpus = prepared_corpus(data) if data else None
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
    prof = load_profile_for(spec.key, profile)
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(), TextColumn("ETA"),
                  TimeRemainingColumn(), console=stderr, transient=True, disable=as_json) as bar:
        task = bar.add_task("searching growth schedules", total=1.0)

        def progress(what: str, share: float) -> None:
            bar.update(task, description=what, completed=share)

        result = plan_budget(settings, prof, loss_model, schedule.value, failures=failures, trials=trials, seed=seed,
                             confidence=confidence, gantt=report is not None, progress=progress)
    if corpus is not None:
        result.plan = with_data(result.plan, corpus)
    result.plan.assumptions["settings"] = recorded_settings(ctx.params)
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
    from planner.profile import load_profile
    from planner.report import print_validation
    from planner.validate import validate_run

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

