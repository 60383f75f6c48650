"""Training data: prepared corpora (Megatron-LM indexed datasets), blended, read memory-mapped.

`--data` takes prepared corpora (`flmplan data prepare` → PREFIX.bin + PREFIX.idx), each with an
optional weight (`0.6:en 0.4:zh`), or text files and folders, which are tokenized as UTF-8 bytes into
the run folder first (each file one document). With no `--data`, the text is the Python standard
library's own sources, which every machine with Python has, as bytes: nothing is downloaded.

Each source's token stream (documents one after another, each ended by the end-of-document id) is
cut into sequences of seq + 1 tokens, which are visited in a seeded pseudo-random permutation per
epoch: a Feistel network over the sequence numbers with cycle-walking, so no permutation array
exists and memory does not grow with the corpus (litdata and Megatron shuffle blocks or keep a
memory-mapped index; a keyed bijection needs neither). Sources are blended as Megatron-LM's
BlendedDataset does (helpers.cpp build_blending_indices: each sample goes to the source furthest
behind its weight), so the mixture is deterministic. The global order depends on the position only,
never on the layout: each data-parallel rank takes its slice of the same global batch and reads just
those rows. The sampler's state (position, and the samples drawn per source) is all a checkpoint needs.
"""

from __future__ import annotations

import functools
import hashlib
import os
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from planner.errors import FlmplanError
from runtime.corpus import (
    BYTE_EOD,
    ByteCodec,
    Codec,
    HFCodec,
    IndexedTokens,
    IndexedWriter,
    describe,
    paths,
    prefix_of,
    token_dtype,
    write_manifest,
)

BYTE_VOCAB = ByteCodec.vocab
BUILTIN = "builtin"
# A run folder keeps what it trained on: the corpus's record and a copy of its tokenizer, so that
# `flmplan eval` (and an export) read the run's text with the run's own tokenizer.
RUN_DATA_FILE = "data.json"
RUN_TOKENIZER_FILE = "tokenizer.json"


def stdlib_text_files(limit_bytes: int = 8 << 20) -> list[Path]:
    """The standard library's .py files, in a fixed order, up to about limit_bytes."""
    root = Path(os.__file__).parent
    files, total = [], 0
    for path in sorted(root.glob("*.py")):
        files.append(path)
        total += path.stat().st_size
        if total >= limit_bytes:
            break
    return files


# --- which data ----------------------------------------------------------------------------------
@dataclass
class DataSpec:
    """One --data item: a prepared corpus (prefix) or text files, with an optional weight."""

    weight: float | None
    prefix: Path | None = None
    files: list[Path] = field(default_factory=list)
    text: str = ""


def parse_specs(items: list[str] | None) -> list[DataSpec]:
    """--data items → sources. Refuses, in one sentence: a path that does not exist, a folder with no
    files, a weight ≤ 0, weights on some sources only, and text that is not UTF-8 (checked here, before
    any process starts)."""
    if not items:
        files = stdlib_text_files()
        return [DataSpec(None, files=files, text=f"{BUILTIN}: Python {os.sys.version.split()[0]} standard library "
                                                f"({len(files)} files, as bytes)")]
    specs: list[DataSpec] = []
    text_files: list[Path] = []
    for item in map(str, items):
        weight, path = None, item
        head, sep, rest = item.partition(":")
        if sep and rest:
            try:
                weight = float(head)
            except ValueError:
                weight = None
            else:
                path = rest
                if not weight > 0:
                    raise FlmplanError(f"--data {item}: a mixture weight must be above 0.")
        prefix = prefix_of(path)
        if prefix is not None:
            specs.append(DataSpec(weight, prefix=prefix, text=str(prefix)))
            continue
        p = Path(path)
        if p.suffix == ".bin":
            raise FlmplanError(f"--data {p} has no {p.with_suffix('.idx').name} beside it: flmplan reads Megatron-LM "
                               "indexed datasets (PREFIX.bin + PREFIX.idx); make one with `flmplan data prepare`.")
        if not p.exists():
            raise FlmplanError(f"--data {p} does not exist.")
        found = sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p]
        if not found:
            raise FlmplanError(f"--data {p} is a folder with no files in it.")
        if weight is not None:
            raise FlmplanError(f"--data {item}: weights are for prepared corpora; prepare the text first "
                               "(`flmplan data prepare`).")
        text_files += found
    if text_files:
        check_text(text_files)
        specs.append(DataSpec(None, files=text_files, text=", ".join(str(f) for f in text_files[:3])
                              + (f" and {len(text_files) - 3} more" if len(text_files) > 3 else "") + " (as bytes)"))
    weighted = [s.weight is not None for s in specs]
    if any(weighted) and not all(weighted):
        raise FlmplanError("--data gives weights to some sources and not others; weigh all of them "
                           "(0.6:en 0.4:zh) or none (then each weighs its tokens).")
    return specs


