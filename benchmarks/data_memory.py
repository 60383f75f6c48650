"""Memory flat in corpus size, and a loader no step can see.

Two byte-level corpora of random tokens, 10 MB and 2 GB of uint16 ids (Megatron-LM indexed datasets,
written with the runtime's own writer), each trained on by a tiny run: `flmplan run` of FLM-101B's
three-stage plan at `--scale tiny`, 12 steps a stage, on one process. The training process's peak
resident memory (ru_maxrss, which `metrics.jsonl` logs) is compared between the two corpora; so is
the loader this one replaced, side by side in the same run: it read the whole .bin on every rank and
widened it to int64 (`np.fromfile(path, np.uint16).astype(np.int64)`, runtime/data/corpus.py before the
indexed datasets), and built the whole epoch's permutation of sequences. The loader's own time per
step (`data_s`: what the step waits for; the next batch is read on a thread while a step computes) is
set against the step's (`step_s`), medians over each stage's steps after its first (which reads its
batch without one ahead).

    python benchmarks/data_memory.py [--small-mb 10] [--large-mb 2048] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from runtime.data.indexed import ByteCodec, IndexedWriter, paths, write_manifest  # noqa: E402

OLD_LOADER = """
import resource, sys, numpy as np
tokens = np.fromfile(sys.argv[1], dtype=np.uint16).astype(np.int64)
order = np.random.default_rng(0).permutation((len(tokens) - 1) // 64)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
"""


def write_corpus(prefix: Path, megabytes: float, seed: int = 0) -> int:
    """Random byte ids as uint16, documents of 1M tokens each ended by the end-of-document id."""
    rng = np.random.default_rng(seed)
    total = int(megabytes * 2**20) // 2
    writer = IndexedWriter(prefix, np.uint16)
    doc = 1 << 20
    for start in range(0, total, doc):
        n = min(doc, total - start)
        ids = rng.integers(1, 256, n, dtype=np.uint16)
        ids[-1] = ByteCodec.eod
        writer.add(ids, np.array([n]))
    writer.finish()
    write_manifest(prefix, {"tokenizer": ByteCodec().describe(), "documents": writer.documents,
                            "tokens": writer.tokens, "dtype": "uint16", "sources": [{"kind": "random"}]})
    return writer.tokens


def train(prefix: Path, out: Path) -> dict:
    r = subprocess.run([sys.executable, "-m", "flmplan.cli", "run", "examples/plans/flm101b_plan.json", "--scale",
                        "tiny", "--nproc", "1", "--steps", "12", "--data", str(prefix), "--out", str(out),
                        "--log-every", "1"],
                       cwd=ROOT, capture_output=True, text=True, timeout=600)
    if r.returncode != 0:
        raise SystemExit(r.stdout[-2000:] + r.stderr[-2000:])
    steps = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [s for s in steps if "step_s" in s]
    later = [s for k, s in enumerate(steps) if k and s["stage"] == steps[k - 1]["stage"]]
    return {"peak_rss_mib": max(s["memory_gib_per_gpu"] for s in steps) * 1024,
            "data_s_median": statistics.median(s["data_s"] for s in later),
            "step_s_median": statistics.median(s["step_s"] for s in later), "steps": len(steps)}


def old_loader(prefix: Path) -> float:
    r = subprocess.run([sys.executable, "-c", OLD_LOADER, str(paths(prefix)["bin"])], capture_output=True, text=True,
                       check=True)
    return int(r.stdout.strip()) / 2**20


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--small-mb", type=float, default=10)
    ap.add_argument("--large-mb", type=float, default=2048)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, mb in (("small", args.small_mb), ("large", args.large_mb)):
            prefix = Path(tmp) / name
            tokens = write_corpus(prefix, mb)
            run = train(prefix, Path(tmp) / f"run-{name}")
            rows[name] = {"corpus_mib": paths(prefix)["bin"].stat().st_size / 2**20, "tokens": tokens, **run,
                          "old_loader_peak_rss_mib": old_loader(prefix)}
            paths(prefix)["bin"].unlink()
    small, large = rows["small"], rows["large"]
    result = {"benchmark": "data_memory", "rows": rows,
              "rss_growth_mib": large["peak_rss_mib"] - small["peak_rss_mib"],
              "old_loader_rss_growth_mib": large["old_loader_peak_rss_mib"] - small["old_loader_peak_rss_mib"],
              "data_share_of_step": max(r["data_s_median"] / r["step_s_median"] for r in rows.values()),
              "cores": os.cpu_count(), "machine": platform.processor() or platform.machine(),
              "date": time.strftime("%Y-%m-%d")}
    if args.json:
        print(json.dumps(result, indent=1))
        return
    for name, r in rows.items():
        print(f"{name}: {r['corpus_mib']:,.0f} MiB of tokens; training process peak {r['peak_rss_mib']:,.0f} MiB "
              f"(old loader {r['old_loader_peak_rss_mib']:,.0f} MiB); loader {r['data_s_median'] * 1e3:.2f} ms of a "
              f"{r['step_s_median'] * 1e3:.1f} ms step")
    print(f"growth from {small['corpus_mib']:,.0f} to {large['corpus_mib']:,.0f} MiB: {result['rss_growth_mib']:+.0f} "
          f"MiB (old loader {result['old_loader_rss_growth_mib']:+,.0f} MiB); loader ≤ "
          f"{result['data_share_of_step']:.2%} of a step")


if __name__ == "__main__":
    main()
