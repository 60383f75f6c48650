"""A prepare killed at a random point resumes to the same bytes, and how much work the kill cost.

The corpus is `--mb` of real text on this machine (benchmarks/data_prepare.py's `--real`), the
tokenizer a byte-level BPE trained on its first 2,000 documents. One `flmplan data prepare` runs
through; another is killed (SIGKILL, nothing recorded on the way out) at a time drawn uniformly from
the middle of the first run's length, then the same command is started again. Reported: where the
kill fell (input bytes, from the elapsed time and the first run's rate), where the last recorded point
was (PREFIX.progress.json: the input bytes of the documents it holds), the difference (the work the
kill lost: at most 64 MiB of input or 30 s by the recording rule), and whether the resumed files equal
the uninterrupted run's byte for byte.

    python benchmarks/data_resume.py [--mb 200] [--seed 0] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from data_prepare import texts_of, write_real_corpus  # noqa: E402

from runtime.data.prepare import train_tokenizer  # noqa: E402


def command(corpus: Path, tok: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "flmplan.cli", "data", "prepare", str(corpus), "--tokenizer", str(tok), "--out",
            str(out), "--json"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=float, default=200.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp:
        folder = Path(tmp)
        corpus = folder / "corpus.jsonl"
        about = write_real_corpus(corpus, args.mb)
        first = [t for chunk in texts_of(corpus, 2000) for t in chunk][:2000]
        train_tokenizer(iter(first), 66_000, folder / "tok.json")
        sizes = [len(t.encode()) for chunk in texts_of(corpus, 4096) for t in chunk]
        start = time.perf_counter()
        subprocess.run(command(corpus, folder / "tok.json", folder / "whole"), cwd=ROOT, check=True,
                       capture_output=True)
        whole_s = time.perf_counter() - start
        at = random.Random(args.seed).uniform(0.2, 0.8) * whole_s
        proc = subprocess.Popen(command(corpus, folder / "tok.json", folder / "cut"), cwd=ROOT,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(at)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        progress = folder / "cut.progress.json"
        recorded = json.loads(progress.read_text())["documents"] if progress.is_file() else 0
        start = time.perf_counter()
        r = subprocess.run(command(corpus, folder / "tok.json", folder / "cut"), cwd=ROOT, capture_output=True,
                           text=True)
        resumed_s = time.perf_counter() - start
        same = all((folder / f"whole.{k}").read_bytes() == (folder / f"cut.{k}").read_bytes() for k in ("bin", "idx"))
    killed_mb = about["bytes"] * at / whole_s / 1e6
    recorded_mb = sum(sizes[:recorded]) / 1e6
    result = {"corpus": about, "whole_s": whole_s, "killed_after_s": at, "killed_at_input_mb": killed_mb,
              "recorded_documents": recorded, "recorded_at_input_mb": recorded_mb,
              "lost_input_mb": killed_mb - recorded_mb, "resumed_s": resumed_s, "resumed_exit": r.returncode,
              "byte_identical": same, "date": time.strftime("%Y-%m-%d")}
    if args.json:
        print(json.dumps(result, indent=1))
        return
    print(f"{about['bytes'] / 1e6:,.0f} MB: killed after {at:.1f} s of {whole_s:.1f} s "
          f"(≈ {killed_mb:,.0f} MB of input); recorded point at {recorded_mb:,.0f} MB ({recorded:,} documents): "
          f"≈ {killed_mb - recorded_mb:,.0f} MB lost; resumed in {resumed_s:.1f} s; byte-identical: {same}")


if __name__ == "__main__":
    main()
