"""`flmplan simulate`: plan growth stages, layouts and cluster for a budget, and simulate the run with failures."""

from __future__ import annotations

import dataclasses
import json

import typer

from flmplan.common import (
    check_output_file,
    check_teacher_data,
    load_profile_for,
    prepared_corpus,
    recorded_settings,
    stderr,
    stdout,
    with_data,
)
from flmplan.settings import SimulateSettings, command


def simulate_budget(ctx: typer.Context, s: SimulateSettings) -> None:
    """Plan growth stages, layouts and cluster for a budget; simulate the run with failures."""
    settings, corpus = checked_inputs(s)
    loss_model, failures, prof = models(s, settings)
    result = plan_with_progress(s, settings, loss_model, failures, prof)
    if corpus is not None:
        result.plan = with_data(result.plan, corpus)
    result.plan.assumptions["settings"] = recorded_settings(ctx.params)
    if s.out:
        from planner.plan.plan_file import save_plan

        save_plan(result.plan, s.out)
    if s.report:
        from planner.report.html_report import write_report

        given, command_line = given_settings(result.plan.assumptions["settings"])
        sweep = None
        if s.schedule.value == "auto":
            from planner.plan.budget import budget_sweep

            stderr.print("the report: planning half, twice and five times the budget")
            sweep = budget_sweep(settings, prof, loss_model, failures, seed=s.seed)
        write_report(result, s.report, command=command_line,
                     plan_file=str(s.out) if s.out else "plan.json", given=given, sweep=sweep)
    if s.as_json:
        print(json.dumps(result.plan.to_json(), indent=1))
        return
    print_result(s, result)


def given_settings(recorded: dict) -> tuple[dict, str]:
    """The settings the user gave (on the command line or in --config), not the defaults, and the command
    line that makes the plan again with them."""
    import shlex

    defaults = {f.name: f.default for f in dataclasses.fields(SimulateSettings)}
    given = {k: v for k, v in recorded.items()
             if k in defaults and v not in (None, [], "") and v != recorded_settings({k: defaults[k]})[k]}
    words = ["flmplan", "simulate"]
    for k, v in given.items():
        flag = "--" + k.replace("_", "-").replace("as-json", "json")
        words += [flag] if v is True else [flag, *map(str, v)] if isinstance(v, list) else [flag, str(v)]
    return given, shlex.join(words)


def checked_inputs(s: SimulateSettings):
    """Everything that can be checked without planning, checked first (planning takes seconds): the
    search's settings (with the teacher signal's source) and the corpus."""
    from planner.growth.schedule import Settings
    from planner.model.specs import get_gpu
    from planner.plan.budget import parse_size

    for path, option, example in ((s.out, "--out", "plan.json"), (s.report, "--report", "report.html")):
        if path is not None:
            check_output_file(path, option, example)
    spec = get_gpu(s.gpu)
    source = None
    if s.teacher_data is not None:
        from runtime.objectives.freelm import teacher_source

        check_teacher_data(s.teacher_data, s.teacher_every)
        source = teacher_source(s.teacher_data)
    corpus = prepared_corpus(s.data) if s.data else None
    settings = Settings(gpu=spec, price_per_gpu_hour=spec.price.usd_per_gpu_hour if s.price is None else s.price,
                        max_gpus=s.max_gpus, target_params=parse_size(s.target_size), budget_usd=s.budget,
                        global_batch=s.global_batch, grow_steps=s.grow_steps, max_days=s.max_days,
                        attention=s.attention.value, max_growth_factor=s.max_growth_factor,
                        growth_timing=s.growth_timing.value, teacher_every=s.teacher_every, teacher_data=source,
                        position=s.position.value)
    return settings, corpus


def models(s: SimulateSettings, settings):
    """The loss model, the failure model and the profile the settings name."""
    from planner.growth.evidence import load_token_efficiency
    from planner.growth.loss_law import GrowthLossModel, load_law
    from planner.sim.whole_run import FailureModel

    eta, eta_error, evidence = load_token_efficiency(s.token_efficiency)
    loss_model = GrowthLossModel(law=load_law(s.loss_law), carryover=s.carryover, ramp_efficiency=s.ramp_efficiency,
                                 token_efficiency=eta, evidence=evidence, token_efficiency_error=eta_error)
    failures = FailureModel(
        failures_per_1000_node_days=s.failure_rate, restart_min=s.restart_min, checkpoint_min=s.checkpoint_min,
        checkpoint_interval_min=s.checkpoint_interval_min, interval_rule=s.checkpoint_rule.value,
        spare_fraction=s.spare_fraction,
        spot_preemptions_per_day=s.spot_per_day, spot_notice_min=s.spot_notice_min)
    return loss_model, failures, load_profile_for(settings.gpu.key, s.profile)


def plan_with_progress(s: SimulateSettings, settings, loss_model, failures, prof):
    """The plan from the settings and their models, with a bar."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from planner.plan.budget import plan_budget

    with Progress(TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(), TextColumn("ETA"),
                  TimeRemainingColumn(), console=stderr, transient=True, disable=s.as_json) as bar:
        task = bar.add_task("searching growth schedules", total=1.0)

        def progress(what: str, share: float) -> None:
            bar.update(task, description=what, completed=share)

        return plan_budget(settings, prof, loss_model, s.schedule.value, failures=failures, trials=s.trials,
                           seed=s.seed, confidence=s.confidence, gantt=s.report is not None, progress=progress)


def print_result(s: SimulateSettings, result) -> None:
    """The plan as a person reads it, its corpus, and what was written."""
    from planner.report.terminal import print_plan

    print_plan(stdout, result.plan, searched=len(result.searched))
    if result.plan.data:
        d = result.plan.data
        stdout.print(f"Data: {d.tokens:,} tokens in {len(d.sources)} source{'s' if len(d.sources) > 1 else ''} "
                     f"({d.tokenizer['kind']} tokenizer, {d.tokenizer['vocab']:,} entries); the plan reads "
                     + (f"its most-read source {d.epochs:.2f} times (each epoch in a new order)." if d.epochs > 1
                        else f"{d.epochs:.0%} of it."))
    for path, what in ((s.out, "plan"), (s.report, "report")):
        if path:
            stdout.print(f"wrote {what} {path}")


simulate = command(SimulateSettings, simulate_budget)
