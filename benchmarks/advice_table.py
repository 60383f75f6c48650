"""What `flmplan simulate` advises across budgets, GPUs and carry-over: the plan, whether the
budget holds with failures counted, and each advice item.

    python benchmarks/advice_table.py
"""

from __future__ import annotations

import time

from planner.errors import FlmplanError
from planner.loss import GrowthLossModel, load_law
from planner.profile import builtin_profile
from planner.schedule import Settings
from planner.sim.run import FailureModel
from planner.simulate import plan_budget
from planner.specs import get_gpu

SCENARIOS = [
    # (budget, gpu, carry-over, max days)
    (10_000, "a800-80gb", 1.0, 60.0),
    (15_000, "a800-80gb", 1.0, 60.0),
    (30_000, "a800-80gb", 1.0, 60.0),
    (100_000, "a800-80gb", 1.0, 60.0),
    (100_000, "a800-80gb", 0.8, 60.0),
    (100_000, "a800-80gb", 0.6, 60.0),
    (100_000, "h100-80gb", 1.0, 60.0),
    (300_000, "a800-80gb", 1.0, 60.0),
    (1_000_000, "a800-80gb", 1.0, 21.0),
]


def main() -> None:
    print("| budget | GPU | carry-over | deadline d | plan | GPUs | P90 cost | P(cost ≤ budget) | loss | advice |")
    print("|---:|---|---:|---:|---|---:|---:|---:|---:|---|")
    for budget, gpu_key, carry, days in SCENARIOS:
        gpu = get_gpu(gpu_key)
        settings = Settings(gpu=gpu, price_per_gpu_hour=gpu.price.usd_per_gpu_hour, max_gpus=192,
                            target_params=101e9, budget_usd=budget, max_days=days)
        loss = GrowthLossModel(law=load_law("chinchilla"), carryover=carry)
        t = time.perf_counter()
        try:
            r = plan_budget(settings, builtin_profile(gpu_key), loss, failures=FailureModel(), trials=1000)
        except FlmplanError as err:
            print(f"| ${budget:,} | {gpu_key} | {carry:g} | {days:g} | refused: {err} | | | | | |", flush=True)
            continue
        took = time.perf_counter() - t
        plan, sim = r.plan, r.plan.simulation
        shapes = " → ".join(st.name for st in plan.stages)
        advice = "<br>".join(f"**{a['kind']}**: {a['message']}" for a in plan.advice)
        print(f"| ${budget:,} | {gpu_key} | {carry:g} | {days:g} | {shapes} | {plan.cluster.gpus} | "
              f"${sim['cost_p90']:,.0f} | {sim['p_within_budget']:.0%} | {plan.totals.predicted_loss:.3f} | "
              f"{advice} ({took:.1f} s) |", flush=True)


if __name__ == "__main__":
    main()
