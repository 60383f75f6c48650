"""What people and programs see: rich tables in the terminal and JSON documents."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from rich.console import Console
from rich.table import Table

from planner.cost.device_profile import profile_quality
from planner.layout.case import Case
from planner.layout.search import SearchResult
from planner.model.specs import LAYOUT_LEGEND

_LAYOUT_FIELDS = ("tp", "pp", "dp", "micro_batch", "recompute", "sequence_parallel", "interleave", "zero")


def chosen_fields(case: Case, result: SearchResult) -> dict:
    """Layout fields the case left null, with what the search chose."""
    given = case.parallel.model_dump()
    chosen = result.best.layout.to_dict()
    return {k: chosen[k] for k in _LAYOUT_FIELDS if given.get(k) is None}


def estimate_json(case: Case, result: SearchResult, costliest: SearchResult | None = None) -> dict:
    est = result.best
    out = {
        "case": case.name,
        **est.to_dict(),
        "chosen": chosen_fields(case, result),
        "layouts_considered": result.considered,
        "layouts_rejected": dict(result.rejected),
        "measured": case.measured.model_dump(),
        "software": asdict(case.software_spec()),
    }
    if costliest is not None:
        c = costliest.best
        out["open_software_at_costliest"] = {"facts": dict(case.software.unstated_costliest),
                                             "iteration_s": c.iteration_s, "tflops_per_gpu_hfu": c.tflops_per_gpu_hfu,
                                             "mfu": c.mfu}
    return out


def software_line(case: Case, costliest: SearchResult | None = None) -> str:
    """The software facts the estimate assumed, which the case states and which it leaves open."""
    stated = case.software.stated()
    facts = [f"{case.attention_kernel()} attention"]
    for name, value in asdict(case.software_spec()).items():
        if name == "flash_attention" and case.attention_kernel() != "flash":
            continue
        facts.append(f"{name} {value}" + ("" if name in stated else " (not stated: default)"))
    line = "software: " + ", ".join(facts)
    if costliest is not None:
        open_facts = ", ".join(f"{k} {v}" for k, v in case.software.unstated_costliest.items())
        line += (f"; with the open facts at their costliest ({open_facts}): "
                 f"{costliest.best.tflops_per_gpu_hfu:.1f} TFLOP/s per GPU, {costliest.best.iteration_s:.3f} s")
    return line


def print_estimate(console: Console, case: Case, result: SearchResult, costliest: SearchResult | None = None) -> None:
    est = result.best
    model = est.model
    console.print(
        f"[bold]{case.name}[/]: {model.params() / 1e9:.1f}B parameters "
        f"({model.layers}×{model.hidden}, {model.heads} heads, seq {model.seq}) on "
        f"{est.cluster.gpus} × {est.cluster.gpu.key}; profile {est.profile_name}"
    )
    chosen = chosen_fields(case, result)
    picked = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in chosen.items())
    note = f" (searched {result.considered} layouts; chose {picked})" if chosen else ""
    console.print(f"layout: {est.layout.describe()}{note}")
    console.print(f"[dim]{LAYOUT_LEGEND}[/]")
    console.print(software_line(case, costliest))

    t = Table(title="Predicted step", show_header=True, header_style="bold")
    t.add_column("figure")
    t.add_column("value", justify="right")
    t.add_column("published", justify="right")
    meas = case.measured
    t.add_row("iteration", f"{est.iteration_s:.3f} s", _fmt(meas.iteration_s, "{:.3f} s"))
    t.add_row("tokens / s", f"{est.tokens_per_s:,.0f}", "")
    t.add_row("TFLOP/s per GPU (HFU, recompute counted)", f"{est.tflops_per_gpu_hfu:.1f}",
              _fmt(meas.tflops_per_gpu_hfu, "{:.1f}"))
    t.add_row("TFLOP/s per GPU (MFU, model FLOPs)", f"{est.tflops_per_gpu_mfu:.1f}", "")
    t.add_row("MFU / HFU", f"{est.mfu:.1%} / {est.hfu:.1%}", _fmt(meas.mfu, "{:.1%}"))
    t.add_row("memory per GPU", f"{est.memory_gib_per_gpu:.1f} of {est.cluster.gpu.memory_gib:g} GiB", "")
    console.print(t)

    b = Table(title="Where the step goes", header_style="bold")
    b.add_column("part")
    b.add_column("seconds", justify="right")
    b.add_column("share", justify="right")
    for name, seconds in asdict(est.breakdown).items():
        b.add_row(name.removesuffix("_s").replace("_", " "), f"{seconds:.3f}", f"{seconds / est.iteration_s:.1%}")
    console.print(b)


def baseline_stages(row) -> str:
    """A baseline's or alternative's stages by size: "15.8B → 51.4B → 101.7B"."""
    return " → ".join(x.split(" (")[-1].rstrip(")") for x in row.shapes)


def print_estimates(console: Console, rows: list) -> None:
    """Several case files, one row each: (case, result, costliest) as `estimate` made them."""
    t = Table(title="Estimates", header_style="bold")
    for col in ("case", "GPUs", "layout", "step s", "TFLOP/s", "MFU", "memory"):
        t.add_column(col, justify="left" if col in ("case", "layout") else "right")
    for case, result, _ in rows:
        e = result.best
        t.add_row(case.name, f"{e.cluster.gpus} × {e.cluster.gpu.key}", e.layout.describe(), f"{e.iteration_s:.3g}",
                  f"{e.tflops_per_gpu_hfu:.0f}", f"{e.mfu:.1%}", f"{e.memory_gib_per_gpu:.0f} GiB")
    console.print(t)
    console.print(f"[dim]{LAYOUT_LEGEND} TFLOP/s per GPU HFU-style (recompute counted).[/]")


def _fmt(value: float | None, pattern: str) -> str:
    return pattern.format(value) if value is not None else ""


def print_plan(console: Console, plan, searched: int = 0) -> None:
    """The plan for people: stages, totals, alternatives and baselines, and the assumptions."""
    c = plan.cluster
    console.print(
        f"[bold]{plan.name}[/] for {c.gpus} × {c.gpu} at ${c.price_per_gpu_hour:g}/GPU-hour "
        f"({c.price_source or 'catalog'}{', ' + c.price_date if c.price_date else ''}); objective: {plan.objective}"
        + (f"; {searched} schedules searched" if searched else "")
    )
    t = Table(title="Stages", header_style="bold")
    for col in ("stage", "layers×hidden", "grown by", "tokens", "days", "cost", "loss"):
        t.add_column(col, justify="left" if col in ("stage", "layers×hidden", "grown by") else "right")
    lay_t = Table(title="Parallel layout per stage", header_style="bold")
    for col in ("stage", "layout", "TFLOP/s", "MFU", "memory", "step"):
        lay_t.add_column(col, justify="left" if col in ("stage", "layout") else "right")
    for k, st in enumerate(plan.stages):
        m, p = st.model, st.predicted
        grown = "+".join({"hidden": "width", "layers": "depth"}[d] for d in st.growth.dims
                         if d in ("hidden", "layers")) if st.growth else ""
        t.add_row(f"{k + 1}. {st.name}", f"{m.layers}×{m.hidden}", grown, f"{st.tokens / 1e9:,.1f}B",
                  f"{p.days:.2f}", f"${p.cost_usd:,.0f}", f"{p.loss_end:.3f}" if p.loss_end is not None else "")
        lay_t.add_row(f"{k + 1}. {st.name}", st.layout.describe(), f"{p.tflops_per_gpu_hfu:.0f}", f"{p.mfu:.1%}",
                      f"{p.memory_gib_per_gpu:.0f} GiB", f"{p.step_s:.1f} s")
    tot = plan.totals
    t.add_row("[bold]total[/]", "", "", f"{tot.tokens / 1e9:,.1f}B", f"{tot.days:.2f}", f"${tot.cost_usd:,.0f}",
              f"{tot.predicted_loss:.3f}")
    console.print(t)
    if teacher := teacher_cost(plan):
        console.print(teacher)
    console.print(lay_t)
    console.print(f"[dim]{LAYOUT_LEGEND} TFLOP/s per GPU HFU-style (recompute counted); MFU counts model FLOPs "
                  "only.[/]")
    if opened := plan.assumptions.get("open_software_facts"):
        facts = ", ".join(f"{k} = {v}" for k, v in opened["facts_at_costliest"].items())
        (d0, d1, d2), (c0, c1, c2) = opened["days"], opened["cost_usd"]
        misses = ", ".join(f"{e:+.0%}" for e in opened["model_miss_on_stages"])
        console.print(f"Failure-free: {d0:.2f} days, ${c0:,.0f} with the software facts FLM-101B's sources state; "
                      f"{d1:.2f} days, ${c1:,.0f} with those they leave open at their costliest ({facts}); "
                      f"{d2:.2f} days, ${c2:,.0f} without the cost model's remaining optimism on FLM's published "
                      f"stage throughputs ({misses}). Stage days: "
                      + "; ".join(" / ".join(f"{x:.2f}" for x in stage) for stage in zip(*opened["stage_days"],
                                                                                            strict=True)) + ".")
    if plan.simulation:
        print_simulation(console, plan.simulation)
    rows = [(a, "alternative") for a in plan.alternatives] + [(b, "baseline") for b in plan.baselines]
    if rows:
        b = Table(title="Alternatives and baselines (same hardware and price)", header_style="bold")
        for col in ("", "stages", "GPUs", "tokens", "days", "cost", "loss"):
            b.add_column(col, justify="left" if col in ("", "stages") else "right",
                         ratio=2 if col in ("", "stages") else None)
        b.add_row("[bold]this plan[/]", " → ".join(f"{s.name}" for s in plan.stages), str(plan.cluster.gpus),
                  f"{tot.tokens / 1e9:,.1f}B", f"{tot.days:.2f}", f"${tot.cost_usd:,.0f}",
                  f"{tot.predicted_loss:.3f}")
        for row, kind in rows:
            b.add_row(f"{row.name}" + (" (alt.)" if kind == "alternative" else ""),
                      baseline_stages(row), str(row.gpus),
                      f"{row.tokens / 1e9:,.1f}B", f"{row.days:.2f}", f"${row.cost_usd:,.0f}",
                      f"{row.predicted_loss:.3f}")
        console.print(b)
    if plan.advice:
        console.print("[bold]Advice[/]")
        for a in plan.advice:
            console.print(f" • {a['message']}")
    console.print(
        f"[dim]Assumptions (a model, not a measurement): loss "
        f"{loss_model_words(plan.assumptions.get('loss_model', {}))}; "
        f"{plan.assumptions.get('grow_steps')} mask-ramp steps + "
        f"{plan.assumptions.get('min_steps_after_growth')} after each growth; deadline "
        f"{plan.assumptions.get('max_days')} days; step times from profile {plan.profile.get('name')} "
        f"({plan.profile.get('source')}).[/]"
    )


def loss_model_words(lm: dict) -> str:
    """The plan's loss model in one sentence: the law, where it comes from, and what a growth is assumed
    to carry over."""
    law = lm.get("law", {})
    origin = (f"fitted to {len(law.get('runs', []))} runs" if law.get("kind") == "fitted"
              else law.get("kind", "published"))
    return (f"{law.get('name')} scaling law ({origin}; {law.get('source')}) "
            f"L = {_g(law.get('E'))} + {_g(law.get('A'))}/N^{_g(law.get('alpha'))} + {_g(law.get('B'))}/D^"
            f"{_g(law.get('beta'))}; equal-loss continuation after growth (carry-over {lm.get('carryover')}, mask "
            f"ramp counts {lm.get('ramp_efficiency')}, token efficiency {lm.get('token_efficiency', 1.0):.3g}: "
            f"{lm.get('evidence', 'assumed')}; published stacking results ask for about 1.5, "
            f"benchmarks/growth_cases.py)")


def teacher_cost(plan) -> str:
    """What FreeLM's teacher signal adds to the plan, in steps and tokens (included in days and cost)."""
    teacher = [(st.objective.teacher_steps(st.steps), st) for st in plan.stages if st.objective.kind == "freelm"]
    if not teacher:
        return ""
    steps = sum(n for n, _ in teacher)
    tokens = sum(n * st.layout.global_batch * st.model.seq for n, st in teacher)
    every = teacher[0][1].objective.teacher_every
    return (f"FreeLM objective: every {every}th step is a teacher batch — {steps:,} steps, {tokens / 1e9:,.1f}B tokens "
            f"on top of the {plan.totals.tokens / 1e9:,.1f}B language tokens (+{tokens / plan.totals.tokens:.0%}), "
            "counted in the days and cost above.")


