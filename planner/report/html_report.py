"""The plan as an HTML page (plotly): the tables of the console (stages and their layouts,
alternatives and baselines, advice, assumptions), then the timeline, cost breakdown, loss against
compute, the plans searched, and (with the run simulation) each stage's pipeline Gantt and the
cost histogram."""

from __future__ import annotations

import html
from pathlib import Path

import plotly.graph_objects as go

from planner.growth.loss_law import GrowthLossModel, ScalingLaw
from planner.growth.schedule import Schedule
from planner.model.specs import LAYOUT_LEGEND, get_gpu
from planner.plan.budget import budget_row
from planner.report.terminal import baseline_stages, loss_model_words

_PART_NAMES = {"compute_s": "compute", "recompute_s": "recompute", "tp_comm_s": "TP comm", "pp_comm_s": "PP comm",
               "bubble_s": "pipeline bubble", "dp_comm_s": "DP comm", "optimizer_s": "optimizer"}
_COLORS = ["#4C78A8", "#F58518", "#54A24B", "#E45756", "#72B7B2", "#B279A2", "#FF9DA6", "#9D755D"]


def timeline(s: Schedule) -> go.Figure:
    fig = go.Figure()
    start = 0.0
    for k, (st, days) in enumerate(zip(s.stages, s.stage_days(), strict=True)):
        label = f"{st.model.params() / 1e9:.1f}B ({st.model.layers}×{st.model.hidden})"
        fig.add_trace(go.Bar(x=[days], y=["stages"], base=[start], orientation="h", name=label,
                             marker_color=_COLORS[k % len(_COLORS)], text=f"{label}<br>{days:.1f} d",
                             textposition="inside", hovertemplate=f"{label}: day %{{base:.1f}} + %{{x:.2f}} d"))
        start += days + (s.settings.transition_hours / 24 if k < len(s.stages) - 1 else 0)
    fig.update_layout(title="Stage timeline (failure-free)", xaxis_title="days", barmode="stack", height=260,
                      showlegend=False)
    return fig


def cost_breakdown(s: Schedule) -> go.Figure:
    fig = go.Figure()
    names = [f"{st.model.params() / 1e9:.1f}B" for st in s.stages]
    price = s.settings.price_per_gpu_hour * s.gpus / 3600
    for i, (part, label) in enumerate(_PART_NAMES.items()):
        values = [st.breakdown.get(part, 0.0) * st.steps(st.layout.global_batch) * price for st in s.stages]
        fig.add_trace(go.Bar(x=names, y=values, name=label, marker_color=_COLORS[i % len(_COLORS)]))
    fig.update_layout(title="Where the money goes, per stage", yaxis_title="USD", barmode="stack", height=380)
    return fig


def loss_vs_compute(main: Schedule, others: list[Schedule], loss_model) -> go.Figure:
    fig = go.Figure()
    for k, s in enumerate([main, *others]):
        params = [st.model.params() for st in s.stages]
        flops, losses = loss_model.trajectory(params, [st.tokens for st in s.stages], s.ramp_tokens)
        fig.add_trace(go.Scatter(x=flops, y=losses, mode="lines", name=("this plan: " if k == 0 else "") + s.name,
                                 line={"width": 4 if k == 0 else 2, "color": _COLORS[k % len(_COLORS)]}))
    fig.update_layout(title="Predicted loss against training compute (loss model; not a measurement)",
                      xaxis_title="training FLOPs (6·N·D)", yaxis_title="predicted loss", xaxis_type="log",
                      height=420)
    return fig


def searched_plans(main: Schedule, searched: list[Schedule]) -> go.Figure:
    fig = go.Figure()
    if searched:
        fig.add_trace(go.Scatter(
            x=[s.cost_usd for s in searched], y=[s.loss for s in searched], mode="markers", name="plans searched",
            marker={"size": 6, "color": [len(s.stages) for s in searched], "colorscale": "Viridis",
                    "colorbar": {"title": "stages"}, "opacity": 0.6},
            text=[" → ".join(f"{st.model.params() / 1e9:.0f}B" for st in s.stages) + f", {s.gpus} GPUs"
                  for s in searched],
            hovertemplate="%{text}<br>$%{x:,.0f}, loss %{y:.4f}"))
    fig.add_trace(go.Scatter(x=[main.cost_usd], y=[main.loss], mode="markers", name="chosen",
                             marker={"size": 16, "symbol": "star", "color": "#E45756"}))
    fig.update_layout(title="Cost against predicted loss over the plans searched", xaxis_title="USD (failure-free)",
                      yaxis_title="predicted final loss", height=420,
                      legend={"orientation": "h", "y": 1.08, "x": 0.0})
    return fig