def check_text(files: list[Path]) -> None:
    """Text files as bytes: each must be UTF-8, and together they must hold some text."""
    total = 0
    for f in files:
        data = f.read_bytes()
        total += len(data)
        try:
            data.decode("utf-8")
        except UnicodeDecodeError as err:
            raise FlmplanError(f"--data {f} is not UTF-8 text (byte {err.start} is not); give UTF-8 text files, or "
                               "a prepared corpus (`flmplan data prepare`).") from None
    if not total:
        raise FlmplanError(f"--data {', '.join(map(str, files[:3]))} holds no text (0 bytes).")


def cache_folder() -> Path:
    """Where text given as files is kept as byte-level corpora: $FLMPLAN_CACHE, else ~/.cache/flmplan."""
    return Path(os.environ.get("FLMPLAN_CACHE") or Path.home() / ".cache" / "flmplan") / "data"


def prepare_bytes(files: list[Path], folder: Path | None = None) -> Path:
    """Text files as a byte-level indexed dataset (each file one document ended by NUL), named by what
    went in, so a second call (a resumed run, another rank) finds it made. Written under a name of its
    own and renamed into place, so processes that prepare it at once never see each other's halves."""
    folder = folder or cache_folder()
    key = hashlib.sha256("\n".join(f"{f.resolve()}:{f.stat().st_size}:{f.stat().st_mtime_ns}"
                                   for f in files).encode()).hexdigest()[:16]
    prefix = folder / f"bytes-{key}"
    if paths(prefix)["manifest"].is_file():
        return prefix
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".bytes-{key}-{os.getpid()}-{os.urandom(4).hex()}"
    writer = IndexedWriter(tmp, token_dtype(BYTE_VOCAB))
    for f in files:
        data = np.frombuffer(f.read_bytes() + bytes([BYTE_EOD]), dtype=np.uint8)
        writer.add(data, np.array([len(data)]))
    writer.finish()
    write_manifest(tmp, {"tokenizer": ByteCodec().describe(), "documents": writer.documents,
                         "tokens": writer.tokens, "dtype": "uint16",
                         "sources": [{"path": str(f.resolve()), "format": "text", "bytes": f.stat().st_size}
                                     for f in files]})
    for kind in ("bin", "idx", "manifest"):           # the manifest last: it marks the corpus whole
        os.replace(paths(tmp)[kind], paths(prefix)[kind])
    return prefix


# --- the corpus the run reads --------------------------------------------------------------------
@dataclass
class Source:
    name: str
    weight: float
    data: IndexedTokens
    record: dict


