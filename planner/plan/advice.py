"""What a plan's own numbers say about the user's choice, written into the plan (`advice`).

Each item is one plain sentence with the figures behind it. An item appears only when its case
applies: a fixed-size model that beats the plan, a growth that raises the predicted loss, a stage
held at its floor, a plan without growth, a growth past what the literature measured, and —
always — which constraint binds and what of the budget is left.
"""

from __future__ import annotations

import dataclasses
import itertools
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

from planner.growth.schedule import LITERATURE_GROWTH_FACTORS
from planner.growth.schedule_search import growth_factors

if TYPE_CHECKING:
    from planner.growth.schedule import Schedule
    from planner.growth.schedule_search import Planner

# A constraint binds when the plan uses this much of it.
BINDS_AT = 0.99


@dataclass(frozen=True)
class Advice:
    kind: str
    message: str
    figures: dict

    def to_json(self) -> dict:
        return asdict(self)


def advise(main: Schedule, baselines: list[Schedule], planner: Planner, searched: bool = True) -> list[Advice]:
    """`searched`: the plan came from the search; a given schedule (FLM-101B's own) is costed as it
    is, so floors and binding constraints, which describe the search's choice, do not apply."""
    settings = planner.s
    out: list[Advice] = []
    fixed = next((b for b in baselines if b.name == "compute-optimal fixed size"), None)
    if fixed is not None and fixed.loss < main.loss and len(main.stages) > 1:
        m = fixed.stages[0].model
        out.append(Advice("fixed_size_better", (
            f"A fixed-size {m.params() / 1e9:.1f}B model trained from scratch on {fixed.tokens / 1e9:,.0f}B tokens "
            f"within the same budget and deadline predicts a lower loss, {fixed.loss:.3f} against this plan's "
            f"{main.loss:.3f}; "
            "growth buys a larger final model here, not a lower loss "
            f"(what a token after a growth is worth, η = {planner.loss_model.token_efficiency:.3g}: "
            f"{planner.loss_model.evidence})."),
            {"fixed_params": m.params(), "fixed_tokens": fixed.tokens, "fixed_loss": fixed.loss,
             "plan_loss": main.loss}))
    for k, (a, b) in enumerate(itertools.pairwise(main.stages), start=2):
        if b.loss_end > a.loss_end:
            cost = main.stage_cost_usd(b)
            out.append(Advice("growth_raises_loss", (
                f"Growing into stage {k} raises the predicted loss from {a.loss_end:.3f} to {b.loss_end:.3f}, "
                f"and the stage costs ${cost:,.0f}: a final model of {a.model.params() / 1e9:.1f}B would predict "
                "better for less; this plan is chosen because it reaches the target size at the lowest loss."),
                {"stage": k, "loss_before": a.loss_end, "loss_after": b.loss_end, "stage_cost_usd": cost}))
    for k, st in enumerate(main.stages if searched else []):
        floor = planner.min_tokens(k, st)
        step = st.layout.global_batch * st.model.seq
        if st.tokens <= floor + step:
            ramp = settings.grow_steps * step if k > 0 else 0.0
            what = (f"the growth's mask ramp ({settings.grow_steps:,} steps) and {settings.min_steps_after_growth:,} "
                    f"steps after it, {ramp / st.tokens:.0%} of it under the mask" if k > 0 else
                    f"{settings.min_first_stage_steps:,} steps")
            bought = ""
            if k > 0:
                drop, cost = main.stages[k - 1].loss_end - st.loss_end, main.stage_cost_usd(st)
                bought = (f" It buys size more than loss: the loss falls by {drop:.4f} for its ${cost:,.0f}; "
                          "a smaller --target-size shows the price of the size.")
            out.append(Advice("stage_at_floor", (
                f"Stage {k + 1} ({st.model.params() / 1e9:.1f}B) sits at its floor: {what}; the plan would give "
                f"it fewer tokens if it could.{bought}"),
                {"stage": k + 1, "tokens": st.tokens, "floor_tokens": floor}))
    if len(main.stages) == 1:
        st = main.stages[0]
        out.append(Advice("no_growth", (
            f"This plan has one stage: it trains the {st.model.params() / 1e9:.1f}B target from scratch on "
            f"{st.tokens / 1e9:,.1f}B tokens ({st.tokens / st.model.params():.1f} per parameter); no growth schedule "
            "searched predicted a lower loss within the budget and deadline."),
            {"params": st.model.params(), "tokens": st.tokens}))
    out += law_advice(main, planner)
    if len(main.stages) > 1 and fixed is not None:
        down = downside(main, fixed, planner)
        out.insert(0, down) if down.figures["recommend_fixed"] else out.append(down)
    if len(main.stages) > 1:
        out.append(growth_evidence(main, fixed, planner))
        out.append(growth_timing(main, planner))
    factors = growth_factors(main)
    if factors and max(factors) > LITERATURE_GROWTH_FACTORS[1]:
        out.append(Advice("growth_factor", (
            f"A single growth multiplies the parameters ×{max(factors):.1f}, past the ×{LITERATURE_GROWTH_FACTORS[0]:g}"
            f"–{LITERATURE_GROWTH_FACTORS[1]:g} that published growth operators measured; its loss is extrapolated."),
            {"max_factor": max(factors), "literature": list(LITERATURE_GROWTH_FACTORS)}))
    if searched:
        out.append(binding(main, planner))
    else:
        out.append(Advice("given_schedule", (
            f"This schedule is given, not fitted to the budget: it costs ${main.cost_usd:,.0f} failure-free, "
            f"${settings.budget_usd - main.cost_usd:,.0f} under the ${settings.budget_usd:,.0f} budget."),
            {"cost_usd": main.cost_usd, "budget_usd": settings.budget_usd}))
    return out