def _g(x) -> str:
    return f"{x:.4g}" if isinstance(x, float) else str(x)


def print_simulation(console: Console, sim: dict) -> None:
    t = Table(title=f"Run simulation: {sim['trials']} trials with failures, checkpoints and restarts",
              header_style="bold")
    for col in ("", "P50", "P90", "failure-free"):
        t.add_column(col, justify="right" if col else "left")
    t.add_row("days", f"{sim['days_p50']:.2f}", f"{sim['days_p90']:.2f}", f"{sim['days_ideal']:.2f}")
    for name, days in sim.get("stage_days_p50", {}).items():
        t.add_row(f"  stage {name} days", f"{days:.2f}", "", "")
    t.add_row("cost (spares included)", f"${sim['cost_p50']:,.0f}", f"${sim['cost_p90']:,.0f}",
              f"${sim['cost_ideal']:,.0f}")
    console.print(t)
    console.print(
        f"failures per run: mean {sim['failures_mean']:.1f} (P90 {sim['failures_p90']:.0f}); effective training "
        f"time {sim['ettr_mean']:.1%}; P(cost ≤ budget) = {sim['p_within_budget']:.0%}; checkpoint every "
        f"{sim['checkpoint_interval_min']:.0f} min ({sim['checkpoint_rule']}), {sim['failures_per_1000_node_days']:g} "
        f"failures per 1000 node-days, restart {sim['restart_min']:g} min, {sim['spare_nodes']} spare node(s)"
    )
    if "confidence" in sim:
        replans = f"{sim['replans']} re-plan{'' if sim['replans'] == 1 else 's'}"
        console.print(f"Planned so the budget holds at P{sim['confidence'] * 100:.0f} of the simulated cost "
                      f"(${sim['cost_at_confidence']:,.0f}; {replans}): "
                      + ("met." if sim["confidence_met"] else "[red]not met (see the advice)[/]."))


