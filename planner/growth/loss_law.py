"""A loss model for growth: a scaling law L(N, D) and equal-loss continuation across a growth.

L(N, D) = E + A/N^α + B/D^β (Hoffmann et al. 2022, eq. 2; Besiroglu et al. 2024 re-fit).
After a growth the larger model continues on its own curve from the point of equal loss
(Staged Training, Shen et al. 2022, §3): it starts as if it had already seen D_eq tokens,
L(N′, D_eq) = L_before. Two knobs say how good the carry-over is: `carryover` scales D_eq
(1 = perfect equal-loss continuation), `ramp_efficiency` is the share of the MSG mask-ramp
tokens that count for the grown model (the new units are only partly on). These are a model
of training, not a measurement, and every plan states them.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from planner.errors import FlmplanError


@dataclass(frozen=True)
class ScalingLaw:
    name: str
    E: float
    A: float
    B: float
    alpha: float
    beta: float
    source: str = ""
    kind: str = "published"          # or "fitted" (flmplan fit-loss), with the runs it came from
    runs: tuple[str, ...] = ()
    errors: dict | None = None       # standard errors of E, A, B, alpha, beta, where the law has them
    params_range: tuple[float, float] | None = None   # the smallest and largest model it was fitted on

    def doubts(self) -> list[str]:
        """The constants whose standard error is as large as the constant itself: the law does not
        pin them down."""
        errs = self.errors or {}
        return [k for k in ("E", "A", "B", "alpha", "beta") if k in errs and errs[k] >= abs(getattr(self, k))]

    def sample(self, rng: np.random.Generator, draws: int) -> list[ScalingLaw]:
        """Laws drawn from the constants' standard errors (independent normals, kept in range): what
        the law's uncertainty implies for a prediction."""
        errs = self.errors or {}
        out = []
        for _ in range(draws):
            values = {}
            for k, (lo, hi) in LAW_RANGES.items():
                v = getattr(self, k) + rng.normal(0, errs.get(k, 0.0))
                values[k] = float(np.clip(v, lo + 1e-9, hi))
            out.append(ScalingLaw(name=self.name, **values))
        return out

    def loss(self, params, tokens):
        """L(N, D); numbers or numpy arrays of D."""
        return self.E + self.A / params**self.alpha + self.B / np.maximum(tokens, 1.0) ** self.beta

    def tokens_for_loss(self, params, loss):
        """D with L(N, D) = loss; infinite when N cannot reach that loss with any data."""
        excess = np.asarray(loss - self.E - self.A / params**self.alpha, dtype=float)
        with np.errstate(divide="ignore", invalid="ignore"):
            d = np.where(excess > 0, (self.B / np.where(excess > 0, excess, 1.0)) ** (1 / self.beta), np.inf)
        return float(d) if d.ndim == 0 else d

    def compute_optimal(self, flops: float) -> tuple[float, float]:
        """(N, D) minimising L at C = 6·N·D (Hoffmann et al. 2022, eq. 4)."""
        a, b = self.alpha, self.beta
        G = (a * self.A / (b * self.B)) ** (1 / (a + b))
        n = G * (flops / 6) ** (b / (a + b))
        return n, flops / (6 * n)


# The range a law's constants may take: beyond it L(N, D) is not a loss law any plan can rank with
# (a negative or zero coefficient, or an exponent past 2, which no published fit comes near).
LAW_RANGES = {"E": (0.0, 20.0), "A": (0.0, math.inf), "B": (0.0, math.inf), "alpha": (0.0, 2.0), "beta": (0.0, 2.0)}

CHINCHILLA = ScalingLaw("chinchilla", E=1.69, A=406.4, B=410.7, alpha=0.34, beta=0.28,
                        source="Hoffmann et al. 2022 (arXiv 2203.15556), eq. 10")
BESIROGLU = ScalingLaw("besiroglu", E=1.82, A=482.0, B=2085.4, alpha=0.3478, beta=0.3658,
                       source="Besiroglu et al. 2024 (arXiv 2404.10102), Chinchilla re-fit")
LAWS = {law.name: law for law in (CHINCHILLA, BESIROGLU)}


