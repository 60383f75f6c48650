"""What `flmplan simulate` advises across budgets, GPUs and carry-over: the plan, whether the
budget holds with failures counted, and each advice item.

    python benchmarks/advice_table.py [--json]
"""

from __future__ import annotations

import json
import sys
import time

from planner.cost.device_profile import builtin_profile
from planner.errors import FlmplanError
from planner.growth.loss_law import GrowthLossModel, load_law
from planner.growth.schedule import Settings
from planner.model.specs import get_gpu
from planner.plan.budget import plan_budget
from planner.sim.whole_run import FailureModel

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


def scenario(budget: int, gpu_key: str, carry: float, days: float) -> dict:
    """One budget's plan and advice, or the planner's refusal."""
    gpu = get_gpu(gpu_key)
    settings = Settings(gpu=gpu, price_per_gpu_hour=gpu.price.usd_per_gpu_hour, max_gpus=192,
                        target_params=101e9, budget_usd=budget, max_days=days)
    loss = GrowthLossModel(law=load_law("chinchilla"), carryover=carry)
    row: dict = {"budget_usd": budget, "gpu": gpu_key, "carryover": carry, "max_days": days}
    t = time.perf_counter()
    try:
        r = plan_budget(settings, builtin_profile(gpu_key), loss, failures=FailureModel(), trials=1000)
    except FlmplanError as err:
        return row | {"refused": str(err)}
    plan, sim = r.plan, r.plan.simulation
    return row | {"stages": [st.name for st in plan.stages], "gpus": plan.cluster.gpus,
                  "cost_p90": sim["cost_p90"], "p_within_budget": sim["p_within_budget"],
                  "predicted_loss": plan.totals.predicted_loss, "advice": plan.advice,
                  "seconds": time.perf_counter() - t}


def main() -> None:
    as_json = "--json" in sys.argv
    if not as_json:
        print("| budget | GPU | carry-over | deadline d | plan | GPUs | P90 cost | P(cost ≤ budget) | loss | advice |")
        print("|---:|---|---:|---:|---|---:|---:|---:|---:|---|")
    rows = []
    for budget, gpu_key, carry, days in SCENARIOS:
        r = scenario(budget, gpu_key, carry, days)
        rows.append(r)
        if as_json:
            continue
        head = f"| ${budget:,} | {gpu_key} | {carry:g} | {days:g} | "
        if "refused" in r:
            print(head + f"refused: {r['refused']} | | | | | |", flush=True)
            continue
        advice = "<br>".join(f"**{a['kind']}**: {a['message']}" for a in r["advice"])
        print(head + f"{' → '.join(r['stages'])} | {r['gpus']} | ${r['cost_p90']:,.0f} | {r['p_within_budget']:.0%} | "
              f"{r['predicted_loss']:.3f} | {advice} ({r['seconds']:.1f} s) |", flush=True)
    if as_json:
        print(json.dumps({"rows": rows}, indent=1, default=str))


if __name__ == "__main__":
    main()
