"""`flmplan simulate` as a library call: plan the growth schedule, cost the baselines, and
write it all into a Plan (the run simulation of planner/sim adds its spread)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

from planner.cost.device_profile import Profile
from planner.cost.model_error import ModelError, model_error_for
from planner.cost.step import estimate_step
from planner.errors import FlmplanError
from planner.growth.flm import flm_base, flm_software
from planner.growth.loss_law import GrowthLossModel
from planner.growth.operators import growth_between
from planner.growth.schedule import Schedule, Settings, StageRun
from planner.growth.schedule_search import Planner, flm_schedule
from planner.model.specs import ClusterSpec
from planner.plan.advice import Advice, advise
from planner.plan.plan_file import (
    Plan,
    PlanBaseline,
    PlanCluster,
    PlanGrowth,
    PlanObjective,
    PlanPredicted,
    PlanStage,
    PlanTotals,
)
from planner.sim.pipeline import simulate_estimate
from planner.sim.whole_run import DAY_S, FailureModel, RunSummary, StageWork, monte_carlo


@dataclass
class PlanResult:
    plan: Plan
    main: Schedule
    baselines: list[Schedule]
    alternatives: list[Schedule]
    searched: list[Schedule]
    costs: list[float] = field(default_factory=list)
    days: list[float] = field(default_factory=list)              # each simulated run's wall days
    timelines: dict[str, tuple[list[dict], str]] = field(default_factory=dict)


def parse_size(text: str) -> float:
    """'101B', '7.5b', '350M', '1e11' → parameters."""
    t = text.strip().upper()
    scale = {"B": 1e9, "M": 1e6, "T": 1e12}.get(t[-1:], 1.0)
    try:
        value = float(t[:-1] if t[-1:] in "BMT" else t) * scale
    except ValueError:
        raise FlmplanError(f"--target-size must look like 101B or 350M, got {text!r}.") from None
    if value <= 0:
        raise FlmplanError(f"--target-size must be positive, got {text!r}.")
    if value < 1e6:
        raise FlmplanError(f"--target-size {text} reads as {value:g} parameters; give the size with its unit, "
                           "like 101B or 350M.")
    return value


# By default the budget must hold in nine runs of ten, failures counted: the failure-free cost is
# what the budget buys only when nothing fails, which at 192 GPUs for weeks never happens.
DEFAULT_CONFIDENCE = 0.9
MAX_REPLANS = 8


def plan_budget(settings: Settings, profile: Profile, loss_model: GrowthLossModel, schedule: str = "auto",
                failures: FailureModel | None = None, trials: int = 1000, seed: int = 0,
                confidence: float | None = DEFAULT_CONFIDENCE, gantt: bool = False,
                progress=None) -> PlanResult:
    """Plan, then simulate the run with failures. With `confidence` (default 0.9) the plan is made
    again, at a cost factor raised by the shortfall, until its simulated cost at that quantile fits
    the budget; `None` plans to the failure-free cost. FLM-101B's own schedule is costed, not fitted.
    `progress(what, share)` hears how far the search has come."""
    failures = failures or FailureModel()
    if confidence is not None and not 0.5 <= confidence < 1:
        raise FlmplanError(f"--confidence must be between 0.5 and 1, got {confidence}.")
    if schedule != "flm":
        check_budget_floor(settings)
    if schedule == "flm":                  # FLM-101B's own run: its software, as its sources state it
        settings = dataclasses.replace(settings, software=flm_software())
    cache: dict = {}
    say = progress or (lambda what, share: None)
    result = _plan_once(settings, profile, loss_model, schedule, cache, lambda share: say("searching", share))
    say("simulating runs with failures", 1.0)
    error = model_error_for(profile)
    summary = simulate_schedule(result.main, failures, trials, seed, error)
    fitting = confidence is not None and schedule != "flm"
    replans = 0
    while fitting and replans < MAX_REPLANS:
        quantile_cost = summary.quantile([t.cost_usd for t in summary.trials], confidence)
        if quantile_cost <= settings.budget_usd:
            break
        factor = settings.cost_factor * quantile_cost / settings.budget_usd * 1.002
        settings = dataclasses.replace(settings, cost_factor=factor)
        say(f"re-planning to fit P{confidence * 100:.0f}", 1.0)
        result = _plan_once(settings, profile, loss_model, schedule, cache)
        summary = simulate_schedule(result.main, failures, trials, seed, error)
        replans += 1
    costs = [t.cost_usd for t in summary.trials]
    sim = summary.to_dict(keep_costs=False)
    if confidence is not None:
        reached = summary.quantile(costs, confidence)
        sim.update(confidence=confidence, cost_at_confidence=reached, replans=replans,
                   confidence_met=reached <= settings.budget_usd)
        if fitting and reached > settings.budget_usd:
            result.plan.advice.insert(0, Advice("confidence_not_met", (
                f"After {replans} re-plans the simulated cost at P{confidence * 100:.0f} is still ${reached:,.0f}, "
                f"over the ${settings.budget_usd:,.0f} budget: the budget holds in {sim['p_within_budget']:.0%} of the "
                "simulated runs."), {"confidence": confidence, "cost_at_confidence": reached,
                                     "p_within_budget": sim["p_within_budget"]}).to_json())
    sim["model_error"] = _model_error_report(result.main, summary, error, failures, trials, seed)
    result.plan.advice.append(_model_error_advice(sim, confidence))
    result.plan.simulation = sim
    result.plan.assumptions["cost_factor"] = settings.cost_factor
    result.plan.assumptions["software"] = dataclasses.asdict(settings.software)
    if schedule == "flm":
        result.plan.assumptions["open_software_facts"] = _open_facts_range(result, settings, profile, loss_model)
    result.costs = costs
    result.days = [t.wall_s / DAY_S for t in summary.trials]
    if gantt:
        result.timelines = pipeline_timelines(result.main, profile)
    return result


# The budgets around the one asked that the report shows: what half, twice and five times the money buy.
SWEEP_FACTORS = (0.5, 2.0, 5.0)


def budget_sweep(settings: Settings, profile: Profile, loss_model: GrowthLossModel, failures: FailureModel,
                 trials: int = 200, seed: int = 0, factors: tuple[float, ...] = SWEEP_FACTORS) -> list[dict]:
    """The same search at other budgets: each one's final size, stages, P90 days and dollars (failures and
    the model's own error drawn) and predicted loss; a budget that buys no plan says why."""
    rows = []
    for f in factors:
        budget = settings.budget_usd * f
        try:
            r = plan_budget(dataclasses.replace(settings, budget_usd=budget, cost_factor=1.0), profile, loss_model,
                            failures=failures, trials=trials, seed=seed)
        except FlmplanError as err:
            rows.append({"budget_usd": budget, "refused": str(err)})
            continue
        rows.append(budget_row(r.plan))
    return rows