# η values below equal-loss continuation, where a growth loses ground: the plan's loss there shows its downside.
LOW_ETAS = (0.9, 0.8)


def break_even_eta(main: Schedule, fixed_loss: float, loss_model) -> float | None:
    """The token efficiency at which the growth plan's final loss equals the fixed-size model's (the loss
    falls as η rises); None when no η in [0.25, 4] reaches it either way."""
    from scipy.optimize import brentq

    def gap(eta: float) -> float:
        return final_loss(main, dataclasses.replace(loss_model, token_efficiency=eta)) - fixed_loss

    lo, hi = 0.25, 4.0
    if gap(lo) * gap(hi) > 0:
        return None
    return float(brentq(gap, lo, hi, xtol=1e-4))


def downside(main: Schedule, fixed: Schedule, planner: Planner) -> Advice:
    """The grow-or-not decision with its downside: the η at which growth breaks even with the fixed size,
    the loss if a token after a growth is worth less than one from scratch, the operators the plan grows
    with beside the operator the published η was measured for, and what each stage after the first buys
    per dollar. When the plan's own η does not clear break-even, the fixed size is the recommendation."""
    lm = planner.loss_model
    even = break_even_eta(main, fixed.loss, lm)
    # The low end of the evidence: below equal-loss continuation, and two standard errors under a measured η.
    low_etas = sorted({*LOW_ETAS, *([round(lm.token_efficiency - 2 * lm.token_efficiency_error, 3)]
                                    if lm.token_efficiency_error > 0 else [])}, reverse=True)
    lows = {eta: final_loss(main, dataclasses.replace(lm, token_efficiency=eta)) for eta in low_etas if eta > 0}
    recommend_fixed = even is not None and lm.token_efficiency < even
    m = fixed.stages[0].model
    kinds = ["+".join(k for k, v in (("width", a.model.hidden != b.model.hidden),
                                     ("depth", a.model.layers != b.model.layers)) if v) or "heads"
             for a, b in itertools.pairwise(main.stages)]
    buys = [(k + 2, a.loss_end - b.loss_end, main.stage_cost_usd(b))
            for k, (a, b) in enumerate(itertools.pairwise(main.stages))]
    lead = (f"Recommended: the fixed-size {m.params() / 1e9:.1f}B model on {fixed.tokens / 1e9:,.0f}B tokens "
            f"(loss {fixed.loss:.3f}); this growth plan is the alternative for a larger final model. "
            if recommend_fixed else "")
    even_text = (f"growth breaks even with the fixed size at η = {even:.2f} (a token after a growth worth {even:.2f} "
                 f"from scratch), and the plan's η is {lm.token_efficiency:.3g} ({lm.evidence})" if even is not None
                 else "no η between 0.25 and 4 makes growth and the fixed size equal here")
    operator_text = ("its η was measured on MSG proxy pairs, the plan's own operator, at proxy scale"
                     if lm.evidence.startswith("measured") else
                     "the published η was measured for depth stacking (Du et al. 2024, G_stack), not for MSG's width "
                     "growth, and no published point measures MSG's")
    low_text = "; ".join(f"at η = {eta:g} the plan's loss is {v:.3f}" for eta, v in lows.items())
    stage_text = "; ".join(f"stage {k} lowers the loss by {d:.4f} for ${c:,.0f} ({d / c * 1000:.5f} per $1K)"
                           for k, d, c in buys)
    return Advice("downside", (
        f"{lead}The decision's downside: {even_text}; {low_text}, against the fixed size's {fixed.loss:.3f}. The "
        f"plan grows by {', '.join(kinds)} (MSG); {operator_text}. What the stages after the first buy: "
        f"{stage_text}."),
        {"break_even_eta": even, "token_efficiency": lm.token_efficiency, "recommend_fixed": recommend_fixed,
         "fixed_loss": fixed.loss, "plan_loss": main.loss, "loss_at_low_eta": {str(k): v for k, v in lows.items()},
         "growths": kinds, "stage_loss_per_usd": [{"stage": k, "loss_drop": d, "cost_usd": c} for k, d, c in buys]})