def pipeline_gantt(stage_name: str, rows: list[dict], note: str = "") -> go.Figure:
    """One step of a pipeline stage layout: who computes what when (from the simpy step simulation)."""
    fig = go.Figure()
    colors = {"forward": "#4C78A8", "backward": "#F58518", "p2p": "#9D755D", "dp_reduce": "#54A24B"}
    for kind, color in colors.items():
        mine = [r for r in rows if r["kind"] == kind]
        if not mine:
            continue
        fig.add_trace(go.Bar(
            x=[r["end_s"] - r["start_s"] for r in mine], y=[f"pipeline stage {r['stage'] + 1}" for r in mine],
            base=[r["start_s"] for r in mine], orientation="h", marker_color=color, name=kind,
            text=[str(r.get("micro_batch", "")) if kind in ("forward", "backward") else "" for r in mine],
            textposition="inside", insidetextanchor="middle",
            hovertemplate=kind + " %{text}: %{base:.3f} s + %{x:.3f} s<extra></extra>"))
    stages = len({r["stage"] for r in rows})
    fig.update_layout(title=f"One optimizer step of the {stage_name} stage, simulated{note}", xaxis_title="seconds",
                      barmode="overlay", height=160 + 36 * stages, yaxis={"autorange": "reversed"},
                      legend={"orientation": "h", "y": -0.35})
    return fig


def cost_histogram(costs: list[float], budget: float, p90_exact: float | None = None) -> go.Figure:
    fig = go.Figure(go.Histogram(x=costs, nbinsx=40, marker_color="#4C78A8", name="simulated runs"))
    fig.add_vline(x=budget, line_dash="dash", line_color="#E45756", annotation_text="budget")
    if p90_exact is not None:
        fig.add_vline(x=p90_exact, line_dash="dot", line_color="#72B7B2",
                      annotation_text="P90 with step times exact", annotation_position="bottom right")
    fig.update_layout(title="Cost of the whole run over the Monte Carlo trials (failures, restarts, checkpoints and "
                            "the cost model's own error)", xaxis_title="USD", yaxis_title="trials", height=380)
    return fig


def days_histogram(days: list[float], deadline: float) -> go.Figure:
    fig = go.Figure(go.Histogram(x=days, nbinsx=40, marker_color="#F58518", name="simulated runs"))
    fig.add_vline(x=deadline, line_dash="dash", line_color="#E45756", annotation_text="deadline")
    fig.update_layout(title="Days of the whole run over the Monte Carlo trials", xaxis_title="days",
                      yaxis_title="trials", height=380)
    return fig


def memory_chart(plan) -> go.Figure:
    """Each stage's memory per GPU against what the GPU holds."""
    names = [f"{k + 1}. {st.name}" for k, st in enumerate(plan.stages)]
    fig = go.Figure(go.Bar(x=names, y=[st.predicted.memory_gib_per_gpu for st in plan.stages],
                           marker_color="#54A24B", name="predicted memory per GPU"))
    capacity = get_gpu(plan.cluster.gpu).memory_gib
    fig.add_hline(y=capacity, line_dash="dash", line_color="#E45756", annotation_text=f"{capacity:g} GiB per GPU")
    fig.update_layout(title="Memory per GPU by stage, against the GPU's capacity", yaxis_title="GiB", height=360)
    return fig


def budget_table(plan, sweep: list[dict] | None) -> str:
    """What other budgets buy, from the same search (planner/plan/budget.py budget_sweep), beside this one."""
    if not sweep:
        return ""
    this = budget_row(plan)
    rows = []
    for r in sorted([*sweep, this], key=lambda r: r["budget_usd"]):
        mark = " (this plan)" if r is this else ""
        if "refused" in r:
            rows.append([f"${r['budget_usd']:,.0f}", "no plan: " + r["refused"], "", "", "", "", ""])
            continue
        rows.append([f"${r['budget_usd']:,.0f}{mark}", " → ".join(r["stages"]), str(r["gpus"]),
                     f"{r['tokens'] / 1e9:,.0f}B", f"{r['days_p90']:.1f}", f"${r['cost_p90']:,.0f}",
                     f"{r['loss']:.3f}"])
    return _table("What other budgets buy (the same search; P90 with failures and the model's own error)",
                  ["budget", "stages", "GPUs", "tokens", "days P90", "cost P90", "loss"], rows, "budgets")


