"""Published growth results held against the planner's growth loss model (planner/growth/loss_law.py).

A case (planner/data/growth_cases.json) is one growth, or FLM-101B's schedule, with the sizes, the
growth point, the tokens and the speed-up its source states, in the source's own convention. The
model's speed-up is the same quantity: the FLOPs a model of the final size trained from scratch
needs to reach the loss the grown run ends at, over the FLOPs of the grown run (its small stages
included), minus one (Du et al. 2024's convention; 6·N·D FLOPs, Kaplan et al. 2020).

Equal-loss continuation (Staged Training, Shen et al. 2022) can at best give the grown model the
tokens its small model's loss is worth on the large model's curve, a fraction of the small stage's
tokens, so its speed-up after a long large stage is near zero whatever `carryover` and
`ramp_efficiency` are. The form proposed here, GrowthLossModel's `token_efficiency` η, lets every token after
the growth count η tokens of a model trained from scratch (a persistent advantage, which is what Du et
al.'s curves show: the gap does not close). It is fitted on one case and scored on the others.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from scipy.optimize import brentq

from planner.errors import FlmplanError
from planner.growth.flm import flm_base
from planner.growth.loss_law import CHINCHILLA, GrowthLossModel, ScalingLaw
from planner.growth.operators import shape


@dataclass(frozen=True)
class GrowthCase:
    name: str
    citation: str
    stated_speedup: float
    convention: str
    params: tuple[float, ...] = ()
    stage_tokens: tuple[float, ...] = ()       # tokens of each stage; for a single growth, filled in by the model
    scratch_tokens: float | None = None        # the scratch run whose final loss the grown run must reach
    ramp_tokens: tuple[float, ...] = ()
    modelled: bool = True
    comparable: bool = True
    why_not: str = ""


def growth_cases() -> list[GrowthCase]:
    raw = json.loads(resources.files("planner").joinpath("data/growth_cases.json").read_text())
    out = []
    for c in raw["cases"]:
        common = {"name": c["name"], "citation": c["citation"], "stated_speedup": c["stated_speedup"],
                  "convention": c["convention"], "modelled": c.get("modelled", True),
                  "comparable": c.get("comparable", True), "why_not": c.get("why_not", "")}
        if not common["modelled"]:
            out.append(GrowthCase(**common))
        elif "params_from_shapes" in c:
            base = flm_base()
            params = tuple(shape(base, layers, hidden).params() for layers, hidden in c["params_from_shapes"])
            ramp = c["grow_steps"] * c["global_batch"] * base.seq
            out.append(GrowthCase(**common, params=params, stage_tokens=tuple(c["stage_tokens"]),
                                  ramp_tokens=(0.0, *[ramp] * (len(params) - 1))))
        else:
            out.append(GrowthCase(**common, params=tuple(c["params"]), stage_tokens=(c["growth_tokens"],),
                                  scratch_tokens=c["scratch_tokens"], ramp_tokens=(0.0, 0.0)))
    return out


def _final_loss(model: GrowthLossModel, params, tokens, ramps) -> float:
    return float(model.stage_losses(list(params), list(tokens), list(ramps))[-1])


def predicted_speedup(case: GrowthCase, model: GrowthLossModel) -> float:
    """The model's speed-up in the case's convention (FLOPs to the same loss, scratch over grown, − 1)."""
    law: ScalingLaw = model.law
    n, small = case.params[-1], case.params[:-1]
    if case.scratch_tokens is not None:
        # Single growth: the grown run trains until it reaches the scratch run's final loss.
        target = float(law.loss(n, case.scratch_tokens))

        def gap(d: float) -> float:
            return _final_loss(model, case.params, [*case.stage_tokens, d], case.ramp_tokens) - target

        hi = case.scratch_tokens * 4
        if gap(hi) > 0:
            return -1.0 + (case.scratch_tokens / hi)       # it never gets there within 4× the tokens: a slowdown
        d = brentq(gap, 1.0, hi) if gap(1.0) > 0 else 0.0
        grown = sum(p * t for p, t in zip(small, case.stage_tokens, strict=True)) + n * d
        return n * case.scratch_tokens / grown - 1
    # A whole schedule: the tokens from scratch that reach its final loss.
    final = _final_loss(model, case.params, case.stage_tokens, case.ramp_tokens)
    scratch = law.tokens_for_loss(n, final)
    grown = sum(p * t for p, t in zip(case.params, case.stage_tokens, strict=True))
    return n * scratch / grown - 1


def fit_token_efficiency(case: GrowthCase, base: GrowthLossModel) -> float:
    """η that makes the model reproduce `case`'s stated speed-up."""
    def miss(eta: float) -> float:
        return predicted_speedup(case, dataclasses.replace(base, token_efficiency=eta)) - case.stated_speedup

    return brentq(miss, 0.2, 10.0)


