"""Tokenizing speed: `flmplan data prepare` against Hugging Face tokenizers' own encode_batch over the
same text, on the same cores, in one run.

The corpus is bilingual (English-like and Chinese, as FLM-101B's was) JSON lines written here; the
tokenizer is a byte-level BPE trained on it with tokenizers' trainer. The baseline holds every text in
memory and calls `encode_batch` (and `encode_batch_fast`, which prepare uses) in batches of the same
size; prepare streams the file through `datasets`, tokenizes, and writes the indexed dataset. Two
figures for prepare: its tokenizing loop (from the first batch read to the last written, what its
manifest records as `tokenizing_s`: the rate at corpus scale), and the whole command (with its
start-up: importing datasets, which imports torch, and checking every input's first document, about
2.5 s here whatever the corpus).

    python benchmarks/data_prepare.py [--mb 40] [--vocab 66000] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from runtime.data.prepare import prepare, train_tokenizer


def write_corpus(path: Path, mb: float, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    syllables = [c + v for c in "bcdfghjklmnprstvwz" for v in ("a", "e", "i", "o", "u", "ai", "ou", "ea")]
    texts, size = [], 0
    while size < mb * 1e6:
        if len(texts) % 2:
            t = " ".join("".join(rng.choice(syllables) for _ in range(rng.randint(1, 4))) for _ in range(300)) + "."
        else:
            t = "，".join("".join(chr(rng.randint(0x4E00, 0x62FF)) for _ in range(rng.randint(1, 3)))
                         for _ in range(200)) + "。"
        texts.append(t)
        size += len(t.encode())
    with open(path, "w", encoding="utf-8") as f:
        for t in texts:
            f.write(json.dumps({"text": t}, ensure_ascii=False) + "\n")
    return texts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=float, default=40.0, help="corpus size in MB of text")
    ap.add_argument("--vocab", type=int, default=66_000)
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    from tokenizers import Tokenizer

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        texts = write_corpus(folder / "corpus.jsonl", args.mb)
        text_bytes = sum(len(t.encode()) for t in texts)
        train_tokenizer(iter(texts[:2000]), args.vocab, folder / "tok.json")
        tok = Tokenizer.from_file(str(folder / "tok.json"))
        rows = {}
        for name in ("encode_batch", "encode_batch_fast"):
            encode = getattr(tok, name)
            start, tokens = time.perf_counter(), 0
            for i in range(0, len(texts), args.batch):
                tokens += sum(len(e.ids) for e in encode(texts[i:i + args.batch], add_special_tokens=False))
            rows[name] = {"seconds": time.perf_counter() - start, "tokens": tokens}
        start = time.perf_counter()
        man = prepare([folder / "corpus.jsonl"], folder / "out", tokenizer=folder / "tok.json",
                      batch_docs=args.batch, log=lambda _: None, progress=False)
        text_tokens = man["tokens"] - man["documents"]          # end-of-document ids aside
        rows["flmplan data prepare"] = {"seconds": man["tokenizing_s"], "tokens": text_tokens}
        rows["flmplan data prepare, whole command"] = {"seconds": time.perf_counter() - start, "tokens": text_tokens}
    for r in rows.values():
        r["tokens_per_s"] = r["tokens"] / r["seconds"]
        r["gb_per_hour"] = text_bytes / r["seconds"] * 3600 / 1e9
    ours = rows["flmplan data prepare"]["tokens_per_s"]
    result = {"benchmark": "data_prepare", "text_mb": text_bytes / 1e6, "documents": len(texts), "vocab": args.vocab,
              "cores": os.cpu_count(), "machine": platform.processor() or platform.machine(), "rows": rows,
              "prepare_vs_encode_batch": ours / rows["encode_batch"]["tokens_per_s"],
              "prepare_vs_encode_batch_fast": ours / rows["encode_batch_fast"]["tokens_per_s"],
              "whole_command_vs_encode_batch": rows["flmplan data prepare, whole command"]["tokens_per_s"]
              / rows["encode_batch"]["tokens_per_s"],
              "date": time.strftime("%Y-%m-%d")}
    if args.json:
        print(json.dumps(result, indent=1))
        return
    print(f"{text_bytes / 1e6:.1f} MB of bilingual text, {len(texts):,} documents, BPE of {args.vocab:,}, "
          f"{os.cpu_count()} cores")
    for name, r in rows.items():
        print(f"  {name:36s} {r['tokens_per_s']:>12,.0f} tokens/s  {r['gb_per_hour']:6.2f} GB/h  "
              f"({r['seconds']:.1f} s)")
    print(f"prepare / encode_batch = {result['prepare_vs_encode_batch']:.2f} (whole command "
          f"{result['whole_command_vs_encode_batch']:.2f}), prepare / encode_batch_fast = "
          f"{result['prepare_vs_encode_batch_fast']:.2f}")


if __name__ == "__main__":
    main()