def next_commands(plan, plan_file: str) -> str:
    """What to run next with this plan."""
    xpos = any(st.model.position == "xpos" for st in plan.stages)
    lines = [f"flmplan run {plan_file} --scale tiny --nproc 2 --out runs/tiny   # every stage at CPU size, here",
             f"flmplan export {plan_file} --to megatron{' --nearest' if xpos else ''} --out exports/",
             f"flmplan export {plan_file} --to slurm --out exports/"]
    return ("<h2>Next</h2><pre>" + html.escape("\n".join(lines)) + "</pre>"
            + ("<p><small>The plan uses xPos, which Megatron-LM and torchtitan do not have: --nearest exports "
               "rotary; plan with --position rotary to export it as planned.</small></p>" if xpos else ""))


def _plain(value) -> str:
    """A nested assumption in words: "key value; …" for tables, items joined for lists."""
    if isinstance(value, dict):
        return "; ".join(f"{k.replace('_', ' ')} {_plain(v)}" for k, v in value.items())
    if isinstance(value, list | tuple):
        return ", ".join(_plain(v) for v in value)
    if isinstance(value, float):
        return f"{value:,.0f}" if value.is_integer() and abs(value) >= 1e4 else f"{value:.4g}"
    return str(value)


def _table(title: str, header: list[str], rows: list[list[str]], anchor: str = "") -> str:
    """A titled table; `anchor` names it for links (report.html#budgets)."""
    cells = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    name = f" id='{anchor}'" if anchor else ""
    return f"<h2{name}>{html.escape(title)}</h2><table><thead><tr>{cells}</tr></thead><tbody>{body}</tbody></table>"


def plan_tables(plan, given: dict | None = None) -> str:
    """The plan's stages with their layouts, the alternatives and baselines, the settings given (not the
    defaults, in words) and the assumptions."""
    stages = [[f"{k + 1}. {st.name}", f"{st.model.layers}×{st.model.hidden}", f"{st.tokens / 1e9:,.1f}B",
               f"{st.predicted.days:.2f}", f"${st.predicted.cost_usd:,.0f}", f"{st.predicted.loss_end:.3f}",
               st.layout.describe(), f"{st.predicted.tflops_per_gpu_hfu:.0f}", f"{st.predicted.mfu:.1%}",
               f"{st.predicted.memory_gib_per_gpu:.0f} GiB", f"{st.predicted.step_s:.1f} s"]
              for k, st in enumerate(plan.stages)]
    others = [[b.name, baseline_stages(b), b.gpus,
               f"{b.tokens / 1e9:,.1f}B", f"{b.days:.2f}", f"${b.cost_usd:,.0f}", f"{b.predicted_loss:.3f}"]
              for b in [*plan.alternatives, *plan.baselines]]
    words = {"loss_model": loss_model_words, "budget_usd": lambda v: f"${v:,.0f}"}
    assumptions = [[k.replace("_", " ").removesuffix(" usd"), words.get(k, _plain)(v)]
                   for k, v in plan.assumptions.items() if k != "settings"]
    settings = [[k.replace("_", " ").replace("as json", "json"), _plain(v)] for k, v in (given or {}).items()]
    return (_table("Stages", ["stage", "layers×hidden", "tokens", "days", "cost", "loss", "layout", "TFLOP/s",
                              "MFU", "memory", "step"], stages)
            + f"<p><small>{html.escape(LAYOUT_LEGEND)}</small></p>"
            + _table("Alternatives and baselines (same hardware and price)",
                     ["", "stages", "GPUs", "tokens", "days", "cost", "loss"], others)
            + (_table("Settings given (the rest at their defaults: flmplan simulate --help)", ["", "value"], settings)
               if settings else "<h2>Settings</h2><p>All at their defaults (flmplan simulate --help).</p>")
            + _table("Assumptions", ["", "value"], assumptions))