def budget_row(plan: Plan) -> dict:
    """What a plan buys for its budget, as the report's sweep compares plans: its stages, GPUs, tokens,
    simulated P90 days and dollars (failure-free where it was not simulated) and predicted loss."""
    sim, tot = plan.simulation or {}, plan.totals
    return {"budget_usd": plan.assumptions["budget_usd"], "stages": [st.name for st in plan.stages],
            "gpus": plan.cluster.gpus, "tokens": tot.tokens, "days_p90": sim.get("days_p90", tot.days),
            "cost_p90": sim.get("cost_p90", tot.cost_usd), "loss": tot.predicted_loss}


def budget_floor_usd(settings: Settings) -> float:
    """A floor under any plan's cost, found without searching: a model of the target size trains at least
    the shortest stage the search allows (a first stage's steps, or a growth's ramp and the steps after
    it, whichever is fewer), every FLOP at the GPU's dense peak (6·N·tokens, Kaplan et al. 2020)."""
    steps = min(settings.min_first_stage_steps, settings.grow_steps + settings.min_steps_after_growth)
    tokens = steps * settings.global_batch * flm_base().seq
    gpu_hours = 6 * settings.target_params * tokens / (settings.gpu.peak_tflops_bf16 * 1e12) / 3600
    return gpu_hours * settings.price_per_gpu_hour


def check_budget_floor(settings: Settings) -> None:
    """Refuse at once a budget under the floor, before seconds of search."""
    floor = budget_floor_usd(settings)
    if settings.budget_usd < floor:
        raise FlmplanError(
            f"A budget of ${settings.budget_usd:,.0f} cannot pay for a {settings.target_params / 1e9:.0f}B model: "
            f"its shortest stage alone costs at least ${floor:,.0f} on {settings.gpu.key} at "
            f"${settings.price_per_gpu_hour:g}/GPU-hour, even at the GPU's peak; give a larger --budget or a "
            "smaller --target-size.")


def _model_error_report(main: Schedule, summary: RunSummary, error: ModelError, failures: FailureModel,
                        trials: int, seed: int) -> dict:
    """Which residuals the simulation drew, and the same run's figures without them (failures only)."""
    exact = simulate_schedule(main, failures, trials, seed).to_dict(keep_costs=False)
    drawn = [t.step_factor for t in summary.trials]
    return {**error.to_json(), "drawn_p10": summary.quantile(drawn, 0.1), "drawn_p90": summary.quantile(drawn, 0.9),
            "without": {k: exact[k] for k in ("days_p50", "days_p90", "cost_p50", "cost_p90", "p_within_budget")}}


