"""BENCHMARKS.md's generated tables: each cheap benchmark is run with --json and its table written between
its markers (`<!-- report:NAME -->` … `<!-- /report:NAME -->`) with the command, machine, date and commit
that made it.

    python benchmarks/report.py [NAME ...]          # rewrite the tables (all by default)
    python benchmarks/report.py --check [NAME ...]  # exit 1 when a committed table differs from what its
                                                    # script gives now (the provenance line aside)
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import subprocess
import sys
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "BENCHMARKS.md"
# Tables kept in another document than BENCHMARKS.md.
DOCS = {"whether-to-grow": ROOT / "README.md"}


def pct(x: float) -> str:
    return f"{x:+.1%}".replace("%", " %").replace("-", "−")


def share(x: float) -> str:
    return f"{x:.1%}".replace("%", " %")


def render_fidelity(result: dict) -> list[str]:
    s = result["summary"]
    bench, prod = s["benchmark"], s["production"]
    lines = ["Errors as speed: predicted / measured speed − 1 (positive: the model is optimistic).", "",
             "| rows | mean \\|error\\| | max \\|error\\| | mean signed |", "|---|---:|---:|---:|"]
    for label, g in ((f"benchmark, in sample: the {bench['in_sample']['rows']} fitted rows", bench["in_sample"]),
                     (f"benchmark, out of sample: the same {bench['out_of_sample']['rows']} rows, each re-fitted "
                      "without it", bench["out_of_sample"]),
                     (f"production, out of sample: {prod['out_of_sample']['rows']} rows of "
                      f"{prod['out_of_sample']['runs']} runs, never fitted", prod["out_of_sample"])):
        lines.append(f"| {label} | {share(g['mean_abs'])} | {share(g['max_abs'])} | {pct(g['mean_signed'])} |")
    lines += ["", "| source or run | rows | mean signed error, out of sample |", "|---|---:|---:|"]
    lines += [f"| {name} | {v['rows']} | {pct(v['mean_signed'])} |"
              for name, v in {**bench["by_source"], **prod["by_run"]}.items()]
    lines += ["", "| case | kind | metric | published | predicted | out of sample | step factor |",
              "|---|---|---|---:|---:|---:|---:|"]
    for r in result["rows"]:
        lines.append(f"| {r['case']} | {r['kind']} | {r['metric']} | {r['published']:.4g} | {r['predicted']:.4g} | "
                     f"{pct(r['speed_error_out_of_sample'])} | {r['step_factor']:.3f} |")
    f = s["flm101b_schedule"]
    values = ", ".join(f"{v['generation']} {v['parameter']} {v['value']:g}" for v in s["values"])
    return [*lines, "", f"FLM-101B's schedule, simulated with the model's error drawn: P50 {f['days_p50']:.2f} days "
            f"({f['days_p50_flm_left_out']:.2f} with FLM-101B's own run left out of the draws; "
            f"{f['days_p50_without_model_error']:.2f} without the model's error; failure-free {f['days_ideal']:.2f}) "
            f"against the paper's {f['paper_days']}.", "",
            f"Fitted values (profiles/data/calibration/derived.json): {values}."]


def render_growth_cases(result: dict) -> list[str]:
    lines = [f"η = {result['eta']:.3f}, fitted on {result['fit_on']} (law {result['law']}).", "",
             "| case | stated | equal-loss, default | equal-loss, best in range | η form | scored |",
             "|---|---:|---:|---:|---:|---|"]
    for r in result["rows"]:
        if not r["modelled"]:
            lines.append(f"| {r['name']} | {share(r['stated'])} | — | — | — | not modelled: {r['why_not']} |")
            continue
        scored = "fitted" if r["in_fit"] else "out of sample" if r["comparable"] else "not comparable"
        lines.append(f"| {r['name']} | {share(r['stated'])} | {share(r['equal_loss_default'])} | "
                     f"{share(r['equal_loss_best'])} | {share(r['token_efficiency'])} | {scored} |")
    return lines


def render_flm_sizing(result: dict) -> list[str]:
    lines = ["| facts | 16B | 51B | 101B |", "|---|---:|---:|---:|"]
    for r in result["rows"]:
        cells = [f"{p:.1f} ({pct(e)})" for p, e in zip(r["predicted"], r["error"], strict=True)]
        lines.append(f"| {r['facts']} | " + " | ".join(cells) + " |")
    return [*lines, "", *[f"- {s}" for s in result["shares"]]]


def render_planner_speed(result: dict) -> list[str]:
    s, r, mc = result["search"], result["simulate"], result["monte_carlo"]
    return ["| what | seconds | target | result |", "|---|---:|---:|---|",
            f"| layout search, 101B on 192 × A800, every field open | {s['seconds']:.3f} | < 2 | {s['layouts']:,} "
            f"layouts; best {s['best']} at {s['tflops_hfu']:.0f} TFLOP/s |",
            f"| `flmplan simulate --budget 100000` (search, baselines, 1,000 trials) | {r['seconds']:.2f} | < 10 | "
            f"{r['schedules']} schedules |",
            f"| 1,000 Monte Carlo trials of FLM-101B's schedule | {mc['seconds']:.3f} | < 10 | P50 "
            f"{mc['days_p50']:.2f} d, P90 {mc['days_p90']:.2f} d, {mc['failures_mean']:.1f} failures a run |"]


def render_korthikanti(result: dict) -> list[str]:
    lines = ["| mode | forward ms, published / predicted | backward ms, published / predicted | forward + backward |",
             "|---|---:|---:|---:|"]
    for r in result["korthikanti"]:
        (fp, fq), (bp, bq) = r["forward_ms"], r["backward_ms"]
        mode = r["mode"].replace("_", " ").replace("+", " + ")
        lines.append(f"| {mode} | {fp:.1f} / {fq:.1f} | {bp:.1f} / {bq:.1f} | {pct(r['total_error'])} |")
    return lines


# name → (command, renderer, compared by --check: timings are this machine's and are not)
def render_growth_pairs(result: dict) -> list[str]:
    """BENCHMARKS.md: η per proxy size and operator, the seeds, what was censored, the held-out pair."""
    lines = [f"Measured on {result['machine']}.", "",
             "| target | operator | η ± seeds' error | η per seed | censored pairs | held-out MSG pair | runs/hour |",
             "|---|---|---:|---|---:|---|---:|"]
    for s in result["sizes"]:
        held = s["held_out"]
        shown = (f"{held['name']}: measured {pct(held['measured'])}, predicted {pct(held['predicted'])} "
                 f"({pct(held['interval'][0])} to {pct(held['interval'][1])}): {held['verdict']}"
                 if held["measured"] is not None else f"{held['name']}: {held['verdict']}")
        for op, f in s["fits"].items():
            seeds = ", ".join(f"{v:.3f}" for v in f["per_seed"].values())
            lines.append(f"| {s['target_params'] / 1e6:.2f}M ({s['layers']} × {s['hidden']}) | {op} | "
                         f"{f['token_efficiency']:.3f} ± {f['error']:.3f} | {seeds} | "
                         f"{s['censored']} of {s['pairs']} | {shown if op == 'MSG' else '—'} | "
                         f"{s['cost']['runs_per_hour']:.0f} |")
    return lines


def render_whether_to_grow(result: dict) -> list[str]:
    """README.md: what η measured on proxies says, in one table."""
    lines = ["| proxy target | MSG (the plan's operator) | G_stack (control) |", "|---|---:|---:|"]
    for s in result["sizes"]:
        cells = [f"η = {s['fits'][op]['token_efficiency']:.2f} ± {s['fits'][op]['error']:.2f}" if op in s["fits"]
                 else "—" for op in ("MSG", "G_stack")]
        lines.append(f"| {s['target_params'] / 1e6:.2f}M, {s['steps']} steps, {len(s['seeds'])} seeds | "
                     f"{cells[0]} | {cells[1]} |")
    return lines


STORED_GROWTH = ["benchmarks/grow_vs_scratch.py", "--from", "benchmarks/results/grow_vs_scratch.json", "--json"]
REPORTS = {
    "fidelity": (["benchmarks/fidelity.py", "--json"], render_fidelity, True),
    "flm-sizing": (["benchmarks/flm_sizing.py", "--json"], render_flm_sizing, True),
    "korthikanti": (["benchmarks/layer_fidelity.py", "--korthikanti", "--json"], render_korthikanti, True),
    "growth-cases": (["benchmarks/growth_cases.py", "--json"], render_growth_cases, True),
    "planner-speed": (["benchmarks/planner_speed.py", "--json"], render_planner_speed, False),
    "growth-pairs": (STORED_GROWTH, render_growth_pairs, True),
    "whether-to-grow": (STORED_GROWTH, render_whether_to_grow, True),
}


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import os

    return f"{os.cpu_count()} × {cpu}, Python {platform.python_version()}"


def commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def table(name: str) -> list[str]:
    command, render, _ = REPORTS[name]
    out = subprocess.run([sys.executable, *command], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return render(json.loads(out))


def block(name: str, body: list[str]) -> str:
    command = " ".join(c for c in REPORTS[name][0] if c != "--json")
    provenance = f"*`python {command}` · {machine()} · {date.today().isoformat()} · commit {commit()}*"
    return "\n".join([f"<!-- report:{name} -->", provenance, "", *body, f"<!-- /report:{name} -->"])


def pattern(name: str) -> re.Pattern:
    return re.compile(rf"<!-- report:{re.escape(name)} -->\n(.*?)<!-- /report:{re.escape(name)} -->", re.S)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("names", nargs="*", help=f"which tables: {', '.join(REPORTS)} (default: all)")
    ap.add_argument("--check", action="store_true")
    ap.add_argument("--doc", type=Path, help="the document (default: each table's own, BENCHMARKS.md or README.md)")
    args = ap.parse_args()
    names = args.names or [n for n in REPORTS if REPORTS[n][2] or not args.check]
    unknown = [n for n in names if n not in REPORTS]
    if unknown:
        ap.error(f"no table {', '.join(unknown)}; the tables are {', '.join(REPORTS)}")
    texts: dict[Path, str] = {}
    stale = []
    for name in names:
        doc = args.doc or DOCS.get(name, DOC)
        text = texts.setdefault(doc, doc.read_text())
        found = pattern(name).search(text)
        if found is None:
            print(f"{doc.name} has no <!-- report:{name} --> block", file=sys.stderr)
            return 2
        body = table(name)
        committed = found.group(1).rstrip("\n").split("\n")[2:]   # the provenance line and the blank after it aside
        if args.check:
            if committed != body:
                stale.append((doc, name))
            continue
        texts[doc] = text[:found.start()] + block(name, body) + text[found.end():]
    if args.check:
        for doc, name in stale:
            print(f"{doc.name}'s {name} table differs from what `{' '.join(REPORTS[name][0])}` gives now; "
                  "run python benchmarks/report.py", file=sys.stderr)
        return 1 if stale else 0
    for doc, text in texts.items():
        doc.write_text(text)
    return 0

if __name__ == "__main__":
    raise SystemExit(main())
