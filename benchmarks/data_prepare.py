"""Tokenizing speed and memory: `flmplan data prepare` against Hugging Face tokenizers' own
encode_batch_fast over the same text, on the same cores.

The corpus is either bilingual synthetic text (English-like and Chinese, as FLM-101B's was; the
default, `--mb`) or, with `--real MB`, real text on this machine: every source, header and document
file (.py, .pyi, .c, .h, .cpp, .md, .rst, .txt, .html) under the Python installation, its packages,
/usr/include, /usr/share and /usr/lib, one document each, duplicates (by content) dropped, until MB of
text. The tokenizer is a byte-level BPE trained with tokenizers' trainer on the first 2,000 documents.

Measured, each `prepare` in a process of its own (its peak resident memory is the process's own):
- the bare loop: the corpus streamed from its JSON lines in batches, encode_batch_fast, ids counted;
  tokenizers' thread pool on every core;
- `flmplan data prepare --workers 1` and `--workers 2` (the tokenizer's threads; the reading on a
  thread beside them): tokens per second of the tokenizing loop and of the whole command, peak memory;
- with `--long-doc-mb N`: the corpus with one N MB document added, prepared again (peak memory);
- with `--train-tokenizer`: `data prepare --train-tokenizer VOCAB` on the corpus (its default sample
  of 128 MiB), time and peak memory.

    python benchmarks/data_prepare.py [--mb 40 | --real 1000] [--vocab 66000] [--workers 1,2]
        [--long-doc-mb 50] [--train-tokenizer] [--json]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

REAL_SUFFIXES = {".py", ".pyi", ".c", ".h", ".cpp", ".hpp", ".md", ".rst", ".txt", ".html"}
# Runs the command line in this process and reports its peak resident memory (KiB) on its last line: the
# address space's high-water mark (VmHWM), which starts afresh at exec; ru_maxrss would carry the forking
# parent's over.
PEAK = ("import sys\nfrom flmplan.cli import app\nsys.argv = ['flmplan', *sys.argv[1:]]\n"
        "try:\n    app()\nexcept SystemExit as e:\n    code = e.code\nelse:\n    code = 0\n"
        "hwm = next(l for l in open('/proc/self/status') if l.startswith('VmHWM'))\n"
        "print('peak_kib', hwm.split()[1], file=sys.stderr)\nsys.exit(code)\n")


def write_corpus(path: Path, mb: float, seed: int = 0) -> dict:
    """Synthetic bilingual documents as JSON lines."""
    rng = random.Random(seed)
    syllables = [c + v for c in "bcdfghjklmnprstvwz" for v in ("a", "e", "i", "o", "u", "ai", "ou", "ea")]
    docs, size = 0, 0
    with open(path, "w", encoding="utf-8") as f:
        while size < mb * 1e6:
            if docs % 2:
                t = " ".join("".join(rng.choice(syllables) for _ in range(rng.randint(1, 4))) for _ in range(300)) + "."
            else:
                t = "，".join("".join(chr(rng.randint(0x4E00, 0x62FF)) for _ in range(rng.randint(1, 3)))
                             for _ in range(200)) + "。"
            f.write(json.dumps({"text": t}, ensure_ascii=False) + "\n")
            docs, size = docs + 1, size + len(t.encode())
    return {"kind": "synthetic bilingual text", "documents": docs, "bytes": size}


def write_real_corpus(path: Path, mb: float) -> dict:
    """Real text found on this machine, one file a document, until `mb` MB."""
    roots = [Path(sysconfig.get_paths()["stdlib"]), Path(sysconfig.get_paths()["purelib"]), Path(sys.prefix),
             Path("/root/.pyenv"), Path("/usr/include"), Path("/usr/share"), Path("/usr/lib")]
    seen, docs, size = set(), 0, 0
    with open(path, "w", encoding="utf-8") as f:
        for root in roots:
            for p in sorted(root.rglob("*")) if root.is_dir() else []:
                if size >= mb * 1e6:
                    break
                if p.suffix not in REAL_SUFFIXES or not p.is_file() or p.is_symlink():
                    continue
                try:
                    raw = p.read_bytes()
                    text = raw.decode("utf-8")
                except (OSError, UnicodeDecodeError):
                    continue
                digest = hashlib.sha1(raw).digest()
                if not text.strip() or digest in seen:
                    continue
                seen.add(digest)
                f.write(json.dumps({"text": text}, ensure_ascii=False) + "\n")
                docs, size = docs + 1, size + len(raw)
    return {"kind": "real text on this machine: Python sources and documentation of its installation and "
                    "packages, C headers, /usr/share and /usr/lib documents (one file a document, duplicates dropped)",
            "documents": docs, "bytes": size}


def texts_of(path: Path, batch: int):
    """The corpus's texts, `batch` at a time, streamed."""
    chunk = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            chunk.append(json.loads(line)["text"])
            if len(chunk) == batch:
                yield chunk
                chunk = []
    if chunk:
        yield chunk


