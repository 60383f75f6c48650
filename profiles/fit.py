"""Fit the profile's few model parameters to its measured points (pure Python).

The planner's device model (planner/cost/device.py) uses these parameters and corrects them with
the measured points near a query; the fit gives it a physical curve between and beyond them.
"""

from __future__ import annotations

import math
import statistics

from planner.cost.device import FLASH_BWD_FLOPS, flash_work, gemm_roofline_s
from planner.cost.device_profile import ProfileError


def fit_gemm(points: list[dict], peak_flops: float, hbm_bytes_s: float, elem: int) -> dict:
    """e_max, k_half, overhead_us minimising the squared log error over the points."""
    best = None
    for k_half in (0, 8, 16, 32, 48, 64, 96, 128, 192, 256):
        for overhead_us in (0, 2, 5, 10, 20, 50, 100, 200):
            o = overhead_us * 1e-6
            ratios = []
            for p in points:
                d = min(p["m"], p["n"], p["k"])
                compute_time = p["time_s"] - o
                if compute_time <= 0:
                    continue
                ratios.append(2.0 * p["m"] * p["n"] * p["k"] / (peak_flops * compute_time * d / (d + k_half)))
            if not ratios:
                continue
            e_max = min(1.0, statistics.median(ratios))
            err = sum(math.log(gemm_roofline_s(p["m"], p["n"], p["k"], 1, peak_flops, hbm_bytes_s, elem,
                                               e_max, k_half, o) / p["time_s"]) ** 2 for p in points)
            if best is None or err < best[0]:
                best = (err, e_max, k_half, overhead_us)
    if best is None:
        raise ProfileError("No GEMM was timed above its launch overhead, so the GEMM model cannot be fitted; "
                           "profile larger shapes.")
    return {"e_max": round(best[1], 4), "k_half": best[2], "overhead_us": best[3]}


def fit_attention(points: list[dict], peak_flops: float, overhead_s: float = 0.0) -> dict:
    """The flash kernel's time beyond its launch (`overhead_s`; twice that backward) as its matmul
    FLOPs at an efficiency, plus a time per score and per query row (planner/cost/device.py flash_work),
    forward and backward: least squares on the relative error over the points, every term ≥ 0. Only
    points at two head dimensions or more tell the scores from the matmuls, and at two sequence
    lengths or more the rows from the scores: a term the points cannot tell apart stays 0."""
    usable = ["flops"]
    if len({p["head_dim"] for p in points}) > 1:
        usable.append("scores")
    if len({p["seq"] for p in points}) > 1:
        usable.append("rows")
    out = {}
    for name, flops_factor, launches in (("fwd", 1.0, 1), ("bwd", FLASH_BWD_FLOPS, 2)):
        rows = []      # each term of a point over its measured time: matmul seconds at peak, scores, rows
        for p in points:
            flops, scores, query_rows = flash_work(p["batch"], p["seq"], p["heads"], p["head_dim"])
            t = p[f"{name}_s"] - launches * overhead_s
            if t > 0:
                rows.append({"flops": flops_factor * flops / peak_flops / t, "scores": scores / t,
                             "rows": query_rows / t})
        if not rows:
            raise ProfileError("No attention kernel was timed above its launch overhead, so the attention "
                               "model cannot be fitted; profile longer sequences.")
        coef = _nonnegative_fit(rows, usable)
        out[f"{name}_eff"] = round(1 / coef["flops"], 4)
        out[f"{name}_score_ps"] = round(coef.get("scores", 0.0) * 1e12, 6)
        out[f"{name}_row_ps"] = round(coef.get("rows", 0.0) * 1e12, 6)
    return out


def _nonnegative_fit(rows: list[dict[str, float]], terms: list[str]) -> dict[str, float]:
    """Coefficients ≥ 0, the first ≥ 1 (the matmuls at no more than the peak), minimising
    Σ (Σ_t c_t·row[t] − 1)²: the best of the fits on each subset of the terms that keeps the first
    (a handful: the normal equations solved by hand); failing all, the matmuls alone at the peak."""
    best: tuple[float, dict[str, float]] | None = None
    for k in range(1 << (len(terms) - 1)):
        subset = [terms[0]] + [t for i, t in enumerate(terms[1:]) if k >> i & 1]
        coef = _least_squares([[r[t] for t in subset] for r in rows])
        if coef is None or coef[0] < 1 or min(coef) < 0:
            continue
        sse = sum((sum(c * v for c, v in zip(coef, (r[t] for t in subset), strict=True)) - 1) ** 2 for r in rows)
        if best is None or sse < best[0]:
            best = (sse, dict(zip(subset, coef, strict=True)))
    return best[1] if best else {terms[0]: 1.0}


def _least_squares(xs: list[list[float]]) -> list[float] | None:
    """c minimising Σ (c·x − 1)² over the rows x, by Gaussian elimination on the normal equations;
    None where they are singular (terms the rows cannot tell apart)."""
    n = len(xs[0])
    a = [[sum(x[i] * x[j] for x in xs) for j in range(n)] + [sum(x[i] for x in xs)] for i in range(n)]
    for col in range(n):
        pivot = max(range(col, n), key=lambda r: abs(a[r][col]))
        if abs(a[pivot][col]) <= 1e-12 * max(abs(a[i][i]) for i in range(n)):
            return None
        a[col], a[pivot] = a[pivot], a[col]
        for r in range(n):
            if r != col:
                f = a[r][col] / a[col][col]
                a[r] = [v - f * w for v, w in zip(a[r], a[col], strict=True)]
    return [a[i][n] / a[i][i] for i in range(n)]


def fit_line(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """Least-squares y = a + b·x, intercept clamped at 0."""
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx if sxx else my / mx
    a = max(0.0, my - b * mx)
    return a, b


def fit_memory_bound(points: list[dict]) -> dict:
    """time = overhead + bytes / bandwidth, per op; the overall bandwidth is LayerNorm's (a pure
    streaming kernel) and the overhead the median intercept."""
    ops, intercepts = {}, []
    for op in sorted({p["op"] for p in points}):
        rows = [p for p in points if p["op"] == op]
        a, b = fit_line([p["bytes"] for p in rows], [p["time_s"] for p in rows])
        ops[op] = round(1 / b / 1e9, 2) if b > 0 else max(p["gbps"] for p in rows)
        intercepts.append(a)
    overall = ops.get("layernorm", statistics.median(ops.values()))
    return {"bandwidth_gbps": overall, "overhead_us": round(statistics.median(intercepts) * 1e6, 2), "ops": ops}


def fit_collective(points: list[dict]) -> dict:
    """Bus bandwidth from the largest messages, latency from the smallest: all-reduce's for the
    tier, and each op's own under `ops` (gloo's all-gather and reduce-scatter move a byte several
    times slower than its all-reduce; NCCL's rings run the three alike)."""
    def one(rows: list[dict]) -> dict:
        largest = max(p["bytes"] for p in rows)
        smallest = min(p["bytes"] for p in rows)
        busbw = statistics.median(p["busbw_gbps"] for p in rows if p["bytes"] == largest)
        latency = min(p["time_s"] for p in rows if p["bytes"] == smallest)
        return {"busbw_gbps": round(busbw, 3), "latency_us": round(latency * 1e6, 1)}

    ar = [p for p in points if p["op"] == "all_reduce"] or points
    ops = {op: one([p for p in points if p["op"] == op]) for op in sorted({p["op"] for p in points})}
    return {**one(ar), "ops": ops}
