"""Published growth results against the planner's growth loss model.

    python benchmarks/growth_cases.py [--law chinchilla] [--fit-on gstack-7b-300b] [--json]

For each case of planner/data/growth_cases.json: the speed-up its source states (in its own
convention), the equal-loss model's (planner/growth/loss_law.py) with the default knobs (carry-over 1, half the
mask ramp counted) and with the most favourable in range (the whole ramp counted), and the proposed
persistent token efficiency η, fitted on one case and scored on the others (planner/growth/evidence.py).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from planner.growth.evidence import evidence_table
from planner.growth.loss_law import load_law


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--law", default="chinchilla")
    ap.add_argument("--fit-on", default="gstack-7b-300b")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    table = evidence_table(load_law(args.law), args.fit_on)
    if args.json:
        print(json.dumps(table, indent=1))
        return
    print(f"law {table['law']}; η = {table['eta']:.3f}, fitted on {table['fit_on']}")
    print(f"{'case':16s} {'stated':>8s} {'equal-loss':>11s} {'best in range':>14s} {'η form':>8s}  scored")
    for r in table["rows"]:
        if not r["modelled"]:
            print(f"{r['name']:16s} {r['stated']:>8.1%}  not modelled: {r['why_not']}")
            continue
        scored = "fitted" if r["in_fit"] else "out of sample" if r["comparable"] else "not comparable"
        print(f"{r['name']:16s} {r['stated']:>8.1%} {r['equal_loss_default']:>11.1%} {r['equal_loss_best']:>14.1%} "
              f"{r['token_efficiency']:>8.1%}  {scored}")


if __name__ == "__main__":
    main()