def pace(measured_s: float, predicted_s: float) -> str:
    """A step's error as a person says it: the run went N× faster or slower than planned."""
    ratio = measured_s / predicted_s
    if abs(ratio - 1) < 0.005:
        return "as planned"
    return f"ran {ratio:.2f}× slower" if ratio > 1 else f"ran {1 / ratio:.2f}× faster"


def print_validation(console: Console, run, profile, checks, tolerance: float) -> None:
    """One row per stage: measured / predicted / error for step time, tokens/s, MFU and memory."""
    start = run.start
    where = (f"{start.get('processes', '?')} processes on {start.get('device', 'an unrecorded device')}"
             + (f", {start['threads']} thread{'s' if start['threads'] != 1 else ''} each on {start['cores']} cores"
                if "threads" in start else ""))
    console.print(f"[bold]{run.folder}[/]: {where}; predicted with profile {profile.name} ({profile.source}); "
                  "warm-up steps left out")
    line, problems = profile_quality(profile)
    console.print(f"The profile: {line}." + "".join(f" [yellow]Its {p}.[/]" for p in problems))
    table = Table(show_header=True, header_style="bold")
    for col in ("stage", "steps (warm-up)", "step s run / plan", "error", "the run", "tokens/s run / plan",
                "MFU run / plan", "GiB run / plan"):
        table.add_column(col, justify="left" if col == "stage" else "right")
    for c in checks:
        ok = c.passes(tolerance)
        memory = f"{c.measured_memory_gib:.2f} / {c.predicted_memory_gib:.2f}"
        memory += f" ({c.memory_error:+.0%})" if c.memory_judged else " (—)"
        teacher = f", {c.teacher_steps} teacher" if c.teacher_steps else ""
        table.add_row(f"{c.stage} {c.name}", f"{c.steps} ({c.warmup_steps}){teacher}",
                      f"{c.measured_step_s:.3g} / {c.predicted_step_s:.3g}",
                      f"[{'green' if ok else 'red'}]{c.step_error:+.1%}[/]",
                      pace(c.measured_step_s, c.predicted_step_s),
                      f"{c.measured_tokens_per_s:,.0f} / {c.predicted_tokens_per_s:,.0f}",
                      f"{c.measured_mfu:.1%} / {c.predicted_mfu:.1%}", memory)
    console.print(table)
    failed = [c for c in checks if not c.passes(tolerance)]
    if any(c.compiled for c in checks):
        console.print("The run compiled its blocks (torch.compile): predicted with their element-wise ops fused, at "
                      "the fastest element-wise kernel the profile measured.")
    if any(c.teacher_steps for c in checks):
        console.print("FreeLM's teacher steps train on batches of the same size and length as language steps: "
                      "their tokens count in tokens/s, as the plan's steps and cost count them.")
    if any(not c.memory_judged for c in checks):
        console.print("(—) memory on a CPU is each process's peak resident set, which includes the Python and "
                      "torch runtime the planner does not count: shown, not judged.")
    saved = run.checkpoints()
    if saved:
        console.print(f"Checkpoints: {saved['count']} written, {saved['median_s']:.3g} s each (median; longest "
                      f"{saved['max_s']:.3g} s), left out of the step times (a full-size run's is `flmplan simulate "
                      "--checkpoint-min`).")
    verdict = (f"[red]{len(failed)} of {len(checks)} stages off by more than {tolerance:.0%}[/]" if failed
               else f"[green]every stage within {tolerance:.0%}[/]")
    console.print(verdict)