def _model_error_advice(sim: dict, confidence: float | None) -> dict:
    err = sim["model_error"]
    q = f"P{confidence * 100:.0f}" if confidence is not None else "P90"
    at = sim["cost_at_confidence"] if confidence is not None else sim["cost_p90"]
    without = err["without"]["cost_p90"] if confidence in (None, 0.9) else None
    text = (f"The {q} cost of ${at:,.0f} includes the cost model's own error: each simulated run's steps take a "
            f"factor drawn from {err['source']} ({err['runs']} runs, {err['rows']} rows; measured / predicted step "
            f"{err['min_factor']:.2f} to {err['max_factor']:.2f}, mean {err['mean_factor']:.2f}).")
    if without is not None:
        text += f" With the step times taken as exact, P90 would be ${without:,.0f}."
    return Advice("model_error", text, {"cost_at_confidence": at, "cost_p90_without_model_error": without,
                                        "runs": err["runs"], "source": err["source"]}).to_json()


def _open_facts_range(result: PlanResult, settings: Settings, profile: Profile,
                      loss_model: GrowthLossModel) -> dict:
    """Days and dollars of FLM-101B's schedule (failure-free) as a range, not an assumption that
    fits: with the software facts its sources leave open at their default and at their costliest,
    and then with the cost model's remaining miss on FLM's published stage throughputs (with the
    open facts at their costliest) taken out: stage days × (1 + that error)."""
    from planner.layout.case import published_cases
    from planner.layout.search import compare_to_published

    costliest = flm_software(costliest=True)
    high = _plan_once(dataclasses.replace(settings, software=costliest), profile, loss_model, "flm").main
    low = result.main
    misses = [compare_to_published(c)["error_costliest"] for c in published_cases()
              if c.name.startswith("flm101b-stage")]
    calibrated = [d * (1 + e) for d, e in zip(high.stage_days(), misses, strict=True)]
    scale = sum(calibrated) / sum(high.stage_days())
    open_facts = {k: v for k, v in dataclasses.asdict(costliest).items() if v != getattr(settings.software, k)}
    return {"facts_at_costliest": open_facts,
            "days": [low.days, high.days, high.days * scale],
            "cost_usd": [low.cost_usd, high.cost_usd, high.cost_usd * scale],
            "stage_days": [low.stage_days(), high.stage_days(), calibrated],
            "model_miss_on_stages": misses}


def _plan_once(settings: Settings, profile: Profile, loss_model: GrowthLossModel, schedule: str,
               stage_cache: dict | None = None, progress=None) -> PlanResult:
    planner = Planner(settings, profile, loss_model, stage_cache, progress)
    base = dataclasses.replace(flm_base(), position=settings.position)
    flm = flm_schedule(planner)
    if schedule == "flm":
        if flm is None:
            raise FlmplanError("FLM-101B's schedule does not fit this cluster; use --schedule auto.")
        main, alternatives, searched = flm, [], []
    elif schedule == "auto":
        main, most = planner.search(base)
        alternatives = [most] if most.stages != main.stages else []
        for a in alternatives:
            a.name = "most tokens for the money"
        if planner.best_without_raise is not None:
            alternatives.append(planner.best_without_raise)
        searched = planner.evaluated
    else:
        raise FlmplanError(f"--schedule must be auto or flm, got {schedule!r}.")
    final = main.stages[-1].model
    baselines = [b for b in (
        flm if schedule != "flm" else None,
        planner.scratch_for_money(final, main.gpus),
        planner.fixed("target from scratch, same tokens", [final], [main.tokens], main.gpus),
        planner.compute_optimal(base, main.gpus),
    ) if b is not None]
    plan = build_plan(main, settings, profile, loss_model, baselines, alternatives,
                      objective="FLM-101B's own schedule" if schedule == "flm" else
                      "lowest predicted final loss within the budget")
    plan.advice = [a.to_json() for a in advise(main, baselines, planner, searched=schedule != "flm")]
    return PlanResult(plan=plan, main=main, baselines=baselines, alternatives=alternatives, searched=searched)


def stage_works(s: Schedule) -> list[StageWork]:
    transition = s.settings.transition_hours * 3600
    return [StageWork(name=f"{st.model.params() / 1e9:.1f}B", work_s=st.steps(st.layout.global_batch) * st.step_s,
                      transition_s=transition if k < len(s.stages) - 1 else 0.0)
            for k, st in enumerate(s.stages)]


