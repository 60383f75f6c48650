"""Speed of the planner's hot paths on this machine (issue targets in brackets):

- the full layout search for FLM-101B's 101B shape on 192 A800s, every field open   [< 2 s]
- the default `flmplan simulate --budget 100000` search, baselines and 1,000-trial run  [< 10 s]
- 1,000 Monte Carlo trials of the FLM-101B 192-GPU plan                             [< 10 s]

    python benchmarks/planner_speed.py
"""

from __future__ import annotations

import platform
import time

from planner.layouts import PartialLayout
from planner.loss import GrowthLossModel
from planner.profile import builtin_profile
from planner.schedule import Planner, Settings, flm_base, flm_schedule
from planner.search import search_layout
from planner.sim.run import FailureModel
from planner.simulate import plan_budget, simulate_schedule
from planner.specs import ClusterSpec, get_gpu


def timed(fn, repeat: int = 3) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def main() -> None:
    print(f"machine: {platform.processor() or platform.machine()}, Python {platform.python_version()}")
    gpu = get_gpu("a800-80gb")
    profile = builtin_profile("a800-80gb")
    cluster = ClusterSpec(gpu=gpu, gpus=192)

    def search():
        from planner.compute import _layer_time, _logits_time

        _layer_time.cache_clear()
        _logits_time.cache_clear()
        return search_layout(flm_base(), cluster, PartialLayout(global_batch=2160), profile)

    s, r = timed(search)
    print(f"layout search, 101B on 192 × A800, all fields open: {s:.3f} s ({r.considered} layouts, "
          f"{dict(r.rejected)}); best {r.best.layout.describe()} at {r.best.tflops_per_gpu_hfu:.0f} TFLOP/s")

    settings = Settings(gpu=gpu, price_per_gpu_hour=1.0, max_gpus=192, target_params=101e9, budget_usd=100_000)
    s, res = timed(lambda: plan_budget(settings, profile, GrowthLossModel(), trials=1000), repeat=1)
    print(f"simulate --budget 100000 (search + baselines + 1000 trials): {s:.2f} s, {len(res.searched)} schedules")

    flm = flm_schedule(Planner(settings, profile, GrowthLossModel()))
    s, mc = timed(lambda: simulate_schedule(flm, FailureModel(), 1000, 0))
    d = mc.to_dict(keep_costs=False)
    print(f"1000 Monte Carlo trials of the FLM-101B plan: {s:.3f} s (P50 {d['days_p50']:.2f} d, "
          f"P90 {d['days_p90']:.2f} d, {d['failures_mean']:.1f} failures per run)")


if __name__ == "__main__":
    main()