# The published case η is fitted on when a plan asks for the published value (the others score it).
PUBLISHED_FIT = "gstack-7b-300b"


def evidence_table(law: ScalingLaw = CHINCHILLA, fit_on: str = PUBLISHED_FIT) -> dict:
    """Every case: stated speed-up; the equal-loss model's with the default knobs and with the most
    favourable ones in range (carry-over 1, the whole ramp counted); and η's, fitted on `fit_on` and
    scored on the others."""
    default = GrowthLossModel(law=law)
    best = dataclasses.replace(default, carryover=1.0, ramp_efficiency=1.0)
    cases = growth_cases()
    fitted_on = next(c for c in cases if c.name == fit_on)
    eta = fit_token_efficiency(fitted_on, default)
    rows = []
    for c in cases:
        row = {"name": c.name, "citation": c.citation, "stated": c.stated_speedup, "convention": c.convention,
               "modelled": c.modelled, "comparable": c.comparable, "why_not": c.why_not}
        if c.modelled:
            row.update(equal_loss_default=predicted_speedup(c, default),
                       equal_loss_best=predicted_speedup(c, best),
                       token_efficiency=predicted_speedup(c, dataclasses.replace(default, token_efficiency=eta)),
                       in_fit=c.name == fit_on)
        rows.append(row)
    return {"law": law.name, "eta": eta, "fit_on": fit_on, "rows": rows,
            "default": {"carryover": default.carryover, "ramp_efficiency": default.ramp_efficiency}}


def published_etas(base: GrowthLossModel | None = None) -> dict[str, float]:
    """η fitted on each comparable published case alone: the spread of what is published."""
    base = base or GrowthLossModel()
    return {c.name: fit_token_efficiency(c, base) for c in growth_cases() if c.modelled and c.comparable}


def gstack_growth_tokens(target_params: float, compute_flops: float) -> float:
    """Du et al. 2024's guideline for when to grow (G_stack, g = 4): the small model trains d tokens,
    log10(d) = 0.88·log10(N) + 163.27/log10(C) − 5.74 (tongxuluo/prts README; N parameters, C FLOPs)."""
    import math

    return 10 ** (0.88 * math.log10(target_params) + 163.27 / math.log10(compute_flops) - 5.74)


def load_token_efficiency(text: str) -> tuple[float, float, str]:
    """(η, its standard error, its evidence) from a number (no error: the plan then takes the spread of
    what is published), or from the pairs.json of `flmplan grow-vs-scratch`."""
    path = Path(text)
    if text == "published":
        case = next(c for c in growth_cases() if c.name == PUBLISHED_FIT)
        eta = fit_token_efficiency(case, GrowthLossModel())
        return eta, 0.0, f"published (Du et al. 2024: η = {eta:.3f} fitted on {PUBLISHED_FIT})"
    try:
        eta = float(text)
    except ValueError:
        if not path.is_file():
            raise FlmplanError(f"--token-efficiency takes a number, published, or the pairs.json of `flmplan "
                               f"grow-vs-scratch`; {text!r} is none of them.") from None
        try:
            raw = json.loads(path.read_text())
            fit = raw["fit"]
            eta, err, pairs = float(fit["token_efficiency"]), float(fit["error"]), int(fit["pairs"])
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError):
            raise FlmplanError(f"{path} is not the pairs.json of `flmplan grow-vs-scratch` (no fit with "
                               "token_efficiency, error and pairs).") from None
        if not math.isfinite(err) or err >= eta:
            raise FlmplanError(f"{path} measured η = {eta:.3g} ± {err:.3g}: its error is as large as the value, "
                               "so it cannot decide a plan; run more pairs or longer ones.") from None
        if fit.get("operator", "MSG") != "MSG":
            raise FlmplanError(f"{path} measured η for {fit['operator']}, not for MSG, the operator a plan grows "
                               "by; measure MSG pairs (--dims depth,width).") from None
        seeds = f" over {fit['seeds']} seeds" if fit.get("seeds") else ""
        evidence = f"measured on {pairs} proxy pairs{seeds} ({path}: η = {eta:.3f} ± {err:.3f})"
    else:
        err, evidence = 0.0, "assumed" if eta == 1.0 else f"given (η = {eta:g})"
    if not 0 < eta <= 10:
        raise FlmplanError(f"--token-efficiency {eta:g} is outside (0, 10]: a token after a growth cannot be worth "
                           "nothing, or more than ten tokens from scratch.")
    return eta, err, evidence