def write_report(result, path: str | Path, command: str = "", plan_file: str = "plan.json",
                 given: dict | None = None, sweep: list[dict] | None = None) -> Path:
    """result: planner.plan.budget.PlanResult; `command` the command line that made it, `plan_file` where
    the plan was written (for the next commands)."""
    plan, main = result.plan, result.main
    lm = plan.assumptions["loss_model"]
    loss_model = GrowthLossModel(law=ScalingLaw(**lm["law"]), carryover=lm["carryover"],
                                 ramp_efficiency=lm["ramp_efficiency"],
                                 token_efficiency=lm.get("token_efficiency", 1.0))
    # Each chart's div has a name, so a link (report.html#days) opens the report at it.
    figures = [("timeline", timeline(main)), ("cost-breakdown", cost_breakdown(main)),
               ("loss", loss_vs_compute(main, result.alternatives + result.baselines, loss_model))]
    if result.searched:
        figures.append(("searched", searched_plans(main, result.searched)))
    sim = plan.simulation or {}
    for k, (name, (rows, note)) in enumerate(result.timelines.items()):
        figures.append((f"pipeline-{k + 1}", pipeline_gantt(name, rows, note)))
    if result.costs:
        exact = sim.get("model_error", {}).get("without", {}).get("cost_p90")
        figures.append(("cost", cost_histogram(result.costs, plan.assumptions["budget_usd"], exact)))
    if result.days:
        figures.append(("days", days_histogram(result.days, plan.assumptions["max_days"])))
    figures.append(("memory", memory_chart(plan)))
    tot = plan.totals
    head = (f"<p><small>{html.escape(_provenance(command, plan))}</small></p>"
            f"<h1>{html.escape(plan.name)}: {plan.cluster.gpus} × {html.escape(plan.cluster.gpu)} at "
            f"${plan.cluster.price_per_gpu_hour:g}/GPU-hour</h1>"
            f"<p>{len(plan.stages)} stages, {tot.tokens / 1e9:,.1f}B tokens, {tot.days:.1f} days, "
            f"${tot.cost_usd:,.0f} failure-free; predicted loss {tot.predicted_loss:.3f}"
            + (f"; simulated with failures: P50 {sim['days_p50']:.1f} days / ${sim['cost_p50']:,.0f}, "
               f"P90 {sim['days_p90']:.1f} days / ${sim['cost_p90']:,.0f}" if sim else "")
            + f". Profile {html.escape(plan.profile.get('name', ''))} ({html.escape(plan.profile.get('source', ''))})."
            "</p><p><i>Losses come from a scaling-law model with equal-loss continuation across growth; "
            "they are a model, not a measurement.</i></p>"
            + ("<h2>Advice</h2><ul>" + "".join(
                (f"<li><strong>{html.escape(a['message'])}</strong></li>" if k == 0 else
                 f"<li>{html.escape(a['message'])}</li>") for k, a in enumerate(plan.advice))
               + "</ul>" if plan.advice else ""))
    head += budget_table(plan, sweep) + next_commands(plan, plan_file) + plan_tables(plan, given)
    parts = [fig.to_html(full_html=False, include_plotlyjs=(i == 0), div_id=name)
             for i, (name, fig) in enumerate(figures)]
    page = ("<!doctype html><html><head><meta charset='utf-8'><title>flmplan report</title>"
            "<style>body{font-family:sans-serif;max-width:1100px;margin:auto;padding:1em}"
            "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 6px}</style></head><body>"
            + head + "".join(parts) + "</body></html>")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)      # as the plan file's folder is made
    path.write_text(page)
    return path



