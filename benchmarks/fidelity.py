"""Cost-model fidelity: predicted against published for every case the project carries, benchmark and
production rows apart, out of sample.

Each case is compared on the figure its source publishes, in the source's own convention: TFLOP/s per
GPU HFU-style, MFU or the iteration time. One built-in profile per GPU type, the same for every case.
The profiles' fitted values (`python -m profiles.derived --fit`) are fitted to the benchmark rows
(Megatron-LM 2021's weak scaling, llm-foundry's throughput table); a benchmark row out of sample is
predicted by the values re-fitted without it (leave-one-out). The production rows (runs people trained,
planner/data/cases.json `kind: production`) are in no fit, so each is out of sample as it is, and
leaving a run out changes nothing; their open facts take their era's defaults (planner/layout/era.py).
Errors are signed as speed: predicted speed / measured speed − 1, positive = the model is optimistic.
The production rows' step-time factors are what a plan draws as the model's own error.

    python benchmarks/fidelity.py [--json]
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from planner.layout.case import published_cases
from planner.layout.search import compare_to_published
from profiles.derived import CALIBRATION, leave_one_out


def source(case) -> str:
    return case.run_name if case.kind == "production" else case.name.split("-")[0]


def summarise(rows: list[dict], key: str) -> dict:
    errors = [r[key] for r in rows]
    return {"rows": len(errors), "runs": len({r["run"] for r in rows}), "mean_abs": sum(map(abs, errors)) / len(errors),
            "max_abs": max(map(abs, errors)), "mean_signed": sum(errors) / len(errors)}


def fidelity() -> dict:
    start = time.perf_counter()
    record = json.loads(CALIBRATION.read_text())
    fitted = set(record["rows"])
    loo = leave_one_out(record)
    rows = []
    for c in published_cases():
        r = compare_to_published(c)
        r["source"] = source(c)
        r["in_fit"] = c.name in fitted
        # A benchmark row out of sample: re-fitted without it (its error in the metric's sign, as speed).
        if c.name in fitted:
            error = loo[c.name]
            r["speed_error_out_of_sample"] = (1 / (1 + error) - 1) if r["metric"] == "iteration_s" else error
        else:
            r["speed_error_out_of_sample"] = r["speed_error"]
        rows.append(r)
    bench = [r for r in rows if r["kind"] == "benchmark"]
    prod = [r for r in rows if r["kind"] == "production"]
    summary = {
        "benchmark": {"in_sample": summarise(bench, "speed_error"),
                      "out_of_sample": summarise(bench, "speed_error_out_of_sample"),
                      "by_source": {s: summarise([r for r in bench if r["source"] == s], "speed_error_out_of_sample")
                                    for s in sorted({r["source"] for r in bench})}},
        "production": {"out_of_sample": summarise(prod, "speed_error_out_of_sample"),
                       "by_run": {s: summarise([r for r in prod if r["source"] == s], "speed_error_out_of_sample")
                                  for s in dict.fromkeys(r["source"] for r in prod)}},
        "flm101b_schedule": flm_schedule(),
        "values": record["values"], "seconds": time.perf_counter() - start}
    return {"rows": rows, "summary": summary}


def flm_schedule() -> dict:
    """FLM-101B's own schedule on its 192 A800s: simulated days against the paper's 21.54, with the model's
    error drawn from the production runs, and from them less FLM-101B's own (leave its run out)."""
    from planner.cost.device_profile import builtin_profile
    from planner.cost.model_error import ModelError, production_error
    from planner.growth.loss_law import GrowthLossModel
    from planner.growth.schedule import Settings
    from planner.model.specs import get_gpu
    from planner.plan.budget import plan_budget, simulate_schedule
    from planner.sim.whole_run import FailureModel

    gpu = get_gpu("a800-80gb")
    settings = Settings(gpu=gpu, price_per_gpu_hour=gpu.price.usd_per_gpu_hour, max_gpus=192, target_params=101e9,
                        budget_usd=100_000)
    result = plan_budget(settings, builtin_profile(gpu.key), GrowthLossModel(), schedule="flm", trials=1000)
    error = production_error()
    others = ModelError(error.source + ", FLM-101B's own run left out",
                        tuple(f for f in error.factors if f[0] != "flm101b"))
    left_out = simulate_schedule(result.main, FailureModel(), 1000, 0, others).to_dict(keep_costs=False)
    sim = result.plan.simulation
    return {"paper_days": 21.54, "days_ideal": sim["days_ideal"], "days_p50": sim["days_p50"],
            "days_p50_flm_left_out": left_out["days_p50"],
            "days_p50_without_model_error": sim["model_error"]["without"]["days_p50"]}


def main() -> int:
    result = fidelity()
    if "--json" in sys.argv:
        print(json.dumps(result, indent=1))
        return 0
    rows, summary = result["rows"], result["summary"]
    print("Speed error: predicted / measured speed − 1 (positive: the model is optimistic).")
    print(f"{'case':36} {'kind':10} {'metric':11} {'published':>9} {'predicted':>9} {'out of sample':>13}  layout")
    for r in rows:
        print(f"{r['case']:36} {r['kind']:10} {r['metric']:11} {r['published']:9.4g} {r['predicted']:9.4g} "
              f"{r['speed_error_out_of_sample']:+13.1%}  {r['layout']}")
    for kind in ("benchmark", "production"):
        s = summary[kind]["out_of_sample"]
        print(f"\n{kind} rows out of sample ({s['rows']} rows, {s['runs']} runs): mean |error| {s['mean_abs']:.1%}, "
              f"max {s['max_abs']:.1%}, mean signed {s['mean_signed']:+.1%}")
        for name, g in summary[kind].get("by_source", summary[kind].get("by_run", {})).items():
            print(f"  {name:20} mean signed {g['mean_signed']:+6.1%}  mean |error| {g['mean_abs']:5.1%} "
                  f"({g['rows']} rows)")
    f = summary["flm101b_schedule"]
    print(f"\nFLM-101B's schedule, simulated: P50 {f['days_p50']:.2f} days (FLM's own run left out of the error: "
          f"{f['days_p50_flm_left_out']:.2f}; without the model's error: {f['days_p50_without_model_error']:.2f}; "
          f"failure-free {f['days_ideal']:.2f}) against the paper's {f['paper_days']}")
    print(f"({summary['seconds']:.1f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
