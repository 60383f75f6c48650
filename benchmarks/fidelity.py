"""Cost-model fidelity: predicted against published for every case the project carries, in sample and
out of sample.

Each case is compared on the figure its source publishes, in the source's own convention: TFLOP/s per
GPU HFU-style (Megatron-LM, FLM-101B) or MFU (llm-foundry, Llama 3). One built-in profile per GPU type,
the same for every case. The profiles' fitted values (`python -m profiles.derived --fit`) are fitted to
every Megatron-LM and llm-foundry row; the rows marked `held_out` (FLM-101B's, Llama 3's) are held out of
every fit. Out of sample, a fitted row is predicted by the values re-fitted without it (leave-one-out);
held-out rows are out of sample as they are. The mean signed error per source shows a bias that the mean |error| hides.

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

SOURCES = {"megatron": "Megatron-LM 2021", "llmfoundry": "llm-foundry", "flm101b": "FLM-101B",
           "llama3": "Llama 3 (Dubey et al. 2024)"}


def source(name: str) -> str:
    return SOURCES[name.split("-")[0]]


def summarise(rows: list[dict], key: str) -> dict:
    errors = [r[key] for r in rows]
    return {"rows": len(errors), "mean_abs": sum(map(abs, errors)) / len(errors), "max_abs": max(map(abs, errors)),
            "mean_signed": sum(errors) / len(errors)}


def fidelity() -> dict:
    start = time.perf_counter()
    record = json.loads(CALIBRATION.read_text())
    fitted = set(record["rows"])
    loo = leave_one_out(record)
    rows = []
    for c in published_cases():
        r = compare_to_published(c)
        r["source"] = source(c.name)
        r["in_fit"] = c.name in fitted
        r["error_out_of_sample"] = loo[c.name] if c.name in fitted else r["error"]
        rows.append(r)
    fit_rows = [r for r in rows if r["in_fit"]]
    summary = {"in_sample": summarise(fit_rows, "error"),
               "out_of_sample": summarise(rows, "error_out_of_sample"),
               "out_of_sample_fitted_rows": summarise(fit_rows, "error_out_of_sample"),
               "by_source": {s: {"out_of_sample": summarise([r for r in rows if r["source"] == s],
                                                            "error_out_of_sample")}
                             for s in SOURCES.values()},
               "values": record["values"], "seconds": time.perf_counter() - start}
    return {"rows": rows, "summary": summary}


def main() -> int:
    result = fidelity()
    if "--json" in sys.argv:
        print(json.dumps(result, indent=1))
        return 0
    rows, summary = result["rows"], result["summary"]
    print(f"{'case':38} {'metric':10} {'published':>9} {'predicted':>9} {'in sample':>9} {'out of sample':>13}  layout")
    for r in rows:
        inside = f"{r['error']:+9.1%}" if r["in_fit"] else f"{'—':>9}"
        print(f"{r['case']:38} {r['metric']:10} {r['published']:9.4g} {r['predicted']:9.4g} {inside} "
              f"{r['error_out_of_sample']:+13.1%}  {r['layout']}")
    s_in, s_out = summary["in_sample"], summary["out_of_sample"]
    print(f"\nin sample ({s_in['rows']} fitted rows): mean |error| {s_in['mean_abs']:.1%}, max {s_in['max_abs']:.1%}")
    s_loo = summary["out_of_sample_fitted_rows"]
    print(f"out of sample, the same {s_loo['rows']} rows each re-fitted without it: mean |error| "
          f"{s_loo['mean_abs']:.1%}, max {s_loo['max_abs']:.1%}")
    print(f"out of sample, all {s_out['rows']} (held-out rows never fitted): mean |error| {s_out['mean_abs']:.1%}, "
          f"max {s_out['max_abs']:.1%}")
    for name, s in summary["by_source"].items():
        print(f"  {name:17} mean signed error out of sample {s['out_of_sample']['mean_signed']:+.1%} "
              f"({s['out_of_sample']['rows']} rows)")
    print(f"({summary['seconds']:.1f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
