"""Measure a loss law from runs, for the planner to plan with (`flmplan fit-loss`).

Two forms, both fitted with scipy.optimize.curve_fit, with the parameters' standard errors from
its covariance:

- µScaling (FLM-101B's loss prediction; Yao et al. 2023, "nanoLM"): the loss of µP models of
  several widths at one step, L(N) = a·N^b + c, fitted on the narrower models and used to predict
  the wider ones;
- the planner's L(N, D) = E + A/N^α + B/D^β (Hoffmann et al. 2022, approach 3) over the runs' whole
  curves, written as a loss-law file that `flmplan simulate --loss-law` reads.

A run is a folder with `metrics.jsonl` and either `proxy.json` (`flmplan tune`) or the one-stage
`plan.json` of `flmplan run`. Points along one run's curve are taken under that run's own
learning-rate schedule, not as the end of a run of that length: the L(N, D) fit over curves is the
cheap form of approach 3, and says so in what it writes.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
from scipy.optimize import OptimizeWarning, curve_fit

from planner.errors import FlmplanError

# Scales that keep the fit well conditioned (N and D in millions).
N_UNIT = 1e6
D_UNIT = 1e6


@dataclass
class Curve:
    """One run's loss against the tokens it had seen."""

    run: str
    params: float
    width: int
    parametrization: str
    data: str
    tokens: np.ndarray
    loss: np.ndarray
    final: float | None = None        # the held-out loss at the end (proxies of `flmplan tune`)

    def loss_at(self, step: int, window: int) -> float:
        """The mean loss of the `window` steps ending at `step` (training losses are noisy)."""
        lo = max(0, step + 1 - window)
        return float(np.mean(self.loss[lo:step + 1]))


def _errors(pcov: np.ndarray) -> np.ndarray:
    return np.sqrt(np.clip(np.diag(pcov), 0, None))


def mu_scaling(n, a, b, c):
    """L(N) = a·N^b + c, N in millions (µScaling's form)."""
    return a * np.power(n, b) + c


def fit_mu_scaling(params: np.ndarray, losses: np.ndarray) -> dict:
    """a, b, c of µScaling and their standard errors (N in parameters; a refers to N in millions)."""
    if len(set(params.tolist())) < 3:
        raise FlmplanError(f"L(N) = a·N^b + c has three constants; fit it to at least three widths "
                           f"(got {len(set(params.tolist()))}).")
    n = params / N_UNIT
    p0 = (float(losses.max() - losses.min()) or 1.0, -0.3, float(losses.min()) * 0.9)
    with warnings.catch_warnings():      # three sizes fit exactly: no spread is left to estimate errors from
        warnings.simplefilter("ignore", OptimizeWarning)
        popt, pcov = curve_fit(mu_scaling, n, losses, p0=p0, bounds=([0, -3, 0], [np.inf, 0, np.inf]),
                               maxfev=20000)
    err = _errors(pcov) if np.all(np.isfinite(pcov)) else np.full(3, math.nan)
    return {"a": popt[0], "b": popt[1], "c": popt[2], "a_err": err[0], "b_err": err[1], "c_err": err[2],
            "n_unit": N_UNIT, "form": "L(N) = a*(N/n_unit)^b + c"}


def chinchilla(x, E, A, B, alpha, beta):
    """L(N, D) = E + A/N^α + B/D^β, N and D in millions."""
    n, d = x
    return E + A / np.power(n, alpha) + B / np.power(d, beta)