def _provenance(command: str, plan) -> str:
    """The report's header line: what made it, with which flmplan, when, from which profile."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        made_by = f"flmplan {version('flmplan')}"
    except PackageNotFoundError:
        made_by = "flmplan (not installed)"
    profile = plan.profile.get("name", "")
    return (f"{command or 'flmplan simulate'} · {made_by} · {plan.created} · profile {profile} "
            f"({plan.profile.get('source', '')})")


def tune_chart(result: dict) -> go.Figure:
    """`flmplan tune`: final loss against the learning rate, one line per width (at each width's best
    output multiplier), one panel per parametrization; the best point of each line marked."""
    from plotly.subplots import make_subplots

    kinds = sorted(result["best"])
    titles = [{"sp": "SP (standard)", "mup": "µP"}.get(k, k) for k in kinds]
    fig = make_subplots(rows=1, cols=len(kinds), subplot_titles=titles, shared_yaxes=True)
    for col, kind in enumerate(kinds, 1):
        for i, width in enumerate(result["widths"]):
            best = result["best"][kind].get(width) or result["best"][kind].get(str(width))
            if best is None:
                continue
            rows = sorted((r for r in result["runs"] if r["parametrization"] == kind and r["width"] == width
                           and r["output_mult"] == best["output_mult"] and not r["diverged"]), key=lambda r: r["lr"])
            color = _COLORS[i % len(_COLORS)]
            fig.add_trace(go.Scatter(x=[r["lr"] for r in rows], y=[r["final_loss"] for r in rows], mode="lines+markers",
                                     name=f"width {width}", legendgroup=str(width), showlegend=col == 1,
                                     line_color=color), row=1, col=col)
            fig.add_trace(go.Scatter(x=[best["lr"]], y=[best["final_loss"]], mode="markers", showlegend=False,
                                     marker=dict(symbol="star", size=14, color=color)), row=1, col=col)
        fig.update_xaxes(type="log", title_text="learning rate", row=1, col=col)
    fig.update_yaxes(title_text="final loss (nats/token)", row=1, col=1)
    fig.update_layout(title="Learning-rate sweep per width: under µP the best rate should hold across widths",
                      height=460)
    return fig


def loss_fit_chart(result: dict) -> go.Figure:
    """`flmplan fit-loss`: each run's curve with the fitted L(N, D), and µScaling's L(N) at one step
    with the held-out models' measured and predicted losses."""
    from plotly.subplots import make_subplots

    law, mu = result["law"], result["mu_scaling"]
    fig = make_subplots(rows=1, cols=2, subplot_titles=["curves and the fitted L(N, D)",
                                                        f"µScaling L(N) at step {mu['at_step']}"])
    for i, c in enumerate(sorted(result["curves"], key=lambda c: c.params)):
        color = _COLORS[i % len(_COLORS)]
        fit = law["E"] + law["A"] / c.params ** law["alpha"] + law["B"] / c.tokens ** law["beta"]
        fig.add_trace(go.Scatter(x=c.tokens, y=c.loss, mode="lines", line=dict(color=color, width=1), opacity=0.5,
                                 name=f"{c.params / 1e6:.2f}M ({c.parametrization})"), row=1, col=1)
        fig.add_trace(go.Scatter(x=c.tokens, y=fit, mode="lines", line=dict(color=color, dash="dash"),
                                 showlegend=False), row=1, col=1)
    preds = sorted(mu["predictions"], key=lambda p: p["params"])
    import numpy as np

    n = np.geomspace(preds[0]["params"], preds[-1]["params"] * 2, 60)
    fig.add_trace(go.Scatter(x=n, y=mu["a"] * (n / mu["n_unit"]) ** mu["b"] + mu["c"], mode="lines",
                             name="a·N^b + c (fit)", line_color="black"), row=1, col=2)
    for held, symbol, label in ((False, "circle", "fitted on"), (True, "x", "held out (measured)")):
        pts = [p for p in preds if p["held_out"] == held]
        if pts:
            fig.add_trace(go.Scatter(x=[p["params"] for p in pts], y=[p["measured"] for p in pts], mode="markers",
                                     marker=dict(symbol=symbol, size=11), name=label), row=1, col=2)
    fig.update_xaxes(type="log", title_text="tokens", row=1, col=1)
    fig.update_xaxes(type="log", title_text="parameters N", row=1, col=2)
    fig.update_yaxes(title_text="loss (nats/token)", row=1, col=1)
    fig.update_layout(title="Loss law fitted to runs", height=460)
    return fig


def iq_chart(result: dict) -> go.Figure:
    """`flmplan eval`: accuracy by stage per family, with 95 % intervals and the chance level dashed."""
    fig = go.Figure()
    families = sorted({r["family"] for r in result["rows"]})
    for i, family in enumerate(families):
        rows = [r for r in result["rows"] if r["family"] == family]
        color = _COLORS[i % len(_COLORS)]
        fig.add_trace(go.Scatter(
            x=[r["stage"] for r in rows], y=[r["accuracy"] for r in rows], mode="lines+markers",
            name=family.replace("_", " "), line_color=color,
            error_y=dict(type="data", symmetric=False, array=[r["high"] - r["accuracy"] for r in rows],
                         arrayminus=[r["accuracy"] - r["low"] for r in rows])))
        fig.add_trace(go.Scatter(x=[r["stage"] for r in rows], y=[r["chance"] for r in rows], mode="lines",
                                 line=dict(color=color, dash="dot"), showlegend=False, hoverinfo="skip"))
    fig.update_layout(title="IQ tests by growth stage (dotted: chance)", xaxis_title="stage", yaxis_title="accuracy",
                      yaxis_range=[0, 1], xaxis=dict(dtick=1), height=420)
    return fig


def write_figure(fig: go.Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.write_html(path, include_plotlyjs=True)
    return path