def final_loss(main: Schedule, loss_model) -> float:
    """The schedule's final loss under another loss model (a drawn law or token efficiency)."""
    return float(loss_model.stage_losses([st.model.params() for st in main.stages], [st.tokens for st in main.stages],
                                         main.ramp_tokens or [0.0] * len(main.stages))[-1])


# A fitted law is trusted this far past the largest model it was fitted on; beyond, the plan says so.
LAW_EXTRAPOLATION = 100.0
LAW_DRAWS = 400


def law_advice(main: Schedule, planner: Planner) -> list[Advice]:
    """A loss law that does not pin its constants down (a standard error as large as the constant), or
    that is extrapolated far past the models it was fitted on, is named, with the 90 % interval of the
    plan's final loss that the law's own standard errors imply."""
    import numpy as np

    law = planner.loss_model.law
    doubts = law.doubts()
    final = main.stages[-1].model.params()
    reach = final / law.params_range[1] if law.params_range else 1.0
    if not doubts and reach <= LAW_EXTRAPOLATION:
        return []
    rng = np.random.default_rng(0)
    losses = [final_loss(main, dataclasses.replace(planner.loss_model, law=drawn))
              for drawn in law.sample(rng, LAW_DRAWS)]
    lo, hi = (float(v) for v in np.percentile(losses, [5, 95]))
    why = []
    if doubts:
        why.append(f"the standard errors of {', '.join(doubts)} are as large as the values")
    if reach > LAW_EXTRAPOLATION:
        why.append(f"the plan's {final / 1e9:.1f}B model is ×{reach:,.0f} the largest it was fitted on "
                   f"({law.params_range[1] / 1e6:,.2f}M)")
    return [Advice("loss_law_uncertain", (
        f"The loss law {law.name!r} decides this plan but does not pin it down: {' and '.join(why)}; its errors "
        f"put the final loss between {lo:.3f} and {hi:.3f} (90 %), so the choice between plans rests on it only "
        "that far; fit it on more sizes, longer runs, or larger proxies."),
        {"doubts": doubts, "extrapolation": reach, "loss_low": lo, "loss_high": hi, "loss": main.loss})]


def growth_evidence(main: Schedule, fixed: Schedule | None, planner: Planner) -> Advice:
    """What growth's worth rests on, named, and what its uncertainty does to the plan: the final loss's
    90 % interval and the probability that the growth plan beats the compute-optimal fixed size at the
    same cost. η is drawn from its measurement (normal, its standard error) or, when it is assumed or
    given, uniformly between equal-loss continuation (1) and the largest η a published result asks for
    (planner/growth/evidence.py)."""
    import numpy as np

    lm = planner.loss_model
    rng = np.random.default_rng(0)
    if lm.token_efficiency_error > 0:
        etas = np.clip(rng.normal(lm.token_efficiency, lm.token_efficiency_error, LAW_DRAWS), 0.05, None)
        spread = ""                          # the evidence names the measurement and its error
    else:
        from planner.growth.evidence import published_etas

        published = published_etas(dataclasses.replace(lm, token_efficiency=1.0))
        lo, hi = min(1.0, lm.token_efficiency), max([lm.token_efficiency, *published.values()])
        etas = np.concatenate([[lo, hi], rng.uniform(lo, hi, LAW_DRAWS)])
        spread = f" (η between {lo:.3g}, equal-loss continuation, and {hi:.3g}, the largest published: Du et al. 2024)"
    losses = np.array([final_loss(main, dataclasses.replace(lm, token_efficiency=float(e))) for e in etas])
    if lm.token_efficiency_error > 0:
        low, high = (float(v) for v in np.percentile(losses, [5, 95]))
        band = "90 %"
    else:           # the whole range: the plan's own η may sit at its end (assumed: 1)
        low, high = float(losses.min()), float(losses.max())
        band = "over that range"
    beats = float(np.mean(losses < fixed.loss)) if fixed is not None else None
    versus = (f"; it beats the fixed-size {fixed.stages[0].model.params() / 1e9:.1f}B model (loss {fixed.loss:.3f}) "
              f"at the same cost with probability {beats:.0%}" if fixed is not None else "")
    return Advice("growth_evidence", (
        f"Growth's worth here is {lm.evidence}{spread}: the final loss is between {low:.3f} and {high:.3f} "
        f"({band}){versus}."),
        {"evidence": lm.evidence, "token_efficiency": lm.token_efficiency,
         "token_efficiency_error": lm.token_efficiency_error, "loss_low": low, "loss_high": high,
         "p_beats_fixed": beats, "fixed_loss": fixed.loss if fixed is not None else None})