def simulate_schedule(s: Schedule, fm: FailureModel, trials: int, seed: int,
                      model_error: ModelError | None = None) -> RunSummary:
    gpn = s.settings.gpu.gpus_per_node
    return monte_carlo(stage_works(s), max(1, s.gpus // gpn), min(gpn, s.gpus), s.settings.price_per_gpu_hour, fm,
                       trials, seed, s.settings.budget_usd, model_error)


def pipeline_timelines(s: Schedule, profile: Profile, max_micro_batches: int = 16) -> dict:
    """The simulated pipeline schedule of one step of each stage (fewer micro-batches when
    there are many, so that the picture reads)."""
    out = {}
    for st in s.stages:
        lay = st.layout
        m = lay.micro_batches
        shown = m
        if m > max_micro_batches:
            shown = max(lay.pp, max_micro_batches // lay.pp * lay.pp)
        shown_layout = lay.with_(global_batch=shown * lay.micro_batch * lay.dp)
        cluster = ClusterSpec(gpu=s.settings.gpu, gpus=s.gpus, gpus_per_node=s.settings.gpu.gpus_per_node)
        est = estimate_step(st.model, cluster, shown_layout, profile)
        sim = simulate_estimate(est, profile)
        note = f" ({shown} of its {m} micro-batches shown)" if shown != m else ""
        out[f"{st.model.params() / 1e9:.1f}B"] = (sim.timeline, note)
    return out


def objective_of(settings: Settings) -> PlanObjective:
    """The stages' objective: FreeLM's teacher signal every k-th step when planned with one."""
    if not settings.teacher_every:
        return PlanObjective()
    return PlanObjective(kind="freelm", teacher_every=settings.teacher_every, teacher_data=settings.teacher_data)


def _stage_lr(st: StageRun) -> float:
    """The stage's own learning rate when its source states one; else FLM-101B's 4e-4 at 16B,
    scaled by 1/√(params / 16B) above it."""
    if st.lr is not None:
        return st.lr
    return round(4e-4 / math.sqrt(max(st.model.params() / 16e9, 1.0)), 6)


def summary(s: Schedule) -> PlanBaseline:
    return PlanBaseline(
        name=s.name,
        shapes=[f"{st.model.layers}×{st.model.hidden} ({st.model.params() / 1e9:.1f}B)" for st in s.stages],
        tokens=s.tokens, days=s.days, cost_usd=s.cost_usd, predicted_loss=s.loss, compute_flops=s.compute_flops,
        gpus=s.gpus,
    )


def build_plan(s: Schedule, settings: Settings, profile: Profile, loss_model: GrowthLossModel,
               baselines: list[Schedule], alternatives: list[Schedule], objective: str) -> Plan:
    gpu = settings.gpu
    catalog_price = settings.price_per_gpu_hour == gpu.price.usd_per_gpu_hour
    stages = []
    for k, st in enumerate(s.stages):
        m = st.model
        growth = None
        if k > 0:
            g = growth_between(s.stages[k - 1].model, m, k - 1)
            growth = PlanGrowth(**g.to_dict(settings.grow_steps))
        days = st.days(st.layout.global_batch)
        stages.append(PlanStage(
            name=f"{m.params() / 1e9:.1f}B",
            model=m,
            tokens=st.tokens,
            steps=st.steps(st.layout.global_batch),
            lr=_stage_lr(st),
            objective=objective_of(settings),
            layout=st.layout,
            growth=growth,
            predicted=PlanPredicted(
                step_s=st.step_s, tflops_per_gpu_hfu=st.tflops_hfu, tflops_per_gpu_mfu=st.tflops_mfu, mfu=st.mfu,
                days=days, cost_usd=s.stage_cost_usd(st),
                memory_gib_per_gpu=st.memory_gib, loss_end=st.loss_end),
        ))
    return Plan(
        name=s.name,
        objective=objective,
        profile={"name": profile.name, "source": profile.source, "date": profile.date},
        cluster=PlanCluster(gpu=gpu.key, gpus=s.gpus, gpus_per_node=gpu.gpus_per_node,
                            price_per_gpu_hour=settings.price_per_gpu_hour,
                            price_date=gpu.price.date if catalog_price else "",
                            price_source=gpu.price.source if catalog_price else "given with --price"),
        stages=stages,
        totals=PlanTotals(days=s.days, cost_usd=s.cost_usd, tokens=s.tokens, predicted_loss=s.loss,
                          gpu_hours=s.gpu_hours),
        baselines=[summary(b) for b in baselines],
        alternatives=[summary(a) for a in alternatives],
        assumptions={
            "loss_model": loss_model.describe(),
            "grow_steps": settings.grow_steps,
            "min_steps_after_growth": settings.min_steps_after_growth,
            "min_first_stage_steps": settings.min_first_stage_steps,
            "transition_hours": settings.transition_hours,
            "max_days": settings.max_days,
            "growth_timing": settings.growth_timing,
            "position": settings.position,
            "max_growth_factor": settings.max_growth_factor,
            "budget_usd": settings.budget_usd,
            "cost_factor": settings.cost_factor,
            "attention_kernel": settings.attention,
            "costs": "failure-free step times from the cost model and profile; growth transitions at "
                     f"{settings.transition_hours} h each",
        },
    )