def load_law(name_or_path: str) -> ScalingLaw:
    """A built-in law by name, or constants from a JSON file {E, A, B, alpha, beta} (as `flmplan
    fit-loss` writes it, with the runs it was fitted to)."""
    if name_or_path in LAWS:
        return LAWS[name_or_path]
    path = Path(name_or_path)
    if not path.exists():
        raise FlmplanError(f"Unknown loss law {name_or_path!r}: use {', '.join(LAWS)} or a JSON file of constants.")
    try:
        raw = json.loads(path.read_text())
        errors = {k: float(v) for k, v in raw["errors"].items()} if raw.get("errors") is not None else None
        span = raw.get("params_range")
        law = ScalingLaw(name=raw.get("name", path.stem), E=float(raw["E"]), A=float(raw["A"]), B=float(raw["B"]),
                         alpha=float(raw["alpha"]), beta=float(raw["beta"]), source=raw.get("source", str(path)),
                         kind=str(raw.get("kind", "from a file")), runs=tuple(map(str, raw.get("runs", ()))),
                         errors=errors, params_range=(float(span[0]), float(span[1])) if span else None)
    except (json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError, IndexError) as err:
        raise FlmplanError(f"Loss-law file {path} needs numbers E, A, B, alpha and beta ({err}).") from None
    for k, (lo, hi) in LAW_RANGES.items():
        v = getattr(law, k)
        if not (math.isfinite(v) and (lo <= v if k == "E" else lo < v) and v <= hi):
            raise FlmplanError(f"Loss-law file {path} has {k} = {v:g}, outside its range ({lo:g} to {hi:g}): it is "
                               "not a law a plan can rank losses with; fit it again on more runs.")
    if errors is not None and not all(math.isfinite(errors.get(k, 0.0)) for k in LAW_RANGES):
        raise FlmplanError(f"Loss-law file {path} has undetermined standard errors (not finite): its runs do not pin "
                           "the law down; fit it on more sizes or longer runs.")
    return law


@dataclass(frozen=True)
class GrowthLossModel:
    law: ScalingLaw = CHINCHILLA
    carryover: float = 1.0
    ramp_efficiency: float = 0.5
    # η: each token after a growth counts η tokens of a model trained from scratch (1: equal-loss
    # continuation alone). The form published stacking results ask for (planner/growth/evidence.py).
    token_efficiency: float = 1.0
    evidence: str = "assumed"        # where token_efficiency comes from, named in the plan's advice
    token_efficiency_error: float = 0.0   # its standard error, when it was measured

    def __post_init__(self) -> None:
        if not 0 < self.carryover <= 1 or not 0 <= self.ramp_efficiency <= 1 or not self.token_efficiency > 0:
            raise FlmplanError("carry-over efficiency must be in (0, 1], ramp efficiency in [0, 1] and token "
                               "efficiency above 0.")

    def stage_losses(self, params: list[float], tokens, ramp_tokens: list[float]) -> list:
        """Loss at the end of each stage. Stage k trains params[k] for tokens[k] (a number, or a
        numpy array to evaluate many token splits at once), of which the first ramp_tokens[k]
        run under the growth mask."""
        losses: list = []
        for k, (n, d) in enumerate(zip(params, tokens, strict=True)):
            if k == 0:
                effective = d
            else:
                # Equal-loss continuation on the grown model's curve (Shen et al. 2022).
                d_eq = self.law.tokens_for_loss(n, losses[-1])
                ramp = np.minimum(ramp_tokens[k], d)
                effective = self.carryover * d_eq + self.token_efficiency * (self.ramp_efficiency * ramp + (d - ramp))
            losses.append(self.law.loss(n, effective))
        return losses

    def trajectory(self, params: list[float], tokens: list[float], ramp_tokens: list[float],
                   points: int = 24) -> tuple[list[float], list[float]]:
        """(cumulative training FLOPs 6·N·D, loss) through the stages, for plotting."""
        flops, losses = [], []
        done = 0.0
        for k in range(len(params)):
            for f in np.linspace(0, 1, points)[1:]:
                partial = [*tokens[:k], tokens[k] * f]
                losses.append(float(self.stage_losses(params[: k + 1], partial, ramp_tokens[: k + 1])[-1]))
                flops.append(done + 6 * params[k] * tokens[k] * f)
            done += 6 * params[k] * tokens[k]
        return flops, losses

    def describe(self) -> dict:
        return {"law": asdict(self.law), "carryover": self.carryover, "ramp_efficiency": self.ramp_efficiency,
                "token_efficiency": self.token_efficiency, "evidence": self.evidence,
                "token_efficiency_error": self.token_efficiency_error,
                "note": "L(N, D) = E + A/N^alpha + B/D^beta; after a growth the model continues from the point "
                        "of equal loss on the larger model's curve (Staged Training). A model, not a measurement."}
