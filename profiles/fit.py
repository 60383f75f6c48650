"""Fit the profile's few model parameters to its measured points (pure Python).

The planner's device model (planner/device.py) uses these parameters and corrects them with
the measured points near a query; the fit gives it a physical curve between and beyond them.
"""

from __future__ import annotations

import math
import statistics

from planner.device import gemm_roofline_s
from profiles.schema import ProfileError


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


def fit_attention(points: list[dict], peak_flops: float) -> dict:
    """Efficiency on the FLOPs a causal kernel executes: 2·b·s²·h forward, 2.5× that backward."""
    fwd, bwd = [], []
    for p in points:
        flops = 2.0 * p["batch"] * p["seq"] ** 2 * p["heads"] * p["head_dim"]
        fwd.append(flops / (peak_flops * p["fwd_s"]))
        bwd.append(2.5 * flops / (peak_flops * p["bwd_s"]))
    return {"fwd_eff": round(statistics.median(fwd), 4), "bwd_eff": round(statistics.median(bwd), 4)}


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
