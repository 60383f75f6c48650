"""Per-step cost of blending many sources: Megatron-LM's blend computed by the loader (runtime/data/loader.py
`blend`), against Megatron-LM's own compiled helper (megatron-core's build_blending_indices, the same
samples) and the per-sample Python loop the loader used before.

For each number of sources (weights drawn at random, then normalised), the loader blends consecutive
global batches of 2,304 samples from deep in a run (position 10^8, counts at their shares); the median
over the steps is the per-step cost every rank pays. Megatron's helper builds from sample 0, so it is
timed over the same number of samples and divided per step.

With `--train N`, N corpora of random byte ids (sizes drawn at random, each its own PREFIX.bin/.idx
with a manifest, written with the runtime's own writer) are put in one folder and FLM-101B's plan trains
on the folder at `--scale tiny` (one process, 6 steps a stage): it says whether the run finished, its
steps, time, and first and last loss (random ids: ln 256 ≈ 5.55 is all there is to learn).

    python benchmarks/data_blend.py [--sources 8,100,1000,10000] [--batch 2304] [--steps 20] [--train 1000]
        [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from runtime.data.indexed import ByteCodec, IndexedWriter, write_manifest
from runtime.data.loader import blend

ROOT = Path(__file__).resolve().parents[1]


def python_loop(w: np.ndarray, counts: np.ndarray, position: int, count: int) -> list[int]:
    """The loader's blend before: one Python max over the sources per sample."""
    wl, c, out = w.tolist(), counts.tolist(), []
    for j in range(count):
        i = max(position + j, 1)
        d = max(range(len(wl)), key=lambda s: wl[s] * i - c[s])
        out.append(d)
        c[d] += 1
    return out


def measure(sources: int, batch: int, steps: int, rng: np.random.Generator) -> dict:
    w = rng.random(sources)
    w /= w.sum()
    position = 10**8
    counts = np.floor(w * position).astype(np.int64)
    counts[np.argmax(w * position - counts)] += position - counts.sum()
    times = []
    for k in range(steps):
        t = time.perf_counter()
        _, _, counts = blend(w, counts, position + k * batch, batch)
        times.append(time.perf_counter() - t)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from megatron.core.datasets import helpers_cpp
    n = batch * steps
    index, number = np.zeros(n, dtype=np.int16 if sources < 32768 else np.int32), np.zeros(n, dtype=np.int64)
    t = time.perf_counter()
    helpers_cpp.build_blending_indices(index, number, w, sources, n, False)
    megatron = (time.perf_counter() - t) / steps
    loop_steps = 1 if sources >= 1000 else 3
    t = time.perf_counter()
    for _ in range(loop_steps):
        python_loop(w, counts, position, batch)
    loop = (time.perf_counter() - t) / loop_steps
    return {"sources": sources, "batch": batch, "steps": steps, "blend_ms_median": 1e3 * statistics.median(times),
            "blend_ms_max": 1e3 * max(times), "megatron_helper_ms": 1e3 * megatron, "python_loop_ms": 1e3 * loop}


def train_on_folder(sources: int) -> dict:
    """`sources` random byte corpora in one folder, and a tiny run of FLM-101B's plan with --data FOLDER."""
    rng = np.random.default_rng(1)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "corpora"
        folder.mkdir()
        for k in range(sources):
            n = int(rng.integers(2_000, 20_000))
            ids = rng.integers(1, 256, n, dtype=np.uint16)
            ids[-1] = ByteCodec.eod
            writer = IndexedWriter(folder / f"part-{k:05d}", np.uint16)
            writer.add(ids, np.array([n]))
            writer.finish()
            write_manifest(folder / f"part-{k:05d}", {"tokenizer": ByteCodec().describe(), "documents": 1,
                                                       "tokens": n, "dtype": "uint16", "sources": [{"kind": "random"}]})
        out = Path(tmp) / "run"
        t = time.perf_counter()
        r = subprocess.run([sys.executable, "-m", "flmplan.cli", "run", "examples/plans/flm101b_plan.json", "--scale",
                            "tiny", "--nproc", "1", "--steps", "6", "--data", str(folder), "--out", str(out),
                            "--log-every", "1"], cwd=ROOT, capture_output=True, text=True, timeout=1200)
        seconds = time.perf_counter() - t
        if r.returncode != 0:
            return {"sources": sources, "finished": False, "error": (r.stdout + r.stderr)[-1500:]}
        steps = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        steps = [s for s in steps if "loss" in s]
        return {"sources": sources, "finished": True, "steps": len(steps), "seconds": seconds,
                "first_loss": steps[0]["loss"], "last_loss": steps[-1]["loss"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sources", default="8,100,1000,10000")
    ap.add_argument("--batch", type=int, default=2304)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--train", type=int, default=0, help="also train on a folder of this many corpora")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    rows = [measure(int(s), args.batch, args.steps, rng) for s in args.sources.split(",")]
    trained = train_on_folder(args.train) if args.train else None
    if args.json:
        print(json.dumps({"rows": rows, "target_ms": 5.0, "trained": trained}, indent=1))
        return
    if trained:
        print(trained)
    for r in rows:
        print(f"{r['sources']:>6} sources: {r['blend_ms_median']:.2f} ms a step (max {r['blend_ms_max']:.2f}); "
              f"Megatron's helper {r['megatron_helper_ms']:.2f} ms; the old Python loop {r['python_loop_ms']:.0f} ms")


if __name__ == "__main__":
    main()
