"""Grow versus scratch at two proxy sizes: what a token after a growth is worth (η) per operator, with
the seeds' scatter, and what a device hour buys of such pairs.

    python benchmarks/grow_vs_scratch.py [--hidden 64,128] [--seeds 0,1,2] [--device cpu|cuda]
        [--out runs/growth-bench] [--save benchmarks/results/grow_vs_scratch.json] [--json]
    python benchmarks/grow_vs_scratch.py --from benchmarks/results/grow_vs_scratch.json --json

Each size runs `flmplan grow-vs-scratch`'s experiment (runtime/growth/proxy_pairs.py): MSG in depth and
width and the G_stack control, at three growth points, every seed. `--from` renders a stored measurement
(BENCHMARKS.md's table is made from it by benchmarks/report.py, so the figures are never typed).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def summarise(result: dict) -> dict:
    """What BENCHMARKS.md shows of one size's pairs.json."""
    pairs = result["pairs"]
    cost = result["cost"]
    per_pair_s = cost["seconds"] / cost["runs"]
    return {"hidden": result["shape"]["hidden"], "layers": result["shape"]["layers"],
            "target_params": result["target_params"], "steps": result["shape"]["steps"],
            "eval_tokens": result["eval"]["tokens"], "seeds": result["seeds"],
            "fits": {op: {k: f[k] for k in ("token_efficiency", "error", "pairs", "seeds", "per_seed")}
                     for op, f in result["fits"].items()},
            "held_out": result["held_out"],
            "censored": sum(not p["reached"] for p in pairs), "pairs": len(pairs),
            "resolved_gaps": sum(p["final_gap_resolved"] for p in pairs),
            "final_gap_by_operator": {op: sum(p["final_gap"] for p in pairs if p["operator"] == op)
                                      / max(1, sum(p["operator"] == op for p in pairs))
                                      for op in result["fits"]},
            "cost": {**cost, "runs_per_hour": 3600 / per_pair_s}}


def measure(args) -> dict:
    import torch
    from report import machine

    from runtime.growth.proxy_pairs import PairShape, run_pairs

    sizes = []
    for hidden in (int(h) for h in args.hidden.split(",")):
        shape = PairShape(hidden=hidden, layers=args.layers, steps=args.steps, device=args.device)
        result = run_pairs(shape, [0.1, 0.25, 0.5], ["depth", "width", "stack"],
                           [int(s) for s in args.seeds.split(",")], Path(args.out) / f"h{hidden}",
                           log=lambda m: print(m, file=sys.stderr))
        sizes.append(summarise(result))
    where = torch.cuda.get_device_name() if args.device == "cuda" else machine()
    return {"kind": "flmplan-grow-vs-scratch-bench", "machine": where, "sizes": sizes}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hidden", default="64,128")
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument("--out", default="runs/growth-bench")
    ap.add_argument("--save", help="write the measurement here (JSON)")
    ap.add_argument("--from", dest="source", help="render a stored measurement instead of measuring")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    out = json.loads(Path(args.source).read_text()) if args.source else measure(args)
    if args.save:
        Path(args.save).parent.mkdir(parents=True, exist_ok=True)
        Path(args.save).write_text(json.dumps(out, indent=1) + "\n")
    if args.json:
        print(json.dumps(out, indent=1))
        return
    for s in out["sizes"]:
        for op, f in s["fits"].items():
            print(f"{s['target_params'] / 1e6:.2f}M {op}: η = {f['token_efficiency']:.3f} ± {f['error']:.3f} "
                  f"(per seed {', '.join(f'{v:.3f}' for v in f['per_seed'].values())})")
        print(f"  held out {s['held_out']['name']}: {s['held_out']['verdict']}; {s['censored']} of {s['pairs']} "
              f"censored; {s['cost']['runs_per_hour']:.0f} runs an hour on {out['machine']}")


if __name__ == "__main__":
    main()
