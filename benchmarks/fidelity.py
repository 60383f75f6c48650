"""Cost-model fidelity: predicted vs published for every case the project carries.

Each case is compared on the figure its source publishes, in the source's own convention:
TFLOP/s per GPU HFU-style (Megatron-LM, FLM-101B) or MFU (llm-foundry). One built-in profile
per GPU type, the same for every case.

    python benchmarks/fidelity.py [--json]
"""

from __future__ import annotations

import json
import sys
import time

from planner.case import published_cases
from planner.search import compare_to_published


def main() -> int:
    start = time.perf_counter()
    rows = [compare_to_published(c) for c in published_cases()]
    elapsed = time.perf_counter() - start
    errors = [abs(r["error"]) for r in rows]
    summary = {"cases": len(rows), "mean_abs_error": sum(errors) / len(errors), "max_abs_error": max(errors),
               "seconds": elapsed}
    if "--json" in sys.argv:
        print(json.dumps({"rows": rows, "summary": summary}, indent=1))
        return 0
    print(f"{'case':38} {'metric':10} {'published':>9} {'predicted':>9} {'error':>7}  layout (memory GiB)")
    for r in rows:
        costliest = f" (open facts at their costliest: {r['error_costliest']:+.1%})" if "error_costliest" in r else ""
        print(f"{r['case']:38} {r['metric']:10} {r['published']:9.4g} {r['predicted']:9.4g} "
              f"{r['error']:+7.1%}  {r['layout']} ({r['memory_gib']:.0f}){costliest}")
    print(f"\n{summary['cases']} cases: mean |error| {summary['mean_abs_error']:.1%}, "
          f"max |error| {summary['max_abs_error']:.1%} ({elapsed:.1f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