def growth_timing(main: Schedule, planner: Planner) -> Advice:
    """The plan's first growth beside the one published guideline for when to grow (Du et al. 2024,
    for depth stacking ×4 at ≤ 7B), with the same chain's predicted loss under the other timing:
    --growth-timing gstack makes the search use the guideline, search leaves it to the loss model."""
    from planner.growth.evidence import gstack_growth_tokens

    first = main.stages[0]
    chain = [st.model for st in main.stages]
    by_guideline = planner.s.growth_timing == "gstack"
    guide = gstack_growth_tokens(chain[-1].params(), main.compute_flops)
    other = planner.schedule_for(chain, main.gpus, timing="search") if by_guideline else \
        planner.schedule_for(chain, main.gpus, first_tokens=guide)
    ratio = first.tokens / guide
    when = "later than" if ratio > 1.5 else "earlier than" if ratio < 1 / 1.5 else "about when"
    rule = ("log10 d = 0.88·log10 N + 163.27/log10 C − 5.74, fitted for ×4 stacking up to 7B; MSG's own timing "
            "is not published as a rule")
    if by_guideline:
        message = (f"The plan grows first after {first.tokens / 1e9:,.1f}B tokens, fixed at Du et al. 2024's "
                   f"guideline for depth stacking (--growth-timing gstack; {rule})")
    else:
        message = (f"The plan grows first after {first.tokens / 1e9:,.1f}B tokens, {when} Du et al. 2024's "
                   f"guideline for depth stacking would at this size and compute ({guide / 1e9:,.1f}B tokens: {rule})")
    if other is not None:
        message += (f"; the same stages {'left to the loss model' if by_guideline else 'grown at the guideline'} "
                    f"predict {other.loss:.4f} against this plan's {main.loss:.4f} (--growth-timing "
                    f"{'search' if by_guideline else 'gstack'} plans that way).")
    else:
        message += "; the same stages cannot be grown at the other timing within the budget."
    return Advice("growth_timing", message,
                  {"first_growth_tokens": first.tokens, "guideline_tokens": guide, "ratio": ratio,
                   "timing": planner.s.growth_timing, "other_timing_loss": other.loss if other else None})


def binding(main: Schedule, planner: Planner) -> Advice:
    """Which of money, deadline, GPUs and memory limits the plan, and what of the budget is left."""
    s = planner.s
    unspent = max(0.0, s.budget_usd - main.cost_usd * s.cost_factor)
    binds = []
    if main.cost_usd * s.cost_factor >= BINDS_AT * s.budget_usd:
        binds.append("money")
    if main.days >= BINDS_AT * s.max_days:
        binds.append("deadline")
    if main.gpus >= max(planner.cluster_sizes()) and "deadline" in binds:
        binds.append("GPUs")
    text = {"money": "the budget", "deadline": f"the {s.max_days:g}-day deadline",
            "GPUs": f"the {main.gpus}-GPU cap"}
    if binds == ["money"]:
        message = f"The budget binds: the plan spends ${main.cost_usd:,.0f} failure-free of ${s.budget_usd:,.0f}"
        message += (f", keeping ${s.budget_usd - main.cost_usd:,.0f} for failures, restarts and spare nodes."
                    if s.cost_factor > 1 else ".")
    elif binds:
        which = " and ".join(text[b] for b in binds)
        message = (f"{which[0].upper()}{which[1:]} bind: ${unspent:,.0f} of the budget is "
                   "left unspent; raise --max-days or --max-gpus to spend it.")
    else:
        message = (f"No constraint binds at its limit; ${unspent:,.0f} of the budget is left, because a larger "
                   "plan would not fit the GPUs' memory or predict a lower loss.")
        binds = ["memory" if unspent > 0 else "money"]
    return Advice("binding", message, {"binds": binds, "unspent_usd": unspent, "cost_usd": main.cost_usd,
                                       "days": main.days, "gpus": main.gpus})
