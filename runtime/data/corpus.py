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
those rows. The sampler's state (position, and the samples drawn per source) is all a checkpoint needs."""

from __future__ import annotations

import glob
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from planner.errors import FlmplanError
from runtime.data.indexed import (
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
        many = _many_prefixes(path, weight)
        if many is not None:
            specs += many
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


def _many_prefixes(path: str, weight: float | None) -> list[DataSpec] | None:
    """The prepared corpora one --data item names at once, or None when it names none: a folder holding
    prepared corpora (each PREFIX.bin with its PREFIX.idx, found at any depth; each weighs its tokens), a
    glob of them, or a mixture file (JSON: {"PREFIX": weight, ...}, paths relative to the file)."""
    p = Path(path)
    if p.suffix == ".json" and p.is_file():
        try:
            mixture = json.loads(p.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise FlmplanError(f"--data {p} is not a mixture file (JSON of prefix: weight).") from None
        if not isinstance(mixture, dict) or not mixture or not all(
                isinstance(w, int | float) and not isinstance(w, bool) for w in mixture.values()):
            raise FlmplanError(f"--data {p} is not a mixture file: give a JSON object of prefix: weight.")
        out = []
        for name, w in mixture.items():
            prefix = prefix_of(p.parent / name)
            if prefix is None:
                raise FlmplanError(f"--data {p} names {name}, which is not a prepared corpus "
                                   "(PREFIX.bin + PREFIX.idx).")
            if not w > 0:
                raise FlmplanError(f"--data {p}: the weight of {name} must be above 0.")
            out.append(DataSpec(float(w), prefix=prefix, text=str(prefix)))
        if weight is not None:          # the file's share of a larger mixture, split by its own weights
            total = sum(d.weight for d in out)
            for d in out:
                d.weight = weight * d.weight / total
        return out
    if p.is_dir():
        found = sorted({q.with_suffix("") for q in p.rglob("*.idx") if q.with_suffix(".bin").is_file()})
    elif any(c in path for c in "*?["):
        found = sorted({q for q in (prefix_of(m) for m in glob.glob(path) if m.endswith((".bin", ".idx")))
                        if q is not None})
        if not found:
            raise FlmplanError(f"--data {path} matches no prepared corpus (PREFIX.bin + PREFIX.idx).")
    else:
        return None
    if not found:
        return None
    if weight is not None:
        raise FlmplanError(f"--data {path}: a folder or glob of corpora takes no weight; weigh them in a mixture "
                           "file (JSON of prefix: weight).")
    return [DataSpec(None, prefix=q, text=str(q)) for q in found]


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
    """Where text given as files is kept as byte-level corpora."""
    from planner.jsonio import cache_root

    return cache_root() / "data"


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
