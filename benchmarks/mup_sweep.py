"""µP against SP on this machine (issue 15): a learning-rate sweep over proxy widths under both,
then µScaling's loss prediction of the widest model from the narrower ones, then a plan made with
the fitted law beside the Chinchilla one.

    python benchmarks/mup_sweep.py [--out DIR] [--widths 32,64,128,256,512] [--steps 150] [--json]

1. `flmplan tune` (runtime/training/lr_sweep.py, in this process): every width × learning rate (× output
   multiplier under µP), SP and µP, the same seed, data order and tokens for every proxy
   (byte-level text of Python's standard library).
2. Each parametrization's best rate (and multiplier) at the narrowest width is used at every width
   (what one does with values tuned small); µScaling L(N) = a·N^b + c is fitted on all widths but the widest at the
   last step and predicts the widest; the error is printed in nats and in %.
3. `flmplan simulate --budget 100000` with the µP runs' fitted L(N, D) and with Chinchilla's.

DIR keeps every proxy (a second call reuses finished ones); default runs/mup-sweep.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from planner.growth.loss_fit import fit_loss, law_file  # noqa: E402
from planner.plan.run_curves import read_curves  # noqa: E402
from runtime.training.lr_sweep import ProxyShape, tune  # noqa: E402


def simulate(law: str, out: Path) -> dict:
    subprocess.run([sys.executable, "-m", "flmplan.cli", "simulate", "--budget", "100000", "--loss-law", law,
                    "--out", str(out)], cwd=ROOT, check=True, capture_output=True, timeout=1800)
    return json.loads(out.read_text())


def describe(plan: dict) -> str:
    stages = " → ".join(f"{s['model']['layers']}×{s['model']['hidden']} ({s['tokens'] / 1e9:.0f}B tok)"
                        for s in plan["stages"])
    t = plan["totals"]
    return f"{stages}; {t['days']:.1f} days, ${t['cost_usd']:,.0f}, predicted loss {t['predicted_loss']:.3f}"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "mup-sweep")
    ap.add_argument("--widths", default="32,64,128,256,512")
    ap.add_argument("--lrs", default="0.001,0.002,0.004,0.008,0.016,0.032")
    ap.add_argument("--output-mults", default="1,4")
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    say = (lambda *a, **k: None) if args.json else print
    widths = [int(w) for w in args.widths.split(",")]
    lrs = [float(x) for x in args.lrs.split(",")]
    shape = ProxyShape(layers=2, head_dim=16, seq=64, batch=8, steps=args.steps)
    mults = [float(x) for x in args.output_mults.split(",")]
    result = tune(widths, lrs, mults, ["sp", "mup"], shape, args.out, log=lambda s: say(s, flush=True))

    say("\n## Best learning rate per width (final loss)\n")
    say("| width | params | SP best lr | SP loss | µP best lr (output mult) | µP loss |")
    say("|---:|---:|---:|---:|---:|---:|")
    params = {r["width"]: r["params"] for r in result["runs"]}
    for w in result["widths"]:
        sp, mu = result["best"]["sp"].get(w), result["best"]["mup"].get(w)
        say(f"| {w} | {params[w] / 1e6:.2f}M | {sp['lr']:g} | {sp['final_loss']:.4f} | {mu['lr']:g} "
              f"(×{mu['output_mult']:g}) | {mu['final_loss']:.4f} |")
    say(f"\nbest-rate drift narrowest → widest (factors of 2): SP {result['drift']['sp']:+.2f}, "
          f"µP {result['drift']['mup']:+.2f}")

    summary = {"tune": {k: result[k] for k in ("widths", "lrs", "best", "drift", "shape", "data")}}
    say("\n## µScaling: fit on all widths but the widest, predict the widest (rate tuned at the narrowest)\n")
    say("| parametrization | lr, output mult (all widths) | widest: measured | predicted | error (nats) | error % |")
    say("|---|---:|---:|---:|---:|---:|")
    for kind in ("mup", "sp"):
        narrow = result["best"][kind][min(widths)]
        lr, om = narrow["lr"], narrow["output_mult"]
        runs = [Path(r["run"]) for r in result["runs"] if r["parametrization"] == kind and r["lr"] == lr
                and r["output_mult"] == om]
        fit = fit_loss(read_curves(runs), holdout=1)
        held = next(p for p in fit["mu_scaling"]["predictions"] if p["held_out"])
        say(f"| {kind} | {lr:g}, ×{om:g} | {held['measured']:.4f} | {held['predicted']:.4f} | {held['error']:+.4f} "
              f"| {held['error_pct']:+.2f} |")
        law = law_file(fit, f"fitted-{kind}")
        (args.out / f"loss-law-{kind}.json").write_text(json.dumps(law, indent=1))
        mu = {k: v for k, v in fit["mu_scaling"].items() if k != "predictions"}
        summary[kind] = {"lr": lr, "output_mult": om, "held_out": held, "mu_scaling": mu, "law": fit["law"]}
        e = fit["law"]["errors"]
        say(f"  {kind} L(N, D) = {law['E']:.3f}±{e['E']:.2g} + {law['A']:.4g}/N^{law['alpha']:.3f}±"
              f"{e['alpha']:.2g} + {law['B']:.4g}/D^{law['beta']:.3f}±{e['beta']:.2g} "
              f"(rms residual {fit['law']['rms_residual']:.4f})")

    say("\n## simulate --budget 100000: Chinchilla's law against the µP runs' fitted law\n")
    for name, law in (("chinchilla", "chinchilla"), ("fitted µP", str(args.out / "loss-law-mup.json"))):
        plan = simulate(law, args.out / f"plan-{name.split()[0]}.json")
        summary[f"plan_{name.split()[0]}"] = describe(plan)
        say(f"- {name}: {describe(plan)}")
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
    if args.json:
        print(json.dumps(summary, indent=1, default=str))


if __name__ == "__main__":
    main()