def print_tune(console: Console, result: dict) -> None:
    """The loss landscape of `flmplan tune`: per parametrization, final loss by width × learning
    rate (at each width's best output multiplier), the best marked, and how far the best rate drifts."""
    names = {"sp": "SP (standard parametrization)", "mup": "µP"}
    for kind, best in result["best"].items():
        t = Table(title=f"{names.get(kind, kind)}: final loss by width and learning rate", title_justify="left")
        t.add_column("width", justify="right")
        for lr in result["lrs"]:
            t.add_column(f"lr {lr:g}", justify="right")
        t.add_column("best lr", justify="right")
        for width in result["widths"]:
            b = best.get(width) or best.get(str(width))
            if b is None:
                t.add_row(str(width), *["diverged"] * len(result["lrs"]), "—")
                continue
            cells = []
            for lr in result["lrs"]:
                r = next(r for r in result["runs"] if r["parametrization"] == kind and r["width"] == width
                         and r["lr"] == lr and r["output_mult"] == b["output_mult"])
                text = "diverged" if r["diverged"] else f"{r['final_loss']:.4f}"
                cells.append(f"[bold green]{text}[/]" if lr == b["lr"] else text)
            om = f" (×{b['output_mult']:g})" if len(result["output_mults"]) > 1 else ""
            t.add_row(str(width), *cells, f"{b['lr']:g}{om}")
        console.print(t)
        console.print(f"  best learning rate moves {result['drift'][kind]:+.2f} factors of 2 from width "
                      f"{result['widths'][0]} to {result['widths'][-1]}")
    console.print(f"[dim]{result['how']}; data: {result['data']}.[/]")