def curve_points(curves: list[Curve], skip_fraction: float = 0.2, per_run: int = 24) -> tuple[np.ndarray, ...]:
    """(N, D, L) along each curve: log-spaced steps after the first `skip_fraction` (warm-up and the
    fastest fall, where no power law holds), each the mean of a short window."""
    ns, ds, ls = [], [], []
    for c in curves:
        first = max(1, int(len(c.loss) * skip_fraction))
        steps = np.unique(np.geomspace(first, len(c.loss) - 1, per_run).astype(int))
        window = max(1, len(c.loss) // 50)
        for s in steps:
            ns.append(c.params)
            ds.append(c.tokens[s])
            ls.append(c.loss_at(int(s), window))
    return np.array(ns), np.array(ds), np.array(ls)


def fit_chinchilla(n: np.ndarray, d: np.ndarray, loss: np.ndarray) -> dict:
    """E, A, B, α, β in the planner's units (N and D in parameters and tokens) with standard errors.
    The fit works in millions; A = A_m·10^(6α) and B likewise, their errors by the delta method."""
    x = (n / N_UNIT, d / D_UNIT)
    p0 = (float(loss.min()) * 0.8, 1.0, 1.0, 0.3, 0.3)
    bounds = ([0, 0, 0, 0.01, 0.01], [float(loss.min()), np.inf, np.inf, 3, 3])
    popt, pcov = curve_fit(chinchilla, x, loss, p0=p0, bounds=bounds, maxfev=50000)
    E, Am, Bm, alpha, beta = popt
    A, B = Am * N_UNIT**alpha, Bm * D_UNIT**beta
    # Jacobian of (E, A, B, α, β) with respect to the fitted (E, A_m, B_m, α, β).
    J = np.eye(5)
    J[1, 1], J[1, 3] = N_UNIT**alpha, A * math.log(N_UNIT)
    J[2, 2], J[2, 4] = D_UNIT**beta, B * math.log(D_UNIT)
    cov = J @ pcov @ J.T
    err = _errors(cov) if np.all(np.isfinite(cov)) else np.full(5, math.nan)
    resid = loss - chinchilla(x, *popt)
    return {"E": E, "A": A, "B": B, "alpha": alpha, "beta": beta,
            "errors": dict(zip(("E", "A", "B", "alpha", "beta"), err.tolist(), strict=True)),
            "rms_residual": float(np.sqrt(np.mean(resid**2))), "points": len(loss)}


BOOTSTRAP_DRAWS = 100


def bootstrap_errors(curves: list[Curve], draws: int = BOOTSTRAP_DRAWS, seed: int = 0) -> dict[str, float]:
    """Standard errors of L(N, D)'s constants from refits on runs drawn with replacement (Efron's
    bootstrap over runs): the points along one run's curve share its noise and its schedule, so
    curve_fit's errors, which count each point as independent, are too small. NaN where fewer than
    half the draws could be fitted (too few runs or sizes to tell)."""
    rng = np.random.default_rng(seed)
    fits = []
    for _ in range(draws):
        pick = [curves[i] for i in rng.integers(0, len(curves), len(curves))]
        if len({c.params for c in pick}) < 2:
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", OptimizeWarning)
                f = fit_chinchilla(*curve_points(pick))
        except (RuntimeError, ValueError):
            continue
        fits.append([f[k] for k in ("E", "A", "B", "alpha", "beta")])
    if len(fits) < draws // 2:
        return dict.fromkeys(("E", "A", "B", "alpha", "beta"), math.nan)
    return dict(zip(("E", "A", "B", "alpha", "beta"), np.std(np.array(fits), axis=0, ddof=1).tolist(), strict=True))


def fit_loss(curves: list[Curve], holdout: int = 1, at_step: int | None = None) -> dict:
    """Both fits, on the curves planner/plan/run_curves.py reads from run folders. µScaling is fitted
    on all but the `holdout` largest models and predicts them;
    L(N, D) is fitted to every run's curve (the law the planner gets uses all the evidence)."""
    last = min(len(c.loss) for c in curves) - 1
    step = last if at_step is None else at_step
    if not 0 <= step <= last:
        raise FlmplanError(f"--at-step {step} is past the shortest run's last step ({last}).")
    window = max(1, round((step + 1) * 0.1))
    # At the common last step, proxies' held-out losses when every run has one (less noisy than training).
    held_out = step == last and all(c.final is not None and len(c.loss) - 1 == step for c in curves)
    measure = "held-out loss at the end" if held_out else f"mean training loss of the {window} steps to step {step}"
    sizes = sorted({c.params for c in curves})
    if holdout < 0 or len(sizes) - holdout < 3:
        raise FlmplanError(f"µScaling's three constants need three sizes left after holding out {holdout} "
                           f"(the runs have {len(sizes)} sizes).")
    held = set(sizes[len(sizes) - holdout:])
    at = [(c, c.final if held_out else c.loss_at(step, window)) for c in curves]
    fit_n = np.array([c.params for c, _ in at if c.params not in held])
    fit_l = np.array([v for c, v in at if c.params not in held])
    mu = fit_mu_scaling(fit_n, fit_l)
    predictions = []
    for c, measured in at:
        predicted = float(mu_scaling(c.params / N_UNIT, mu["a"], mu["b"], mu["c"]))
        predictions.append({"run": c.run, "width": c.width, "params": c.params, "measured": measured,
                            "predicted": predicted, "error": predicted - measured,
                            "error_pct": 100 * (predicted - measured) / measured, "held_out": c.params in held})
    law = fit_chinchilla(*curve_points(curves))
    law["errors_pointwise"], law["errors"] = law["errors"], bootstrap_errors(curves)
    kinds = sorted({c.parametrization for c in curves})
    return {"mu_scaling": {**mu, "at_step": step, "measure": measure, "predictions": predictions},
            "law": law, "runs": [c.run for c in curves], "data": curves[0].data, "parametrizations": kinds,
            "curves": curves}


def law_file(result: dict, name: str) -> dict:
    """The loss-law JSON `flmplan simulate --loss-law` reads (planner/growth/loss_law.py load_law)."""
    law = result["law"]
    sizes = [c.params for c in result["curves"]]
    return {"name": name, "kind": "fitted", "E": law["E"], "A": law["A"], "B": law["B"], "alpha": law["alpha"],
            "beta": law["beta"], "errors": law["errors"],
            "error_method": f"bootstrap over runs ({BOOTSTRAP_DRAWS} draws of the runs with replacement, refitted)",
            "errors_pointwise": law["errors_pointwise"], "params_range": [min(sizes), max(sizes)],
            "rms_residual": law["rms_residual"],
            "source": f"fitted by flmplan fit-loss (scipy curve_fit) to {len(result['runs'])} runs' curves "
                      f"({', '.join(result['parametrizations'])}) on {result['data']}",
            "runs": result["runs"], "data": result["data"],
            "mu_scaling": {k: v for k, v in result["mu_scaling"].items()}}
