"""`flmplan data import`: a corpus another tool prepared (Megatron-LM's `tools/preprocess_data.py` writes
the same PREFIX.bin and PREFIX.idx) adopted as a prepared corpus, after checking it."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import numpy as np

from planner.errors import FlmplanError
from runtime.data.indexed import ByteCodec, Codec, HFCodec, IndexedTokens, paths, write_manifest

# Ids checked against the tokenizer a chunk of the .bin at a time: memory flat in the corpus.
IMPORT_CHUNK_TOKENS = 1 << 24


def import_corpus(prefix: Path, tokenizer: Path | None, eod_token: str | None = None) -> dict:
    """Adopt a corpus another tool prepared (Megatron-LM's `tools/preprocess_data.py` writes the same
    PREFIX.bin and PREFIX.idx): check the .bin against its .idx and every id against the tokenizer,
    then write the manifest and keep the tokenizer beside it, so that it plans, runs and exports as a
    corpus of `flmplan data prepare` does. `tokenizer` None: UTF-8 bytes."""
    f = paths(prefix)
    if f["manifest"].exists():
        raise FlmplanError(f"{prefix} has a manifest already ({f['manifest'].name}): it is a prepared corpus.")
    data = IndexedTokens.open(prefix)
    codec: Codec = HFCodec(tokenizer, eod_token) if tokenizer is not None else ByteCodec()
    with open(f["bin"], "rb") as fh:
        while chunk := fh.read(IMPORT_CHUNK_TOKENS * data.dtype.itemsize):
            ids = np.frombuffer(chunk, dtype=data.dtype)
            bad = ids[(ids >= codec.vocab) | (ids < 0)]
            if bad.size:
                raise FlmplanError(f"{f['bin']} holds token id {int(bad[0])}, outside the {codec.vocab:,} entries of "
                                   f"{tokenizer or 'UTF-8 bytes'}: the corpus was made with another tokenizer; "
                                   "give that one.")
    if isinstance(codec, HFCodec):
        tmp = Path(f"{f['tokenizer']}.partial")
        shutil.copyfile(codec.file, tmp)
        os.replace(tmp, f["tokenizer"])
    record = {"tokenizer": codec.describe(), "documents": data.documents, "tokens": data.n_tokens,
              "dtype": data.dtype.name,
              "imported": {"files": [str(f["bin"].resolve()), str(f["idx"].resolve())],
                           "tokenizer": str(Path(tokenizer).resolve()) if tokenizer else "bytes",
                           "note": "prepared by another tool (Megatron-LM's indexed dataset); ids checked against "
                                   "the tokenizer by `flmplan data import`"},
              "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    write_manifest(prefix, record)
    return record