def print_loss_fit(console: Console, result: dict) -> None:
    """µScaling's prediction of each model (held-out ones marked) and the fitted L(N, D) with errors."""
    mu, law = result["mu_scaling"], result["law"]
    console.print(f"µScaling at step {mu['at_step']} ({mu['measure']}): L(N) = "
                  f"{mu['a']:.4g}±{mu['a_err']:.2g}·(N/1e6)^({mu['b']:.3f}±{mu['b_err']:.2g}) + "
                  f"{mu['c']:.4f}±{mu['c_err']:.2g}")
    t = Table(title_justify="left")
    for col in ("run", "width", "params", "measured", "predicted", "error", "error %", ""):
        t.add_column(col, justify="right" if col not in ("run", "") else "left")
    for p in sorted(mu["predictions"], key=lambda p: p["params"]):
        t.add_row(Path(p["run"]).name, str(p["width"]), f"{p['params'] / 1e6:.3f}M", f"{p['measured']:.4f}",
                  f"{p['predicted']:.4f}", f"{p['error']:+.4f}", f"{p['error_pct']:+.2f}",
                  "[bold]held out[/]" if p["held_out"] else "fitted")
    console.print(t)
    e = law["errors"]
    console.print(f"L(N, D) = {law['E']:.4f}±{e['E']:.2g} + {law['A']:.4g}±{e['A']:.2g}/N^({law['alpha']:.3f}±"
                  f"{e['alpha']:.2g}) + {law['B']:.4g}±{e['B']:.2g}/D^({law['beta']:.3f}±{e['beta']:.2g}); rms "
                  f"residual {law['rms_residual']:.4f} over {law['points']} points of {len(result['runs'])} runs")
    console.print("[dim]Points along a curve are under that run's own schedule, not ends of runs of that length; "
                  "a law fitted on small models extrapolates with its errors.[/]")


