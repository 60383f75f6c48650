"""Speed of the planner's hot paths on this machine (issue targets in brackets):

- the full layout search for FLM-101B's 101B shape on 192 A800s, every field open   [< 2 s]
- the default `flmplan simulate --budget 100000` search, baselines and 1,000-trial run  [< 10 s]
- 1,000 Monte Carlo trials of the FLM-101B 192-GPU plan                             [< 10 s]

    python benchmarks/planner_speed.py [--json]
"""

from __future__ import annotations

import json
import platform
import sys
import time

from planner.cost.device_profile import builtin_profile
from planner.growth.flm import flm_base
from planner.growth.loss_law import GrowthLossModel
from planner.growth.schedule import Settings
from planner.growth.schedule_search import Planner, flm_schedule
from planner.layout.candidates import PartialLayout
from planner.layout.search import search_layout
from planner.model.specs import ClusterSpec, get_gpu
from planner.plan.budget import plan_budget, simulate_schedule
from planner.sim.whole_run import FailureModel


def timed(fn, repeat: int = 3) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def measure() -> dict:
    gpu = get_gpu("a800-80gb")
    profile = builtin_profile("a800-80gb")
    cluster = ClusterSpec(gpu=gpu, gpus=192)

    def search():
        from planner.cost.compute import _layer_time, _logits_time

        _layer_time.cache_clear()
        _logits_time.cache_clear()
        return search_layout(flm_base(), cluster, PartialLayout(global_batch=2160), profile)

    search_s, r = timed(search)
    settings = Settings(gpu=gpu, price_per_gpu_hour=1.0, max_gpus=192, target_params=101e9, budget_usd=100_000)
    simulate_s, res = timed(lambda: plan_budget(settings, profile, GrowthLossModel(), trials=1000), repeat=1)
    flm = flm_schedule(Planner(settings, profile, GrowthLossModel()))
    trials_s, mc = timed(lambda: simulate_schedule(flm, FailureModel(), 1000, 0))
    d = mc.to_dict(keep_costs=False)
    return {"machine": f"{platform.processor() or platform.machine()}, Python {platform.python_version()}",
            "search": {"seconds": search_s, "layouts": r.considered, "rejected": dict(r.rejected),
                       "best": r.best.layout.describe(), "tflops_hfu": r.best.tflops_per_gpu_hfu},
            "simulate": {"seconds": simulate_s, "schedules": len(res.searched)},
            "monte_carlo": {"seconds": trials_s, "days_p50": d["days_p50"], "days_p90": d["days_p90"],
                            "failures_mean": d["failures_mean"]}}


def main() -> None:
    m = measure()
    if "--json" in sys.argv:
        print(json.dumps(m, indent=1))
        return
    s, r, mc = m["search"], m["simulate"], m["monte_carlo"]
    print(f"machine: {m['machine']}")
    print(f"layout search, 101B on 192 × A800, all fields open: {s['seconds']:.3f} s ({s['layouts']} layouts, "
          f"{s['rejected']}); best {s['best']} at {s['tflops_hfu']:.0f} TFLOP/s")
    print(f"simulate --budget 100000 (search + baselines + 1000 trials): {r['seconds']:.2f} s, {r['schedules']} "
          "schedules")
    print(f"1000 Monte Carlo trials of the FLM-101B plan: {mc['seconds']:.3f} s (P50 {mc['days_p50']:.2f} d, "
          f"P90 {mc['days_p90']:.2f} d, {mc['failures_mean']:.1f} failures per run)")


if __name__ == "__main__":
    main()