@dataclass
class Corpus:
    """The sources a run trains on, their weights (normalised) and their common tokenizer."""

    sources: list[Source]
    text: str

    @property
    def tokenizer(self) -> dict:
        return self.sources[0].record["tokenizer"]

    @property
    def vocab(self) -> int:
        return int(self.tokenizer["vocab"])

    def samples(self, seq: int, holdout: float = 0.0) -> list[int]:
        """Sequences of each source, less its last `holdout` share (kept for held-out losses)."""
        return [(int(s.data.n_tokens * (1 - holdout)) - 1) // seq for s in self.sources]

    def held_out(self, seq: int, share: float, count: int) -> np.ndarray:
        """Up to `count` sequences (rows of seq + 1 ids) from the last `share` of the sources, which a
        Sampler with that holdout never draws; split between the sources by weight."""
        rows = []
        for s in self.sources:
            start = int(s.data.n_tokens * (1 - share))
            room = (s.data.n_tokens - start - 1) // seq
            n = min(room, max(1, round(count * s.weight)))
            if n > 0:
                rows.append(s.data.read_rows(start + seq * np.arange(n), seq + 1).astype(np.int64))
        if not rows:
            raise FlmplanError(f"The data is too small to hold out a sequence of {seq} from its last {share:.0%}.")
        return np.concatenate(rows)

    def check(self, vocab: int, seq: int) -> None:
        """Refuse a corpus a plan cannot train on: a tokenizer larger than the model's vocabulary, or
        a source with less than one sequence (before any process starts, not as an IndexError)."""
        if self.vocab > vocab:
            raise FlmplanError(f"The data's tokenizer has {self.vocab:,} entries, more than the plan's vocabulary of "
                               f"{vocab:,}; plan a vocabulary at least that large, or prepare the data with a smaller "
                               "tokenizer.")
        for s, n in zip(self.sources, self.samples(seq), strict=True):
            if n < 1:
                raise FlmplanError(f"--data {s.name} has {s.data.n_tokens} tokens, fewer than one sequence of "
                                   f"{seq} + 1.")

    def epochs(self, seq: int, sequences: int) -> list[float]:
        """How many times each source is read when the run draws `sequences` sequences."""
        return [s.weight * sequences / n for s, n in zip(self.sources, self.samples(seq), strict=True)]

    def record(self) -> dict:
        """What a plan and a run's log keep of the data."""
        return {"sources": [{**s.record, "name": s.name, "weight": s.weight} for s in self.sources],
                "tokenizer": self.tokenizer}


def open_corpus(specs: list[DataSpec], folder: Path | None = None) -> Corpus:
    """The sources of `specs`, text prepared as bytes (into `folder`, by default the cache); all must
    share one tokenizer."""
    sources = []
    for s in specs:
        prefix = s.prefix if s.prefix is not None else prepare_bytes(s.files, folder)
        data = IndexedTokens.open(prefix)
        record = describe(prefix, data)
        name = BUILTIN if s.text.startswith(BUILTIN) else str(s.prefix) if s.prefix is not None else "text"
        sources.append(Source(name, s.weight if s.weight is not None else float(record["tokens"]),
                              data, record))
    hashes = {s.record["tokenizer"]["sha256"] for s in sources}
    if len(hashes) > 1:
        raise FlmplanError("--data mixes corpora prepared with different tokenizers ("
                           + ", ".join(f"{s.name}: {s.record['tokenizer']['kind']} {s.record['tokenizer']['vocab']}"
                                       for s in sources) + "); prepare them all with one.")
    total = sum(s.weight for s in sources)
    for s in sources:
        s.weight /= total
    text = "; ".join(f"{s.weight:.3g}:{spec.text}" if len(specs) > 1 else spec.text
                     for s, spec in zip(sources, specs, strict=True))
    return Corpus(sources, text)


# --- order ---------------------------------------------------------------------------------------
_M1, _M2 = 0xBF58476D1CE4E5B9, 0x94D049BB133111EB
_MASK64 = (1 << 64) - 1


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: a 64-bit avalanche, the Feistel network's round function."""
    x = (x ^ (x >> np.uint64(30))) * np.uint64(_M1)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(_M2)
    return x ^ (x >> np.uint64(31))


def _mix_int(x: int) -> int:
    """_mix on one Python int (the same bits): a batch's few rows are cheaper without numpy's calls."""
    x = ((x ^ (x >> 30)) * _M1) & _MASK64
    x = ((x ^ (x >> 27)) * _M2) & _MASK64
    return x ^ (x >> 31)


@functools.lru_cache(maxsize=4096)
def _key(*parts: int) -> int:
    return int.from_bytes(hashlib.blake2b(repr(parts).encode(), digest_size=8).digest(), "little")


def permute(i: np.ndarray, n: int, key: int, rounds: int = 4) -> np.ndarray:
    """A keyed bijection of [0, n): a Feistel network on the fewest bits that hold n (unbalanced when
    they are odd, the halves swapping widths each round), walking the cycle until the value falls
    below n (Black & Rogaway 2002, cycle-walking); the domain is under 2n, so a walk is short."""
    bits = max(2, (n - 1).bit_length())
    widths = (bits // 2, bits - bits // 2)
    keys = [_key(key, r) for r in range(rounds)]
    i = np.asarray(i)
    if i.size <= 256:
        out = []
        for x in i.tolist():
            while True:
                a, b = widths
                left, right = x >> b, x & ((1 << b) - 1)
                for k in keys:
                    # (L: a bits, R: b bits) → (R: b bits, L ^ F(R): a bits); the widths swap.
                    left, right = right, left ^ (_mix_int(right ^ k) & ((1 << a) - 1))
                    a, b = b, a
                x = (left << b) | right
                if x < n:
                    break
            out.append(x)
        return np.array(out, dtype=np.int64).reshape(i.shape)
    x = i.astype(np.uint64)
    todo = np.ones(x.shape, dtype=bool)
    ukeys = [np.uint64(k) for k in keys]
    with np.errstate(over="ignore"):
        while todo.any():
            a, b = widths
            y = x[todo]
            left, right = y >> np.uint64(b), y & np.uint64((1 << b) - 1)
            for k in ukeys:
                left, right = right, left ^ (_mix(right ^ k) & np.uint64((1 << a) - 1))
                a, b = b, a
            x[todo] = (left << np.uint64(b)) | right
            todo = x >= np.uint64(n)
    return x.astype(np.int64)


@dataclass
class Batch:
    """One rank's share of a global batch, and the sampler's state once it is taken."""

    x: object
    y: object
    position: int
    counts: list[int]
    digest: int
    shape: tuple[int, int, int]      # (global batch, dp rank, dp size) it was drawn for


class Sampler:
    """Deterministic, resumable sequences from a Corpus. `position` counts sequences handed out so
    far (all data-parallel ranks together) and `counts` how many of them each source gave."""

    def __init__(self, corpus: Corpus, seq: int, seed: int = 1234, position: int = 0,
                 counts: list[int] | None = None, holdout: float = 0.0) -> None:
        self.corpus, self.seq, self.seed, self.position = corpus, seq, seed, position
        self.n = corpus.samples(seq, holdout)
        if min(self.n) < 1:
            raise FlmplanError(f"The data has fewer tokens than one sequence of {seq} + 1.")
        self.weights = np.array([s.weight for s in corpus.sources])
        if counts is None:
            if len(self.n) > 1 and position:
                raise FlmplanError("A blended corpus resumes from the samples drawn per source; this checkpoint has "
                                   "only a position.")
            counts = [position] if len(self.n) == 1 else [0] * len(self.n)
        self.counts = list(counts)
        self.digest = 0

    def state(self) -> dict:
        return {"data_position": self.position, "data_counts": list(self.counts)}

    def _assign(self, count: int) -> tuple[np.ndarray, np.ndarray, list[int]]:
        """The next `count` samples as (source, that source's sample number), and the counts after
        them; the sampler itself is not changed."""
        src = np.zeros(count, dtype=np.int64)
        idx = np.empty(count, dtype=np.int64)
        counts = list(self.counts)
        if len(self.n) == 1:
            idx[:] = counts[0] + np.arange(count)
            counts[0] += count
        else:
            w = self.weights.tolist()
            for j in range(count):
                # Megatron-LM's blend: the source whose count lags its weight's share most.
                i = max(self.position + j, 1)
                d = max(range(len(w)), key=lambda s: w[s] * i - counts[s])
                src[j], idx[j] = d, counts[d]
                counts[d] += 1
        return src, idx, counts

    def _rows(self, src: np.ndarray, idx: np.ndarray) -> np.ndarray:
        if len(self.n) == 1 and len(idx) and idx[0] // self.n[0] == idx[-1] // self.n[0]:   # one source, one epoch
            start = permute(idx % self.n[0], self.n[0], _key(self.seed, 0, int(idx[0] // self.n[0]))) * self.seq
            return self.corpus.sources[0].data.read_rows(start, self.seq + 1).astype(np.int64)
        out = np.empty((len(src), self.seq + 1), dtype=np.int64)
        for d in np.unique(src):
            at = np.nonzero(src == d)[0]
            epoch, k = np.divmod(idx[at], self.n[d])
            start = np.empty(len(at), dtype=np.int64)
            for e in np.unique(epoch):
                sel = epoch == e
                start[sel] = permute(k[sel], self.n[d], _key(self.seed, int(d), int(e))) * self.seq
            out[at] = self.corpus.sources[d].data.read_rows(start, self.seq + 1)
        return out

    def peek(self, global_batch: int, dp_rank: int, dp_size: int) -> Batch:
        """This data-parallel rank's share of the next global batch, without taking it: only its own
        rows are read. A pure function of the sampler's state, so it may run on another thread while
        a step computes (runtime/train.py reads the next batch ahead)."""
        import torch

        per_rank = global_batch // dp_size
        src, idx, counts = self._assign(global_batch)
        mine = slice(dp_rank * per_rank, (dp_rank + 1) * per_rank)
        x = torch.from_numpy(self._rows(src[mine], idx[mine]))
        return Batch(x[:, :-1].contiguous(), x[:, 1:].contiguous(), self.position + global_batch, counts,
                     zlib.crc32(np.stack([src, idx]).tobytes()), (global_batch, dp_rank, dp_size))

    def take(self, batch: Batch) -> tuple:
        """Move past a batch from `peek`: (inputs, targets)."""
        self.position, self.counts, self.digest = batch.position, list(batch.counts), batch.digest
        return batch.x, batch.y

    def batch(self, global_batch: int, dp_rank: int, dp_size: int):
        """This data-parallel rank's share of the next global batch: (inputs, targets). `digest` is
        then a checksum of the whole global batch's sample numbers."""
        return self.take(self.peek(global_batch, dp_rank, dp_size))

    def shares(self) -> dict[str, float]:
        """The realised share of each source so far."""
        total = max(1, sum(self.counts))
        return {s.name: c / total for s, c in zip(self.corpus.sources, self.counts, strict=True)}


class ReadAhead:
    """The next language batch is read on a thread while the step computes: what a step still waits
    for is what `metrics.jsonl` logs as `data_s`. The sampler's state is only moved by `next`, so a
    checkpoint between steps records the batches taken, not the one read ahead."""

    def __init__(self, sampler: Sampler) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self.sampler = sampler
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="flmplan-data")
        self.pending = None

    def next(self, global_batch: int, dp_rank: int, dp_size: int):
        shape = (global_batch, dp_rank, dp_size)
        start = self.sampler.position
        batch = self.pending.result() if self.pending is not None else None
        if batch is None or batch.shape != shape or batch.position != start + global_batch:
            batch = self.sampler.peek(*shape)        # the layout changed (a new stage): read it now
        x, y = self.sampler.take(batch)
        self.pending = self.pool.submit(self.sampler.peek, *shape)
        return x, y

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


def check_corpus(corpus: Corpus, plan) -> None:
    """Every stage of a plan can train on the corpus: the tokenizer fits each stage's vocabulary, and
    each source holds a sequence of each stage's length."""
    for st in plan.stages:
        corpus.check(st.model.vocab, st.model.seq)


def load_corpus(items: list[str] | None, folder: Path | None = None) -> Corpus:
    """--data items → the Corpus (text tokenized as bytes, into the cache by default)."""
    return open_corpus(parse_specs(items), folder)


def record_run_data(corpus: Corpus, out: Path) -> None:
    """Keep the corpus's record and its tokenizer in the run folder."""
    import json
    import shutil

    (out / RUN_DATA_FILE).write_text(json.dumps(corpus.record(), indent=1) + "\n")
    if corpus.tokenizer["kind"] != "bytes":
        shutil.copyfile(paths(corpus.sources[0].data.prefix)["tokenizer"], out / RUN_TOKENIZER_FILE)


def run_codec(run_dir: Path) -> Codec:
    """The tokenizer a run trained with: bytes for runs that recorded none (and byte-level corpora)."""
    import json

    record = run_dir / RUN_DATA_FILE
    if not record.is_file():
        return ByteCodec()
    tok = json.loads(record.read_text())["tokenizer"]
    if tok["kind"] == "bytes":
        return ByteCodec()
    if not (run_dir / RUN_TOKENIZER_FILE).is_file():
        raise FlmplanError(f"{run_dir} trained with a {tok['vocab']:,}-entry tokenizer but its copy "
                           f"{RUN_TOKENIZER_FILE} is missing; put the corpus's PREFIX.tokenizer.json there.")
    return HFCodec(run_dir / RUN_TOKENIZER_FILE, tok.get("eod_token"))
