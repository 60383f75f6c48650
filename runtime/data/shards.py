"""One corpus per input file, so that machines can each take a share, and a corpus file that names them.

`flmplan data prepare INPUTS --out FOLDER --per-input [--share K/N]`: the inputs' files, in the order
`find_inputs` gives them (by format, then by path), are numbered; file i is prepared into
FOLDER/shard-{i:05d} (Megatron-LM's PREFIX.bin + PREFIX.idx, with its manifest and tokenizer) by the
machine whose share K is i mod N. Every shard is one `prepare` with its own fine resume; a finished one
(its manifest written) is passed over, so the same command continues a stopped share. At the end
FOLDER/corpus.json names every finished shard with its tokens: a mixture file (`--data
FOLDER/corpus.json`, or `--data FOLDER`) in which each shard weighs its tokens, the plain union.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

from planner.errors import FlmplanError
from runtime.data.indexed import paths
from runtime.data.inputs import find_inputs
from runtime.data.prepare import EOD_TOKEN, TOKENIZER_SAMPLE_BYTES, prepare, train_on_sample

CORPUS_FILE = "corpus.json"


def parse_share(text: str) -> tuple[int, int]:
    """"K/N" → (K, N): this machine takes the files i with i mod N = K."""
    try:
        k, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise FlmplanError(f"--share takes K/N, this machine's share K of N (0/4 … 3/4); got {text!r}.") from None
    if not 0 <= k < n:
        raise FlmplanError(f"--share {text}: K must be between 0 and N − 1.")
    return k, n


def prepare_shards(items: list[Path], folder: Path, share: tuple[int, int] = (0, 1), tokenizer: Path | None = None,
                   train_vocab: int | None = None, field: str = "text", unit: str = "paragraph",
                   tokenizer_sample: int = TOKENIZER_SAMPLE_BYTES, eod_token: str | None = None,
                   log: Callable[[str], None] = print, **options) -> dict:
    """Prepare this share's files, one corpus each, then write FOLDER/corpus.json over every finished
    shard; returns it with what this call did. `options` go to each shard's `prepare` (batch_docs,
    progress, workers)."""
    inputs = find_inputs(items)
    files = [f for inp in inputs for f in inp.files]
    k, n = share
    if train_vocab is not None and n > 1:
        raise FlmplanError("Shards share one tokenizer: train it once without --share (--train-tokenizer with "
                           "--per-input on one machine), then give every share --tokenizer FOLDER/tokenizer.json.")
    folder.mkdir(parents=True, exist_ok=True)
    if train_vocab is not None:
        kept = folder / "tokenizer.json"
        if not kept.is_file():
            partial = folder / "tokenizer.json.partial"
            train_on_sample(inputs, field, unit, train_vocab, tokenizer_sample, partial, False, log)
            os.replace(partial, kept)
        tokenizer, eod_token = kept, EOD_TOKEN
    done, skipped = [], []
    for i, f in enumerate(files):
        if i % n != k:
            continue
        prefix = folder / f"shard-{i:05d}"
        if paths(prefix)["manifest"].is_file():
            skipped.append(prefix.name)
            continue
        log(f"shard {i + 1} of {len(files)}: {f}")
        prepare([f], prefix, tokenizer=tokenizer, field=field, unit=unit, eod_token=eod_token, log=log, **options)
        done.append(prefix.name)
    return {**write_corpus_file(folder), "prepared": done, "already_done": skipped, "share": f"{k}/{n}",
            "files": len(files)}


def write_corpus_file(folder: Path) -> dict:
    """FOLDER/corpus.json: every finished shard in the folder and its tokens, as a mixture file."""
    shards = {}
    for manifest in sorted(folder.glob("shard-*.manifest.json")):
        record = json.loads(manifest.read_text())
        shards[manifest.name.removesuffix(".manifest.json")] = record["tokens"]
    tmp = folder / f"{CORPUS_FILE}.partial"
    tmp.write_text(json.dumps(shards, indent=1) + "\n")
    os.replace(tmp, folder / CORPUS_FILE)
    return {"corpus": str(folder / CORPUS_FILE), "shards": len(shards), "tokens": sum(shards.values())}