def bare_loop(corpus: Path, tok_file: Path, batch: int) -> dict:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tok_file))
    start, tokens = time.perf_counter(), 0
    for chunk in texts_of(corpus, batch):
        tokens += sum(len(e.ids) for e in tok.encode_batch_fast(chunk, add_special_tokens=False))
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "tokens": tokens, "tokens_per_s": tokens / seconds}


def run_prepare(args: list[str], out: Path) -> dict:
    """`flmplan data prepare ARGS --out OUT --json` in a process of its own: its manifest and peak memory."""
    start = time.perf_counter()
    r = subprocess.run([sys.executable, "-c", PEAK, "data", "prepare", *args, "--out", str(out), "--json"],
                       cwd=ROOT, capture_output=True, text=True)
    whole = time.perf_counter() - start
    if r.returncode != 0:
        raise SystemExit(r.stderr[-2000:])
    man = json.loads(r.stdout)
    peak = int(r.stderr.strip().splitlines()[-1].split()[1]) * 1024
    tokens = man["tokens"] - man["documents"]                 # end-of-document ids aside
    return {"tokens": tokens, "seconds": man["tokenizing_s"], "tokens_per_s": tokens / man["tokenizing_s"],
            "whole_command_s": whole, "peak_rss_mb": peak / 1e6}


def measure(args, folder: Path) -> dict:
    from runtime.data.prepare import train_tokenizer

    corpus = folder / "corpus.jsonl"
    about = write_real_corpus(corpus, args.real) if args.real else write_corpus(corpus, args.mb)
    first = [t for chunk in texts_of(corpus, 2000) for t in chunk][:2000]
    train_tokenizer(iter(first), args.vocab, folder / "tok.json")
    del first
    result = {"corpus": about, "vocab": args.vocab, "cores": os.cpu_count(), "batch": args.batch,
              "bare_encode_batch_fast": bare_loop(corpus, folder / "tok.json", args.batch), "prepare": {}}
    for w in (int(x) for x in args.workers.split(",")):
        result["prepare"][str(w)] = run_prepare([str(corpus), "--tokenizer", str(folder / "tok.json"), "--workers",
                                                 str(w), "--batch-docs", str(args.batch)], folder / f"w{w}")
    bare = result["bare_encode_batch_fast"]["tokens_per_s"]
    for r in result["prepare"].values():
        r["vs_bare"] = r["tokens_per_s"] / bare
    if len(result["prepare"]) > 1:
        rates = [r["tokens_per_s"] for r in result["prepare"].values()]
        result["speedup_first_to_last_workers"] = rates[-1] / rates[0]
    if args.long_doc_mb:
        with open(corpus, "a", encoding="utf-8") as f:
            f.write(json.dumps({"text": ("a long document of one line after another\n" * 10**6)[:int(
                args.long_doc_mb * 1e6)]}) + "\n")
        result["with_long_document"] = {"mb": args.long_doc_mb, **run_prepare(
            [str(corpus), "--tokenizer", str(folder / "tok.json"), "--batch-docs", str(args.batch)], folder / "long")}
    if args.train_tokenizer:
        result["train_tokenizer"] = run_prepare([str(corpus), "--train-tokenizer", str(args.vocab)], folder / "trained")
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=float, default=40.0, help="synthetic corpus size in MB of text")
    ap.add_argument("--real", type=float, default=0.0, help="instead: MB of real text found on this machine")
    ap.add_argument("--vocab", type=int, default=66_000)
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--workers", default="1,2")
    ap.add_argument("--long-doc-mb", type=float, default=0.0)
    ap.add_argument("--train-tokenizer", action="store_true")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp:
        result = measure(args, Path(tmp))
    result["date"] = time.strftime("%Y-%m-%d")
    if args.json:
        print(json.dumps(result, indent=1))
        return
    c = result["corpus"]
    print(f"{c['bytes'] / 1e6:,.0f} MB, {c['documents']:,} documents ({c['kind']}); BPE of {args.vocab:,}; "
          f"{result['cores']} cores")
    print(f"  bare encode_batch_fast loop   {result['bare_encode_batch_fast']['tokens_per_s']:>12,.0f} tokens/s")
    for w, r in result["prepare"].items():
        print(f"  prepare --workers {w:<11s} {r['tokens_per_s']:>12,.0f} tokens/s ({r['vs_bare']:.2f}× bare), "
              f"whole command {r['whole_command_s']:.0f} s, peak {r['peak_rss_mb']:,.0f} MB")
    for key in ("with_long_document", "train_tokenizer"):
        if key in result:
            r = result[key]
            print(f"  {key.replace('_', ' '):29s} {r['whole_command_s']:.0f} s, peak {r['peak_rss_mb']:,.0f} MB")


if __name__ == "__main__":
    main()
