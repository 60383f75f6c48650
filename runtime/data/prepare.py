"""`flmplan data prepare`: tokenize a corpus once into Megatron-LM's indexed dataset.

Inputs are read with Hugging Face `datasets` (text, JSON lines, parquet, or a dataset saved with
`save_to_disk`), streamed so that memory does not grow with the corpus. The tokenizer is a Hugging
Face `tokenizers` file, one trained on the corpus itself with its byte-level BPE trainer, or UTF-8
bytes (the default: nothing to download). Documents are encoded in batches by the tokenizer's own
`encode_batch` on all cores (its Rust thread pool), each ended by the end-of-document id, and
streamed into PREFIX.bin. Every few batches the point reached is recorded in PREFIX.progress.json,
so an interrupted run started again continues there; the final names appear only when the corpus is
whole (runtime/data/indexed.py).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from planner.errors import FlmplanError
from runtime.data.indexed import (
    ByteCodec,
    Codec,
    HFCodec,
    IndexedWriter,
    paths,
    token_dtype,
    tokenizer_threads,
    write_manifest,
)
from runtime.data.inputs import Input, batches, check_inputs, documents, find_inputs, read_ahead
from runtime.hooks import PREPARE_HOOKS, installed

EOD_TOKEN = "<|endoftext|>"        # the end-of-document token of a BPE trained here

# --train-tokenizer trains on about this much of the corpus by default (every k-th document): the
# trainer's memory grows with the text it sees.
TOKENIZER_SAMPLE_BYTES = 128 << 20


def train_tokenizer(texts: Iterator[str], vocab: int, out: Path) -> Path:
    """A byte-level BPE of `vocab` entries trained on the corpus with Hugging Face tokenizers' own
    trainer (GPT-2's scheme: bytes as the base alphabet, so any text encodes), `<|endoftext|>` as the
    end-of-document token."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab, special_tokens=[EOD_TOKEN], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer=trainer)
    tok.save(str(out))
    return out


def _fingerprint(inputs: list[Input], field: str, unit: str, tokenizer: str) -> str:
    parts = [(i.kind, [(str(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns) for f in i.files]) for i in inputs]
    return hashlib.sha256(json.dumps([parts, field, unit, tokenizer]).encode()).hexdigest()[:16]


def progress_of(progress_file: Path, fingerprint: str, log: Callable[[str], None]) -> dict | None:
    """The progress recorded by an earlier run of the same command on the same inputs, if any."""
    if not progress_file.is_file():
        return None
    record = json.loads(progress_file.read_text())
    if record.get("fingerprint") != fingerprint:
        return None
    log(f"resuming: {record['documents']:,} documents ({record['tokens']:,} tokens) were done")
    return record


def progress_bar(total: int):
    """A started rich bar over the input's characters, with the tokens/s so far."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    bar = Progress(TextColumn("tokenizing"), BarColumn(), TextColumn("{task.percentage:>3.0f}% of the input"),
                   TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), TimeRemainingColumn(), transient=True)
    task = bar.add_task("", total=total, rate="")
    bar.start()
    return bar, task


def encode(codec: Codec, batch: list[str], dtype: np.dtype) -> tuple[np.ndarray, np.ndarray]:
    """A batch of documents as (ids with an end-of-document token after each, each document's length)."""
    if isinstance(codec, HFCodec):
        ids = codec.encode_batch(batch)
        lengths = np.fromiter((len(d) + 1 for d in ids), dtype=np.int64, count=len(ids))
        if all(isinstance(d, list) for d in ids):          # one list, one conversion: the common case
            flat: list[int] = []
            for d in ids:
                flat += d
                flat.append(codec.eod)
            return np.array(flat, dtype=dtype), lengths
        eod = np.array([codec.eod], dtype=dtype)            # a long document's ids came as an array
        return np.concatenate([part for d in ids for part in (np.asarray(d, dtype=dtype), eod)]), lengths
    raw = [t.encode("utf-8") + b"\x00" for t in batch]
    lengths = np.fromiter(map(len, raw), dtype=np.int64, count=len(raw))
    return np.frombuffer(b"".join(raw), dtype=np.uint8), lengths


def record_progress(writer: IndexedWriter, progress_file: Path, fingerprint: str) -> None:
    """Flush what is written and record, atomically, how far it got: a killed run resumes there."""
    docs, nbytes = writer.sync()
    tmp = Path(f"{progress_file}.partial")
    tmp.write_text(json.dumps({"fingerprint": fingerprint, "documents": docs, "bin_bytes": nbytes,
                               "tokens": writer.tokens}))
    os.replace(tmp, progress_file)


def keep_tokenizer(codec: Codec, train_vocab: int | None, tok_partial: Path, kept: Path) -> Codec:
    """The tokenizer beside the corpus: the trained one moved into place, or a copy of the given one."""
    if train_vocab is not None:
        os.replace(tok_partial, kept)
        return HFCodec(kept, EOD_TOKEN)
    if isinstance(codec, HFCodec):
        shutil.copyfile(codec.file, kept)
    return codec


def manifest_record(codec: Codec, writer: IndexedWriter, dtype: np.dtype, unit: str, field: str, inputs: list,
                    seconds: float) -> dict:
    """What PREFIX.manifest.json says of the corpus: tokenizer, documents, tokens, sources."""
    return {"tokenizer": codec.describe(), "documents": writer.documents, "tokens": writer.tokens,
            "dtype": dtype.name, "text_unit": unit, "field": field,
            "sources": [{"kind": i.kind, "files": [str(p.resolve()) for p in i.files], "bytes": i.bytes}
                        for i in inputs],
            "tokenizing_s": round(seconds, 3),
            "threads": tokenizer_threads(),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


# Beyond every 64 batches, progress is also recorded after this much input or this long (a batch of
# long documents can hold tens of MB).
RECORD_BYTES = 64 << 20
RECORD_SECONDS = 30.0


class PrepareStopped(Exception):
    """SIGTERM or Ctrl-C: the documents so far are recorded, and the same command continues there."""

    def __init__(self, signum: int, documents: int, done: int, total: int) -> None:
        super().__init__(f"stopped after {documents:,} documents ({done / 2**20:,.0f} of {total / 2**20:,.0f} MiB); "
                         "the same command continues there")
        self.signum = signum


class _StopFlag:
    """SIGTERM and SIGINT only set a flag while preparing; the loop records its point and stops."""

    def __init__(self) -> None:
        import signal

        self.signum = 0
        self.previous = {}
        if threading.current_thread() is threading.main_thread():     # elsewhere signals stay as they are
            self.previous = {sig: signal.signal(sig, self._on) for sig in (signal.SIGTERM, signal.SIGINT)}

    def _on(self, signum, frame) -> None:
        self.signum = signum

    def restore(self) -> None:
        import signal

        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


def train_on_sample(inputs: list[Input], field: str, unit: str, vocab: int, sample_bytes: int, out: Path, done: bool,
             log: Callable[[str], None]) -> tuple[Codec, dict]:
    """A BPE trained on a systematic sample of the corpus (every k-th document, about `sample_bytes`),
    or the one a killed run trained already (`done`); and what the manifest records of the sample."""
    every = max(1, -(-sum(i.bytes for i in inputs) // sample_bytes))
    if not done:
        log(f"training a byte-level BPE of {vocab:,} entries on every {every}-th document of the corpus "
            f"(about {min(sample_bytes, sum(i.bytes for i in inputs)) / 2**20:,.0f} MiB; tokenizers' BpeTrainer)")
        train_tokenizer((part for text in documents(inputs, field, unit, every) for part in lines_of(text)), vocab, out)
    return HFCodec(out, EOD_TOKEN), {"bytes": sample_bytes, "every_nth_document": every}


# The trainer gets a long document in parts of about this many characters, cut at line ends: given a 50 MB
# document whole, its peak went from 1.2 GB to 4.6 GB; counted by parts, the words are the same but at a
# cut.
TRAIN_PART_CHARS = 1 << 20


def lines_of(text: str) -> Iterator[str]:
    """`text` in parts of about TRAIN_PART_CHARS, each ending at a newline where one lies in reach."""
    start = 0
    while len(text) - start > TRAIN_PART_CHARS:
        end = text.rfind("\n", start + 1, start + TRAIN_PART_CHARS)
        end = start + TRAIN_PART_CHARS if end < 0 else end + 1
        yield text[start:end]
        start = end
    yield text[start:]


def prepare(items: list[Path], out: Path, tokenizer: Path | None = None, train_vocab: int | None = None,
            field: str = "text", unit: str = "paragraph", eod_token: str | None = None, batch_docs: int = 512,
            log: Callable[[str], None] = print, progress: bool = True,
            tokenizer_sample: int = TOKENIZER_SAMPLE_BYTES, workers: int | None = None) -> dict:
    """Tokenize `items` into the indexed dataset `out` (PREFIX); returns its manifest. `workers`: the
    tokenizer's threads (all cores by default), with the reading on a thread of its own beside them."""
    if workers is not None:
        # Hugging Face tokenizers' Rayon pool reads this when it first starts (before any encode or training).
        os.environ["RAYON_RS_NUM_CPUS"] = str(workers)
    f = paths(out)
    if f["bin"].exists() or f["idx"].exists():
        raise FlmplanError(f"{out}.bin or {out}.idx exists already; give another --out, or remove them.")
    inputs = find_inputs(items)
    if not inputs:
        raise FlmplanError("No inputs given.")
    # The tokenizer, before any pass over the data.
    tok_partial = Path(f"{f['tokenizer']}.partial")
    if tokenizer is not None and train_vocab is not None:
        raise FlmplanError("Give --tokenizer or --train-tokenizer, not both.")
    codec: Codec = HFCodec(tokenizer, eod_token) if tokenizer is not None else ByteCodec()
    check_inputs(inputs, field, unit)
    out.parent.mkdir(parents=True, exist_ok=True)
    progress_file = Path(f"{out}.progress.json")
    tok_desc = str(tokenizer.resolve()) if tokenizer else f"train-bpe-{train_vocab}" if train_vocab else "bytes"
    fingerprint = _fingerprint(inputs, field, unit, tok_desc)
    resume = progress_of(progress_file, fingerprint, log)
    sample = None
    if train_vocab is not None:
        codec, sample = train_on_sample(inputs, field, unit, train_vocab, tokenizer_sample, tok_partial,
                                 bool(resume and tok_partial.is_file()), log)
    dtype = token_dtype(codec.vocab)
    writer = IndexedWriter(out, dtype, (resume["documents"], resume["bin_bytes"]) if resume else None)
    done_chars = [0]
    total = sum(i.bytes for i in inputs)
    bar, task = progress_bar(total) if progress else (None, None)
    start, tokens_start = time.perf_counter(), writer.tokens
    hooks = installed(PREPARE_HOOKS)

    stop = _StopFlag()
    recorded = (time.monotonic(), 0)
    try:
        for n, batch in enumerate(read_ahead(batches(inputs, field, unit, batch_docs, skip=writer.documents))):
            writer.add(*encode(codec, batch, dtype))
            done_chars[0] += sum(map(len, batch))
            # A recorded point every 64 batches, RECORD_BYTES of input or RECORD_SECONDS, whichever comes
            # first: a kill loses at most that much work.
            if (n % 64 == 63 or done_chars[0] - recorded[1] >= RECORD_BYTES
                    or time.monotonic() - recorded[0] >= RECORD_SECONDS or stop.signum):
                record_progress(writer, progress_file, fingerprint)
                recorded = (time.monotonic(), done_chars[0])
                for hook in hooks:
                    hook(n + 1)
            if stop.signum:
                raise PrepareStopped(stop.signum, writer.documents, done_chars[0], total)
            if bar is not None:
                rate = (writer.tokens - tokens_start) / max(1e-9, time.perf_counter() - start)
                bar.update(task, completed=min(total, done_chars[0]), rate=f"{rate:,.0f} tokens/s")
    except UnicodeDecodeError as err:
        writer.abandon()
        progress_file.unlink(missing_ok=True)
        raise FlmplanError(f"An input is not UTF-8 text ({err.reason} at byte {err.start} of a block); nothing "
                           "was written.") from None
    finally:
        stop.restore()
        if bar is not None:
            bar.stop()
    if writer.documents == 0:
        writer.abandon()
        raise FlmplanError("The inputs hold no documents; nothing was written.")
    seconds = time.perf_counter() - start
    writer.finish()
    codec = keep_tokenizer(codec, train_vocab, tok_partial, f["tokenizer"])
    record = manifest_record(codec, writer, dtype, unit, field, inputs, seconds)
    if sample is not None:
        record["tokenizer_sample"] = sample
    write_manifest(out, record)
    progress_file.unlink(missing_ok=True)
    return record