def print_iq(console: Console, result: dict) -> None:
    """Stage × family accuracy with its 95 % interval, against the chance level."""
    t = Table(title=f"{result['suite']}: accuracy by stage ({result['items_per_task']} items per task)",
              title_justify="left")
    for col in ("stage", "family", "accuracy", "95 % interval", "chance", "items"):
        t.add_column(col, justify="left" if col in ("stage", "family") else "right")
    for r in result["rows"]:
        above = r["low"] > r["chance"]
        acc = f"[bold green]{r['accuracy']:.1%}[/]" if above else f"{r['accuracy']:.1%}"
        t.add_row(str(r["stage"]), r["family"].replace("_", " "), acc, f"{r['low']:.1%}–{r['high']:.1%}",
                  f"{r['chance']:.1%}", str(r["items"]))
    console.print(t)
    console.print("[dim]Green: the whole interval is above chance. Multiple choice scored by log-likelihood, "
                  "generation by exact match (chance 0).[/]")


def print_growth_pairs(console: Console, result: dict) -> None:
    """`flmplan grow-vs-scratch`: each grown run's speed-up against its seed's scratch run (a bound where it
    never reached the scratch loss), the decayed runs' final gap with its standard error, η per operator
    with its seeds, and the held-out pair's prediction."""
    table = Table(title=f"Grow versus scratch: target of {result['target_params'] / 1e6:.2f}M parameters, "
                        f"{result['shape']['steps']} steps ({result['data']})")
    for col in ("run", "operator", "factor", "grown at step", "FLOPs speed-up", "token speed-up",
                "final loss − scratch"):
        table.add_column(col, justify="left" if col == "run" else "right")
    for p in result["pairs"]:
        speedup = f"{p['speedup_flops']:+.1%}" if p["reached"] else f"< {p['speedup_bound']:+.1%} (censored)"
        gap = f"{p['final_gap']:+.4f} ± {p['final_gap_se']:.4f}" + ("" if p["final_gap_resolved"] else " (unresolved)")
        table.add_row(p["name"], p.get("operator", "MSG"), f"×{p['factor']:.2f}", str(p["grow_at_step"]), speedup,
                      f"{p['speedup_tokens']:+.1%}" if p["reached"] else "—", gap)
    console.print(table)
    for op, fit in result["fits"].items():
        seeds = ", ".join(f"{v:.3f}" for v in fit["per_seed"].values())
        console.print(f"η ({op}) = {fit['token_efficiency']:.3f} ± {fit['error']:.3f} from {fit['pairs']} pairs; "
                      f"per seed {seeds} ({fit['method']}).")
    held = result["held_out"]
    measured = (f"measured {held['measured']:+.1%}" if held["measured"] is not None
                else f"never reached the scratch loss: below {held['bound']:+.1%}")
    console.print(f"Held out {held['name']}: {measured}; predicted {held['predicted']:+.1%} "
                  f"({held['interval'][0]:+.1%} to {held['interval'][1]:+.1%} at η ± its error): {held['verdict']}. "
                  f"Held-out eval: {result['eval']['tokens']:,} tokens. {result['convention']}.")
